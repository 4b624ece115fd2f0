"""The model loading lab: load a model at a precision, measure it, look inside, score it, free it.

One code path for the page (`run_loading_lab`, several precisions in turn, in a worker thread),
the CLI (`python -m lab load`) and the benchmark. Each load is measured right after
`from_pretrained` (before any forward pass, see lab/models/measure.py), then inspected and scored, then
released — so the next precision starts from a clean slate and no restart is ever needed.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field

import psutil
import torch

from lab.environment import device_type
from lab.errors import Cancelled, LabError
from lab.estimate.weights import estimate_weights
from lab.inspect.quality import QualityConfig, greedy_answers, perplexity
from lab.models.architecture import Architecture
from lab.models.loading import free_memory, load_model
from lab.models.measure import MemorySnapshot, measure_model, reset_peak
from lab.models.precision import bnb_config_code, get_precision, resolve_dtype
from lab.models.reader import read_architecture
from lab.models.sources import ModelSource, resolve_source
from lab.units import fmt_bytes
from lab.vocab import COMPUTE, dtype_by_torch_name

# Help texts shared by the CLI flags and the page's tooltips.
HELP: dict[str, str] = {
    "model": "'embedded' (SmolLM2-135M-Instruct, offline), a local model folder (config.json + safetensors), "
    "or a Hub id such as Qwen/Qwen2.5-0.5B-Instruct (needs network).",
    "dtype": "dtype of what stays unquantized (embeddings, norms, lm_head) in int8/4-bit loads. "
    "compute (default): this device's compute dtype, float32 on CPU, bf16 (fp16 on a T4) on GPU; auto: the "
    "checkpoint's own dtype. fp32/bf16/fp16 loads put every weight in their own dtype.",
    "device": "cuda when a GPU is usable, else cpu. bitsandbytes 0.50 runs int8 and 4-bit on both.",
}

# A load needs the model's bytes plus room for temporaries (the float copy a weight is quantized
# from, allocator slack). Refuse up front rather than let the OS kill the whole app.
FIT_HEADROOM = 1.2

log = logging.getLogger(__name__)

# One loading-lab run at a time per process: two concurrent loads would blur each other's RSS figures.
_RUN_LOCK = threading.Lock()

_QUANTIZED_CLASSES = ("Linear8bitLt", "Linear4bit", "LinearNF4", "LinearFP4")


@dataclass
class LoadReport:
    model: str  # display name
    spec: str
    precision: str
    device: str
    dtype: str  # dtype of the unquantized parameters (embeddings, norms, lm_head)
    linear_class: str  # the class the decoder's Linear layers ended up as
    load_seconds: float
    measured_bytes: int  # true bytes: parameters + buffers + quantization state, each storage once
    hf_footprint_bytes: int  # model.get_memory_footprint()
    predicted_bytes: int | None  # the calculator's estimate (lab.estimate.weights.estimate_weights)
    error_pct: float | None  # (predicted - measured) / measured * 100
    breakdown: dict[str, int]  # measured bytes by kind (see lab.models.measure.KINDS)
    by_dtype: dict[str, int]
    shared_bytes: int  # reached twice (tied weights, aliases), counted once
    n_tensors: int
    memory: dict[str, int | None]  # process / device growth during the load (see MEMORY_LABELS)
    measured_after_forward_bytes: int | None = None  # CPU 4-bit repacks on the first forward
    predicted_after_forward_bytes: int | None = None
    freed: dict[str, int | None] = field(default_factory=dict)  # handed back on release
    rss_at_release_bytes: int | None = None  # RSS growth from before the load to just before release
    linear_classes: dict[str, int] = field(default_factory=dict)
    unquantized: list[dict] = field(default_factory=list)
    perplexity: float | None = None
    perplexity_tokens: int | None = None  # tokens predicted
    perplexity_tokens_read: int | None = None  # tokens read: predicted + one per window (see quality.describe_tokens)
    perplexity_windows: int | None = None
    perplexity_seconds: float | None = None
    answers: list[dict] = field(default_factory=list)
    config_code: str = ""
    tree: str = ""

    def to_json(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- prediction and fit
def predict(source: ModelSource, precision: str, dtype: str = COMPUTE, device: str | None = None):
    """The calculator's WeightEstimate (lab.estimate.weights) for this load: the same dtype rule as load_kwargs."""

    arch = read_architecture(source)
    unquantized = resolve_dtype(dtype, config_dtype=arch.config_dtype, device=device)
    return estimate_weights(arch, get_precision(precision).name, unquantized.name)


