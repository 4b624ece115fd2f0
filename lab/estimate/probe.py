"""This machine as a check of the time model: probe its matmul throughput, memory bandwidth and per-op
overhead in a few seconds, predict a step with those figures (no efficiencies: the probe measured what
PyTorch reaches here), and time the same step for real.

The probe and the real step should run back to back: on a shared machine both slow down together.
"""

from __future__ import annotations

import json
import pickle
import platform
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from contextvars import ContextVar
from dataclasses import dataclass, replace

import torch
from torch.utils.checkpoint import checkpoint

from lab.errors import Cancelled, LabError
from lab.estimate.check import load_real
from lab.estimate.hardware import Hardware
from lab.estimate.recipe import _loss as recipe_loss
from lab.estimate.recipe import autocast, make_optimizer, prepare_for_training
from lab.estimate.simulate import simulate_inference, simulate_training
from lab.estimate.speed import generation_time, step_time
from lab.files import write_json_atomic
from lab.paths import REPO_ROOT, cache_dir

# The stop signal of the probe running in this thread (probe_cpu's `cancel`). A context variable, not an argument:
# a dozen measuring helpers share one loop (`_mean_seconds`), and a new thread starts without it.
_CANCEL: ContextVar[threading.Event | None] = ContextVar("lab_probe_cancel", default=None)


def _check_cancel() -> None:
    cancel = _CANCEL.get()
    if cancel is not None and cancel.is_set():
        raise Cancelled("The CPU probe was stopped before it finished.")


def _clock() -> float:
    """This process's CPU seconds when torch runs one thread, else wall seconds. On a shared machine a
    one-thread step's wall time is mostly the neighbours' (the scheduler's share of the CPU changes from one
    second to the next); its CPU time is what the step costs a core of its own, and probe and step are both
    measured by it. With several threads CPU time would add theirs up, so the wall clock is used."""
    return time.process_time() if torch.get_num_threads() == 1 else time.perf_counter()


def _mean_seconds(fn, budget: float = 0.5, least: int = 1) -> float:
    """Mean seconds of `fn` over repeated runs filling `budget` seconds (at least `least` runs), after one
    warm-up. A mean, not the fastest run: on a shared machine the probe and the step it predicts must both
    see the average share of the CPU they get, not the probe a lucky quiet moment."""
    _check_cancel()
    fn()
    n, t0 = 0, _clock()
    while n < least or _clock() - t0 < budget:
        _check_cancel()  # between runs: a stopped probe ends within one run of `fn`
        fn()
        n += 1
    return (_clock() - t0) / n


