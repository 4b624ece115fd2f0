"""A planned run in time and money, and the time price of every memory saving.

`speed_report` answers `python -m lab memory ... --gpu G --json`'s `speed` and `cost`; `saving_options`
simulates each memory-saving option next to the chosen settings and returns its memory saved and its
time cost side by side (typed rows, for the CLI and the calculator).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import torch

from lab.data.datasets import load_rows, token_lengths
from lab.errors import LabError
from lab.estimate.gpus import get_gpu
from lab.estimate.hardware import SPECS, get_hardware
from lab.estimate.prices import PRICES_DATE, run_costs
from lab.estimate.probe import probe_cpu
from lab.estimate.simulate import resolve_recipe, simulate, transformers_config
from lab.estimate.speed import step_time
from lab.estimate.training import TrainingSettings
from lab.models.reader import read_architecture
from lab.models.sources import prepare_embedded_model


@lru_cache(maxsize=16)
def dataset_tokens(name: str, seq_len: int) -> tuple[int, int]:
    """(rows, tokens) of a dataset's train split, each row cut at `seq_len` as the trainer truncates it,
    counted with the embedded model's tokenizer (SmolLM2's; another model's tokenizer differs by ±20%)."""
    # transformers: 0.6 s to import; imported where used, not with this module
    from transformers import AutoTokenizer

    rows = load_rows(name)
    tokenizer = AutoTokenizer.from_pretrained(str(prepare_embedded_model()))
    return len(rows), sum(min(n, seq_len) for n in token_lengths(tokenizer, rows))


def speed_report(sim, gpu: str, gpus: int = 1, sharding: str = "ddp", steps: int | None = None,
                 dataset: str | None = None, epochs: float = 1.0) -> dict:
    """`speed` (per GPU) and, with `steps` or `dataset`, the run's seconds and its `cost` at each listed price."""
    t = step_time(sim, gpu, gpus, sharding)
    speed = t.to_json()
    s = sim.settings
    run_tokens = None
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise LabError(f"--steps must be a positive number of optimizer steps, got {steps!r}.")
        speed["run_steps"] = steps
        speed["run_seconds"] = steps * t.step_seconds
    elif dataset is not None:
        if not isinstance(epochs, (int, float)) or isinstance(epochs, bool) or epochs <= 0:
            raise LabError(f"--epochs must be positive, got {epochs!r}.")
        rows, tokens = dataset_tokens(dataset, int(s["max_length"]))
        run_tokens = tokens * epochs
        batch = int(s["batch_size"]) * gpus
        speed.update(dataset=dataset, dataset_rows=rows, dataset_tokens=tokens, epochs=epochs,
                     run_steps=math.ceil(rows * epochs / batch),
                     run_seconds=run_tokens / (t.tokens_per_second * gpus))
    out = {"speed": speed}
    if "run_seconds" in speed:
        out["cost"] = run_costs(t.device, speed["run_seconds"], gpus)
        out["prices_date"] = PRICES_DATE
    return out


@dataclass(frozen=True)
class SavingOption:
    """One memory-saving option against the chosen settings: what it saves and what it costs in time."""

    option: str
    settings: str  # what changes
    peak_bytes: int
    saved_bytes: int  # chosen peak − this option's peak (negative: it needs more)
    tokens_per_second: float
    time_cost: float  # seconds per token with the option / without, − 1 (0.3 = 30% slower per token)
    note: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def _options(settings) -> list[tuple[str, str, object]]:
    s = settings
    out = []
    if not s.gradient_checkpointing:
        out.append(("gradient checkpointing", "gradient_checkpointing on", replace(s, gradient_checkpointing=True)))
    if s.method == "lora":
        out.append(("4-bit base (QLoRA)", "qlora nf4-dq", replace(s, method="qlora", precision="nf4-dq")))
    if s.method == "full":
        out.append(("LoRA instead of full", "lora r=16 all-linear", replace(s, method="lora", precision=None)))
    if "8bit" not in s.optimizer:
        out.append(("8-bit optimizer", "adamw_8bit", replace(s, optimizer="adamw_8bit")))
    if s.batch_size > 1:
        half = max(1, s.batch_size // 2)
        out.append(("smaller batch", f"batch {half} (same tokens: twice the steps)", replace(s, batch_size=half)))
    return out


def saving_options(arch, settings, gpu: str, report=None, cancel=None) -> list[SavingOption]:
    """Each memory-saving option simulated on its own against `settings`, timed on `gpu`. An option the
    model or settings refuse gets a row with its reason in `note`. (`report`/`cancel`: lab.tasks' hooks.)"""
    base = simulate(arch, settings)
    base_tps = step_time(base, gpu).tokens_per_second
    rows = [SavingOption("as chosen", "", base.peak_bytes, 0, base_tps, 0.0)]
    for name, what, changed in _options(settings):
        if cancel is not None and cancel.is_set():
            break
        if report:
            report(f"simulating {name}")
        try:
            sim = simulate(arch, changed)
        except LabError as e:
            rows.append(SavingOption(name, what, 0, 0, 0.0, 0.0, str(e)))
            continue
        tps = step_time(sim, gpu).tokens_per_second
        rows.append(SavingOption(name, what, sim.peak_bytes, base.peak_bytes - sim.peak_bytes, tps,
                                 base_tps / tps - 1 if tps else 0.0))
    return rows


def predict_run(config: dict, device: str = "cpu", steps: int | None = None, report=None, cancel=None) -> dict:
    """The time model's tokens/s and step time for a Training-page run (`TrainConfig.to_dict()`) on `device`:
    a GPU of the table by its name, or this CPU (probed now, a few seconds; setting `cancel` stops the probe:
    `Cancelled`). With `steps`, the run's seconds."""
    c = config
    device_kind = "cpu" if device == "cpu" else "cuda"
    settings = TrainingSettings.for_run(c, device_kind)  # through lab.recipe's table, as the run itself
    arch = read_architecture(c.get("model", "embedded"))
    sim = simulate(arch, settings, device_kind)
    if device_kind == "cpu":
        hw = probe_cpu(rows=settings.batch_size * settings.max_length, sim=sim, config=transformers_config(arch),
                       recipe=resolve_recipe(arch, settings, device_kind), cancel=cancel)
    else:
        hw = get_hardware(get_gpu(_gpu_name(device)).name)
    t = step_time(sim, hw)
    out = {"device": hw.name, "tokens_per_second": t.tokens_per_second, "step_seconds": t.step_seconds}
    if steps:
        out["run_seconds"] = steps * t.step_seconds
    return out


def _gpu_name(device: str) -> str:
    """A table GPU name for `device`: a name given as is, or this machine's CUDA device ("cuda") by its model
    (an "NVIDIA A100-SXM4-80GB" is the "A100 80 GB" row)."""
    if device not in ("cuda", "mps"):
        return device

    if not torch.cuda.is_available():
        raise LabError(f"No CUDA device here to time a {device} run on.")
    found = torch.cuda.get_device_name(0)
    for h in SPECS:
        model, size = h.name.split()[0], h.name.split()[1]
        if model in found and (size in found or model not in ("A100",)):
            return h.name
    raise LabError(f"No speed figures for {found!r}.")