def available_bytes(device: str) -> int:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0]
    return psutil.virtual_memory().available


def load_peak_bytes(source: ModelSource, precision: str, estimate, dtype: str | None, device: str) -> int | None:
    """Rough peak memory of a load. On CPU, int8/4-bit weights are quantized from a float copy
    (measured here: ~0.8 GB RSS growth for SmolLM2-135M at nf4, whose fp32 copy is 0.54 GB), so
    count that copy too; on CUDA transformers quantizes tensor by tensor."""
    if estimate is None:
        return None
    if not get_precision(precision).quantized or device == "cuda":
        return estimate.weights_bytes
    float_copy = dtype_by_torch_name(estimate.dtype).name  # the precision of the unquantized parts
    return estimate.weights_bytes + predict(source, float_copy, dtype, device).weights_bytes


def check_fits(needed_bytes: int | None, device: str, what: str, available: int | None = None) -> None:
    """Raise a LabError when `needed_bytes` (plus headroom) cannot fit on `device`."""
    if needed_bytes is None:
        return

    available = available_bytes(device) if available is None else available
    if needed_bytes * FIT_HEADROOM > available:
        where = "GPU memory" if device == "cuda" else "RAM"
        raise LabError(
            f"{what} needs about {fmt_bytes(needed_bytes)} (+{FIT_HEADROOM - 1:.0%} headroom) but only "
            f"{fmt_bytes(available)} of {where} is free.",
            "Try a 4-bit precision (nf4), a smaller model, or free other loaded models (sidebar) first.",
        )


def check_supported(precision: str, device: str) -> None:
    """bitsandbytes runs int8/4-bit on CUDA and (0.50+) on CPU; nothing else here."""
    p = get_precision(precision)
    if p.quantized and device not in ("cpu", "cuda"):
        raise LabError(
            f"bitsandbytes cannot run {p.label} on device {device!r}.",
            "Use fp32/fp16/bf16 there, or a CUDA GPU or the CPU.",
        )


# --------------------------------------------------------------------------- looking inside
# Which modules are the model's Linear layers is the architecture reader's answer (lab.models.architecture,
# read from the config on the meta device); here we only look at what each of them became after loading.
def linear_classes(model: torch.nn.Module, arch: Architecture | None) -> dict[str, int]:
    """How many of the model's Linear layers ended up as each class (Linear, Linear8bitLt, Linear4bit)."""
    if arch is None:
        return {}
    return dict(Counter(type(model.get_submodule(path)).__name__ for g in arch.linears for path in g.paths))


def main_linear_class(model: torch.nn.Module, arch: Architecture | None) -> str:
    """The class of the decoder's Linear layers (lm_head excluded: it stays a plain Linear)."""
    if arch is None:
        return "—"
    decoder = [path for g in arch.linears if not g.tied and g.paths[0] != arch.output_path for path in g.paths]
    names = Counter(type(model.get_submodule(path)).__name__ for path in decoder)
    return names.most_common(1)[0][0] if names else "—"