def _matmul_flops(dtype: torch.dtype, rows: int, n: int = 1024, budget: float = 0.6, weights_mib: int = 64) -> float:
    """FLOP/s of (rows × n) @ (n × n), cycling through `weights_mib` of weights as a model's step does (one
    cached matrix would flatter the rate). A CPU's matmul rate depends on the rows (the tokens of a step: 32
    rows run at half the rate of 256 here; one row, decoding, streams the weights at a fraction of the
    bandwidth an elementwise op reaches), so the probe uses the step's."""
    count = max(1, weights_mib * 2**20 // (n * n * torch.finfo(dtype).bits // 8))
    g = _own_generator()
    a, bs = torch.randn(rows, n, dtype=dtype, generator=g), [torch.randn(n, n, dtype=dtype, generator=g)
                                                             for _ in range(count)]

    def run():
        for b in bs:
            torch.mm(a, b)

    return 2 * rows * n * n * count / _mean_seconds(run, budget)


def _bandwidth(mib: int = 128) -> float:
    """Bytes/s of an out-of-place add (reads two, writes one): what elementwise ops of a step do."""
    n = mib * 2**20 // 4
    x, y = torch.empty(n), torch.empty(n)
    out = torch.empty(n)
    return 3 * n * 4 / _mean_seconds(lambda: torch.add(x, y, out=out))


def _op_seconds(ops: int = 400) -> float:
    """Per-op overhead: tiny autograd-recorded ops forward and backward (dispatch, autograd bookkeeping)."""
    x = torch.ones(8, requires_grad=True)

    def run():
        y = x
        for _ in range(ops // 2):
            y = y * 1.0
        y.sum().backward()

    return _mean_seconds(run, 0.3) / ops


def _view_seconds(ops: int = 400) -> float:
    """Seconds of one view: a step dispatches thousands (`view`, `t`, `transpose`, `detach`), each free on a
    GPU's timeline but paid by a CPU. The mean of one that autograd records (the forward's) and one it does
    not (the backward runs with grad off)."""
    x = torch.ones(8, requires_grad=True)
    with torch.enable_grad():
        recorded = _mean_seconds(lambda: [x.view(2, 4) for _ in range(ops)], 0.05)
    with torch.no_grad():
        bare = _mean_seconds(lambda: [x.view(2, 4) for _ in range(ops)], 0.05)
    return (recorded + bare) / 2 / ops


def _checkpoint_seconds(ops: int = 200) -> float:
    """What torch.utils.checkpoint (non-reentrant, transformers' default) adds per detach its saved-tensor
    hooks make, beyond the recomputed ops: a chain of `ops` sines, each saving its input, run forward and
    backward under checkpoint, less the same chain without it and one more forward (the recomputation,
    priced as ops of its own). Its hooks are Python: a holder and a weak reference per saved tensor, its
    metadata, the recomputation's pack hook and the match check; each saved tensor that needs a gradient
    is detached twice (packed, and in the recomputation), which is how the simulated step counts them."""
    x = torch.ones(8, requires_grad=True)

    def chain(y):
        for _ in range(ops):
            y = torch.sin(y)
        return y

    with torch.enable_grad():
        plain = _mean_seconds(lambda: chain(x).sum().backward(), 0.15)
        forward = _mean_seconds(lambda: chain(x), 0.1)
        ckpt = _mean_seconds(lambda: checkpoint(chain, x, use_reentrant=False).sum().backward(), 0.15)
    return max(0.0, ckpt - plain - forward) / (2 * ops)


def _own_generator() -> torch.Generator:
    """The probe's random numbers come from a generator of its own, never from the process's: the probe runs in
    a thread beside other work (a run's prediction while it seeds and inits LoRA; the Training page's predicted
    tokens/s while another session samples with a seed in the Playground, whose answers it made unrepeatable)."""
    return torch.Generator().manual_seed(0)


def _operand(rows: int, cols: int, layout: str, g: torch.Generator) -> torch.Tensor:
    return torch.randn(cols, rows, generator=g).t() if layout == "t" else torch.randn(rows, cols, generator=g)


def _shape_flops(shape: tuple, budget: float, weights_mib: int = 64) -> float:
    """FLOP/s of one fp32 matmul of the step at its own shape and operand layouts (Work.shape), the second
    operand cycled through up to `weights_mib` of copies as the step's weights come from memory, not cache.
    A CPU's GEMM rate at 32 rows differs by shape: 576 x 192 runs far below 1536 x 576, a transposed
    operand takes another kernel."""
    m, k, n, la, lb = shape
    count = max(1, min(256, weights_mib * 2**20 // (k * n * 4)))
    g = _own_generator()
    a, bs = _operand(m, k, la, g), [_operand(k, n, lb, g) for _ in range(count)]

    def run():
        for b in bs:
            torch.mm(a, b)

    return 2 * m * k * n * count / _mean_seconds(run, budget)


def _dequant_rate(precision: str, budget: float = 0.3) -> float:
    """Output elements per second of bitsandbytes' 4-bit dequantization on this CPU. Without AVX512-BF16
    (lab.models.precision.cpu_repacks_4bit) bitsandbytes runs a kernel far slower than a copy of the same
    bytes, so it is timed, not priced as memory traffic."""
    import bitsandbytes.functional as F  # heavy: only for a step that dequantizes

    # 64 copies, 28 MiB packed: more than a CPU's L3, as a step's 4-bit weights come from memory
    quant, count = ("fp4" if precision.startswith("fp4") else "nf4"), 64
    w = torch.randn(1536, 576, generator=_own_generator())
    packed = F.quantize_4bit(w, blocksize=64, quant_type=quant, compress_statistics=precision.endswith("-dq"))
    copies = [(packed[0].clone(), packed[1]) for _ in range(count)]

    def run():
        for q, state in copies:
            F.dequantize_4bit(q, state)

    return count * w.numel() / _mean_seconds(run, budget)


# A tiny sibling's sizes: its matmuls cost next to nothing, its modules run the same Python as the model's
TINY_SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
              "head_dim": 16, "vocab_size": 256, "moe_intermediate_size": 32}


def _tiny_sibling(config, layers: int = 2):
    """`config` at TINY_SIZES and `layers` layers (only the fields it has), or None where it cannot be shrunk so."""
    # transformers: 0.6 s to import; imported where used, not with this module
    from transformers import AutoConfig

    d = config.to_dict()
    d.update({k: v for k, v in TINY_SIZES.items() if k in d})
    d["num_hidden_layers"] = layers
    for k in ("layer_types", "quantization_config"):
        d.pop(k, None)  # per-layer lists follow the depth again; a sibling is saved unquantized
    try:
        return AutoConfig.for_model(**{**d, "model_type": config.model_type})
    except Exception:  # noqa: BLE001 - a family whose sizes hang together otherwise: no sibling
        return None


def _module_seconds(config, recipe, hw: Hardware, generation: bool = False, timeout: float = 120.0,
                    fresh: bool = False) -> float:
    """The Python a module's forward runs between its ops, per module call: what no op prices. A tiny sibling of
    the model (`_tiny_sibling`) is simulated and run for real under the same recipe; its real step (or
    generation) takes longer than its priced ops by that Python, which is divided by the module calls of its
    simulated step. Its matmuls are a few µs, so what is left is the per-call Python of the same modules
    (peft's LoRA layers, the attention's reshapes and rotary, the decoder layer) that the model runs.

    In a process of its own (`python -m lab.estimate.probe`, a few seconds with its imports): building,
    initialising and training the sibling draws on torch's global random generator, which a training run or
    a session that this process serves is using. 0 where no sibling can be built or run.

    That process costs about 8 CPU seconds (its imports are most of it), which a CPU training run would pay at its
    start for a figure that depends on the code and the machine, not on the run: it is kept per machine, library
    versions, model type and recipe in the lab's cache folder (`fresh`: measure again and keep nothing, as the
    timing tests do)."""
    key = _sibling_key(config, recipe, generation)
    kept = None if fresh else _sibling_cache().get(key)
    if isinstance(kept, float):
        return kept
    job = pickle.dumps((config.to_dict(), recipe, hw, generation))
    try:
        out = _run_probe_process(job, timeout)
        seconds = max(0.0, float(out.decode().strip().splitlines()[-1]))
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return 0.0
    if seconds > MAX_MODULE_SECONDS:  # not a module's Python: a disturbed measurement, neither used nor kept
        return 0.0
    if not fresh:
        _remember(key, seconds)
    return seconds


def _run_probe_process(job: bytes, timeout: float, poll: float = 0.25) -> bytes:
    """The sibling's process (`python -m lab.estimate.probe`) on `job`: its stdout. Killed, and Cancelled
    raised, as soon as this thread's probe is stopped (a training run that ended waits for nothing)."""
    proc = subprocess.Popen([sys.executable, "-m", "lab.estimate.probe"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT)
    deadline, pending = time.monotonic() + timeout, job
    try:
        while True:
            try:  # communicate() may be called again after a timeout: the input is sent once, nothing is lost
                out, _ = proc.communicate(pending, timeout=poll)
                break
            except subprocess.TimeoutExpired:
                pending = None
                _check_cancel()
                if time.monotonic() > deadline:
                    raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, proc.args)
    return out


MAX_MODULE_SECONDS = 5e-4  # a module call's Python is tens of µs (25-75 µs measured here); 10x that is not one


def _sibling_key(config, recipe, generation: bool) -> str:
    """What the Python per module call depends on: this CPU, the libraries, the model's code and the recipe's code
    paths, measured on one thread (not its batch or sequence: the sibling runs the recipe's own)."""
    # peft and transformers: 3.3 s to import; imported where used, not with this module
    import peft
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")),
               platform.processor() or platform.machine())
    sizes = {"prompt_tokens": 1, "new_tokens": 1} if generation else {"max_length": 1}
    what = repr(replace(recipe, batch_size=1, **sizes))
    return (f"{cpu} | python {platform.python_version()} torch {torch.__version__} transformers "
            f"{transformers.__version__} peft {peft.__version__} | one thread | "
            f"{config.model_type} | {what}")


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read(65536).splitlines()
    except OSError:  # not Linux
        return []


def _cache_file():
    return cache_dir() / "probe" / "module-python.json"


def _sibling_cache() -> dict:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember(key: str, seconds: float, most: int = 64) -> None:
    """Keep `seconds` under `key` (the `most` newest entries: the file stays small on a long-lived server)."""
    cache = _sibling_cache()
    cache.pop(key, None)
    cache[key] = seconds
    try:
        _cache_file().parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(_cache_file(), dict(list(cache.items())[-most:]))
    except (OSError, LabError):
        pass  # a read-only cache folder: measured again next time


def _sibling_seconds(config, recipe, hw: Hardware, generation: bool) -> float:
    """`_module_seconds`, in this process (the probe's own process)."""
    # transformers: 0.7 s to import; imported where used, not with this module
    from transformers import AutoModelForCausalLM

    tiny = _tiny_sibling(config)
    if tiny is None:
        return 0.0
    with tempfile.TemporaryDirectory(prefix="lab-probe-") as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            AutoModelForCausalLM.from_config(tiny, dtype=torch.float32).save_pretrained(folder)
            if generation:
                sim = simulate_inference(tiny, recipe)
                priced = generation_time(sim, hw).seconds
                measured = time_generation(folder, recipe, repeats=3).seconds_per_step
            else:
                sim = simulate_training(tiny, recipe)
                priced = step_time(sim, hw).step_seconds
                measured = time_training(folder, recipe, steps=4).seconds_per_step
        except Exception:  # noqa: BLE001 - the sibling does not run: price no module Python rather than fail
            return 0.0
    per_run = {"decode": recipe.new_tokens} if generation else {}  # one decode step simulated, new_tokens run
    calls = sum(w.count * per_run.get(w.phase, 1) for w in sim.work if w.kind == "module")
    return max(0.0, measured - priced) / calls if calls else 0.0


def probe_cpu(rows: int = 256, sim=None, budget: float = 2.0, config=None, recipe=None,
              fresh: bool = False, cancel: threading.Event | None = None) -> Hardware:
    """This CPU's figures, measured now (a few seconds), for matmuls of `rows` rows (a step's tokens). With
    the simulation `sim` to predict, each of its fp32 matmul shapes is timed itself (about `budget` CPU
    seconds in all), and so is its 4-bit dequantization if it has any. With the model's `config` and the
    `recipe` too, the Python per module call, on a tiny sibling (`_module_seconds`: kept per machine once
    measured; `fresh` measures it again). Setting `cancel` stops it within one measurement: `Cancelled`."""
    token = _CANCEL.set(cancel)
    try:
        return _probe_cpu(rows, sim, budget, config, recipe, fresh)
    finally:
        _CANCEL.reset(token)


def _probe_cpu(rows: int, sim, budget: float, config, recipe, fresh: bool) -> Hardware:
    with torch.no_grad():
        fp32 = _matmul_flops(torch.float32, rows)
        half = _matmul_flops(torch.bfloat16, rows, n=512, budget=0.3, weights_mib=8)
        bw = _bandwidth()
        shapes = sorted({w.shape for w in (sim.work if sim else ()) if w.kind == "matmul" and w.shape})
        rates = {sh: _shape_flops(sh, max(0.02, budget / len(shapes))) for sh in shapes}
        dequant = any(w.kind == "dequant" for w in sim.work) if sim else False
        deq = _dequant_rate(str(sim.settings.get("precision") or "nf4")) if dequant else 0.0
    view = _view_seconds()
    ckpt = _checkpoint_seconds() if sim and any(w.kind == "checkpoint" for w in sim.work) else 0.0
    hw = Hardware(f"this CPU ({torch.get_num_threads()} threads)", half, fp32, bw, 0.0,
                  "measured by lab.estimate.probe", overlapped=False, measured=True, op_seconds=_op_seconds(),
                  matmul_rates=rates, dequant_rate=deq, view_seconds=view, checkpoint_seconds=ckpt)
    if sim is not None and config is not None and recipe is not None:
        hw = replace(hw, module_seconds=_module_seconds(config, recipe, hw, generation=sim.kind == "inference",
                                                        fresh=fresh))
    return hw


@dataclass(frozen=True)
class Timed:
    tokens_per_second: float
    seconds_per_step: float
    steps: int


def time_training(model_dir: str, recipe, steps: int = 3) -> Timed:
    """Tokens/s of real training steps of `model_dir` on this CPU, as the simulation runs them (the
    recipe's preparation, loss, clipping and optimizer): the mean of `steps` steps after one warm-up."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = prepare_for_training(load_real(model_dir, recipe.precision, recipe.dtype, recipe.attn), recipe)
        optimizer = make_optimizer(model, recipe)
        params = [p for p in model.parameters() if p.requires_grad]
        shape = (recipe.batch_size, recipe.max_length)
        ids = torch.randint(0, model.config.vocab_size, shape, generator=_own_generator())

        def step():
            with autocast(recipe):
                loss = recipe_loss(model, ids, recipe)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        mean = _mean_seconds(step, 0.0, steps)
    return Timed(recipe.batch_size * recipe.max_length / mean, mean, steps)


def time_generation(model_dir: str, recipe, repeats: int = 2) -> Timed:  # mean of `repeats` after a warm-up
    """Generated tokens/s of `model.generate` (greedy, `new_tokens` after a `prompt_tokens` prompt)."""
    model = load_real(model_dir, recipe.precision, recipe.dtype, recipe.attn).eval()
    shape = (recipe.batch_size, recipe.prompt_tokens)
    ids = torch.randint(0, model.config.vocab_size, shape, generator=_own_generator())
    n = recipe.new_tokens

    def run():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                       do_sample=False, pad_token_id=0)

    with torch.no_grad():
        mean = _mean_seconds(run, 0.0, repeats)
    return Timed(recipe.batch_size * n / mean, mean, repeats)


if __name__ == "__main__":  # _module_seconds' own process: a pickled job on stdin, seconds per module call out
    from transformers import AutoConfig

    _config, _recipe, _hw, _generation = pickle.loads(sys.stdin.buffer.read())
    # one thread, timed in CPU seconds (`_clock`): the per-call Python is one thread's work, and a several-thread
    # sibling timed by the wall clock on a busy machine read 3-6 ms a call (OpenMP threads waiting on each other)
    torch.set_num_threads(1)
    _model_config = AutoConfig.for_model(**_config)
    print(_sibling_seconds(_model_config, _recipe, _hw, _generation))