def unquantized_modules(model: torch.nn.Module) -> list[dict]:
    """Modules that hold weights but were not quantized, grouped by class and reason."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return []
    skip = set(getattr(quantizer, "modules_to_not_convert", None) or [])
    tied = set()
    for a, b in (getattr(model, "all_tied_weights_keys", None) or {}).items():
        tied |= {a.removesuffix(".weight"), b.removesuffix(".weight")}
    head = model.get_output_embeddings()
    groups: dict[tuple[str, str], dict] = {}
    for name, module in model.named_modules():
        params = list(module.parameters(recurse=False))
        if not params or type(module).__name__ in _QUANTIZED_CLASSES:
            continue
        cls = type(module).__name__
        if module is head:
            why = "The output layer (lm_head): transformers keeps it unquantized for numerical stability"
            why += " — and it is tied to the input embeddings, so it is the same tensor." if name in tied else "."
        elif name in skip and isinstance(module, torch.nn.Linear):
            why = "Listed in modules_to_not_convert (llm_int8_skip_modules / _keep_in_fp32_modules)."
        elif isinstance(module, torch.nn.Embedding):
            why = "An embedding table, not a Linear: bitsandbytes only replaces nn.Linear layers"
            why += " (it is also tied to lm_head)." if name in tied else "."
        else:
            why = "Not a Linear layer (e.g. a norm's scale vector): bitsandbytes only replaces nn.Linear layers."
        g = groups.setdefault(
            (cls, why),
            {
                "class": cls,
                "why": why,
                "count": 0,
                "params": 0,
                "dtype": str(params[0].dtype).removeprefix("torch."),
                "examples": [],
            },
        )
        g["count"] += 1
        g["params"] += sum(p.numel() for p in params)
        if len(g["examples"]) < 3:
            g["examples"].append(name)
    return sorted(groups.values(), key=lambda g: -g["params"])


def unquantized_dtype(model: torch.nn.Module) -> str:
    """The floating dtype holding the most parameter bytes outside bitsandbytes' layers."""
    sizes: Counter = Counter()
    for module in model.modules():
        if type(module).__name__ in _QUANTIZED_CLASSES:
            continue
        for p in module.parameters(recurse=False):
            if p.dtype.is_floating_point:
                sizes[p.dtype] += p.numel() * p.element_size()
    return str(sizes.most_common(1)[0][0]).removeprefix("torch.") if sizes else "—"


def compact_tree(model: torch.nn.Module) -> str:
    """print(model), as is: transformers already folds identical decoder layers into '(0-29): 30 x ...'."""
    return re.sub(r"\n\s*\n", "\n", repr(model))


# --------------------------------------------------------------------------- one load
Report = Callable[..., None]


def _noop(*_a, **_k) -> None:
    pass


def measure_load(
    spec: str | ModelSource,
    precision: str,
    dtype: str = COMPUTE,
    device: str | None = None,
    quality: QualityConfig | None = None,
    report: Report | None = None,
    cancel: threading.Event | None = None,
) -> LoadReport:
    """Load `spec` at `precision`, measure, inspect, score, then release it. Returns the report."""
    report = report or _noop
    source = (resolve_source(spec, weights=True) if isinstance(spec, str) else spec).require_weights()
    device = device or device_type()
    p = get_precision(precision)
    check_supported(p.name, device)
    arch, estimate = _architecture_and_prediction(source, p.name, dtype, device)
    check_fits(
        load_peak_bytes(source, p.name, estimate, dtype, device), device, f"Loading {source.display_name} at {p.label}"
    )
    _import_what_a_load_touches(p.quantized)
    free_memory()
    reset_peak(device)
    before = MemorySnapshot.take(device)
    report(f"loading {source.display_name} at {p.label} on {device}…")
    loaded = None
    try:
        loaded = _load(source, p.name, dtype, device)
        memory = MemorySnapshot.take(device).minus(before)
        report(f"measuring {p.label}…")
        result = _inspect(loaded, arch, estimate, memory)
        _score(result, loaded, estimate, quality or QualityConfig(), report, cancel)
    finally:
        held = MemorySnapshot.take(device)
        loaded = None  # the last reference to the model: drop it before releasing (a traceback keeps locals alive)
        free_memory()
    _record_release(result, before, held)
    return result


def _architecture_and_prediction(source: ModelSource, precision: str, dtype: str, device: str):
    """(architecture, the calculator's WeightEstimate), or (None, None) for a model the reader cannot build:
    it still loads, without a prediction or Linear classes."""
    try:
        return read_architecture(source), predict(source, precision, dtype, device)
    except LabError:
        raise  # e.g. a Hub id while offline: nothing to load either
    except Exception:
        log.warning("no architecture or prediction for %s:\n%s", source.display_name, traceback.format_exc())
        return None, None


def _import_what_a_load_touches(quantized: bool) -> None:
    """Import the libraries a load needs before the 'before' snapshot, so RSS growth is the model's."""
    import transformers  # noqa: F401

    if quantized:
        import bitsandbytes  # noqa: F401


def _inspect(loaded, arch: Architecture | None, estimate, memory: dict) -> LoadReport:
    """The report of a model right after loading: true bytes vs prediction, layer classes, what stayed unquantized."""
    model, source = loaded.model, loaded.source
    fp = measure_model(model)
    predicted = None if estimate is None else estimate.weights_bytes
    return LoadReport(
        model=source.display_name,
        spec=source.spec,
        precision=loaded.precision,
        device=loaded.device,
        dtype=unquantized_dtype(model),
        linear_class=main_linear_class(model, arch),
        load_seconds=loaded.load_seconds,
        measured_bytes=fp.total_bytes,
        hf_footprint_bytes=fp.hf_footprint_bytes,
        predicted_bytes=predicted,
        error_pct=None if predicted is None else (predicted - fp.total_bytes) / fp.total_bytes * 100,
        breakdown=fp.by_kind,
        by_dtype=fp.by_dtype,
        shared_bytes=fp.shared_bytes,
        n_tensors=fp.n_tensors,
        memory=memory,
        linear_classes=linear_classes(model, arch),
        unquantized=unquantized_modules(model),
        config_code=bnb_config_code(loaded.precision, loaded.device),
        tree=compact_tree(model),
    )


def _score(result: LoadReport, loaded, estimate, quality: QualityConfig, report: Report,
           cancel: threading.Event | None) -> None:
    """Perplexity and greedy answers into `result`; after a forward pass, the bytes again (CPU 4-bit repacks)."""
    model, label = loaded.model, get_precision(loaded.precision).label
    forward = False
    if quality.perplexity_tokens and not _cancelled(cancel):
        report(f"perplexity at {label}…")
        ppl = perplexity(model, loaded.tokenizer, max_tokens=quality.perplexity_tokens, window=quality.window,
                         cancel=cancel)
        result.perplexity, result.perplexity_tokens, result.perplexity_seconds = ppl.perplexity, ppl.tokens, ppl.seconds
        result.perplexity_tokens_read, result.perplexity_windows = ppl.read, ppl.windows
        forward = True
    if quality.prompts and quality.max_new_tokens and not _cancelled(cancel):
        result.answers = greedy_answers(model, loaded.tokenizer, quality.prompts, quality.max_new_tokens,
                                        report=lambda m: report(f"{label}: {m}"), cancel=cancel)
        forward = True
    if forward:
        result.measured_after_forward_bytes = measure_model(model).total_bytes
        result.predicted_after_forward_bytes = _after_forward_prediction(estimate, loaded.device)


def _record_release(result: LoadReport, before: MemorySnapshot, held: MemorySnapshot) -> None:
    """What freeing the model handed back, and how far RSS had grown by then."""
    device = result.device
    freed = held.minus(MemorySnapshot.take(device))
    freed.pop("cuda_max_allocated_bytes", None)  # a peak, not something handed back
    result.freed = freed
    # RSS grows after the load too: forward passes touch memory-mapped weights and allocate scratch.
    result.rss_at_release_bytes = held.rss_bytes - before.rss_bytes


def explain_rss(r: dict) -> str:
    """Why this load's RSS grew by what it did, from its own figures (a LoadReport as JSON).

    Measured on SmolLM2-135M (fp32 checkpoint, CPU): fp32 grew 66 MB for 538 MB of weights (they are
    memory-mapped and read at the first forward pass: 605 MB at release), int8 grew 772 MB for 220 MB of
    weights (426 MB of it file pages: quantizing read every fp32 Linear weight through the map; 346 MB
    anonymous: the int8 weights plus the allocator's leftovers of the float copies quantized from)."""

    mem, measured = r.get("memory") or {}, r["measured_bytes"]
    growth, anon, file = mem.get("rss_bytes"), mem.get("rss_anon_bytes"), mem.get("rss_file_bytes")
    if growth is None:
        return ""
    quantized = get_precision(r["precision"]).quantized
    parts = [f"+{fmt_bytes(growth)} for {fmt_bytes(measured)} of weights"]
    if growth < 0.5 * measured:
        later = r.get("rss_at_release_bytes")
        parts.append("the weights are memory-mapped from the safetensors file and count in RSS only once read, "
                     "at the first forward pass" + (f" ({fmt_bytes(later)} by release)" if later else ""))
    elif file is not None and anon is not None and file > 0.1 * growth:
        read = "quantizing read every Linear weight at full precision" if quantized else "the load read the weights"
        parts.append(f"{fmt_bytes(file)} are checkpoint pages mapped into the process ({read} through the map)")
        if anon > 1.1 * measured:
            parts.append(f"{fmt_bytes(anon)} anonymous memory: the weights plus the allocator's leftovers"
                         + (" of the float copies each weight was quantized from" if quantized else ""))
        else:
            parts.append(f"{fmt_bytes(anon)} anonymous memory (the weights' own tensors)")
    return "; ".join(parts) + "."


def _after_forward_prediction(estimate, device: str) -> int | None:
    """On an AVX512-BF16 CPU, 4-bit layers are repacked on the first forward (see lab/models/measure.py)."""
    if estimate is None:
        return None
    if device == "cpu" and estimate.cpu_packed_bytes is not None:
        import bitsandbytes.functional as F

        if F.has_avx512bf16():
            return estimate.cpu_packed_bytes
    return estimate.weights_bytes


def _cancelled(cancel: threading.Event | None) -> bool:
    return cancel is not None and cancel.is_set()


def _load(source: ModelSource, precision: str, dtype: str | None, device: str):
    p = get_precision(precision)
    try:
        return load_model(source, p.name, dtype, device)  # out of memory: a LabError from load_model
    except LabError:
        raise
    except RuntimeError as e:
        text = str(e)
        if p.quantized:
            raise LabError(
                f"bitsandbytes could not load {p.label} on {device}: "
                f"{text.splitlines()[0] if text else type(e).__name__}",
                "Try fp32 (or bf16/fp16), or a CUDA GPU.",
            ) from e
        raise
    except (ImportError, ValueError) as e:
        if p.quantized:
            raise LabError(
                f"bitsandbytes cannot run {p.label} on {device}: {e}", "Try fp32 (or bf16/fp16), or a CUDA GPU."
            ) from e
        raise


# --------------------------------------------------------------------------- several loads in turn
def run_loading_lab(
    spec: str,
    precisions: Sequence[str],
    dtype: str = COMPUTE,
    device: str | None = None,
    quality: QualityConfig | None = None,
    report: Report | None = None,
    cancel: threading.Event | None = None,
    turn: Callable[[str], AbstractContextManager] | None = None,
) -> list[dict]:
    """Load `spec` at each precision in turn (each one freed before the next). One dict per
    precision: a LoadReport as JSON, or {'precision', 'error'} when that precision failed (the
    others still run). A bad model spec fails the whole run with a LabError.

    `turn(precision)`, when given, is entered around each precision's load (a turn in the device's
    queue, lab.sharing), so other people's requests run between precisions."""
    report = report or _noop
    if not precisions:
        raise LabError("No precision chosen.", "Pick at least one of fp32, bf16, fp16, int8, nf4, nf4-dq, fp4.")
    names = [get_precision(p).name for p in precisions]
    source = resolve_source(spec, weights=True)  # fails the whole run at once, not each precision
    results: list[dict] = []
    if not _RUN_LOCK.acquire(blocking=False):
        report("waiting for another loading-lab run to finish…", 0.0)
        while not _RUN_LOCK.acquire(timeout=0.2):
            if _cancelled(cancel):
                raise Cancelled("Cancelled while waiting for another loading-lab run: nothing ran.")
    try:
        _run_each(source, names, dtype, device, quality, report, cancel, results, turn or (lambda _name: nullcontext()))
    finally:
        _RUN_LOCK.release()
    return results


def _run_each(source, names, dtype, device, quality, report, cancel, results, turn) -> None:
    for i, name in enumerate(names):
        if _cancelled(cancel):
            break

        def step(message: str, fraction: float | None = None, partial=None, _i=i) -> None:
            report(message, (_i + (fraction or 0.0)) / len(names), partial=list(results))

        step(f"[{i + 1}/{len(names)}] {get_precision(name).label}")
        error = None
        try:
            with turn(name):
                results.append(measure_load(source, name, dtype, device, quality, report=step, cancel=cancel).to_json())
        except Cancelled:
            break  # cancelled while waiting for its turn: the finished precisions stand
        except LabError as e:
            error = str(e)
        if error is not None:
            free_memory()  # outside the except block: its traceback no longer pins the model
            results.append({"precision": name, "error": error})
            if source.kind == "hub" and "Hub" in error:
                break  # every precision would fail the same way
        report(f"done {get_precision(name).label}", (i + 1) / len(names), partial=list(results))

