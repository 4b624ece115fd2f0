"""`python -m lab verify`: the simulation held against the real step on this device, category by category.

For a few small settings (LoRA, LoRA with checkpointing, QLoRA; batch 1-2, 64 tokens) the real training step
(forward, backward, optimizer step, as `lab.estimate.recipe` runs it) and a real `generate` run on this
machine's device, and the simulation of the same settings (`lab.estimate.simulate`, this device's code paths)
is put beside each. What "measured" means:

- on CUDA, the total is `torch.cuda.max_memory_allocated()` over the step (the peak reset before each
  setting); the categories come from the simulation's own tracker (`LiveBytes`) over the real CUDA tensors;
- on a CPU, there is no allocator peak to read: the same tracker counts the real tensors' storages as they
  are made and freed (`lab.estimate.check`), so the comparison is tensor bytes against tensor bytes.

The work is fixed (no size flags): one load per setting of a model that `resolve_source` admits.
"""

from __future__ import annotations

import gc
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from lab.environment import device_type
from lab.errors import LabError
from lab.estimate import compose as comp
from lab.estimate.check import load_real, measure_real_training
from lab.estimate.recipe import decoder_layers, prepare_for_training, register_model
from lab.estimate.simulate import (
    InferenceSettings,
    _categories,
    resolve_inference,
    resolve_recipe,
    run_training,
    simulate_inference,
    simulate_training,
    transformers_config,
)
from lab.estimate.tracker import CUDA_BLOCK, LiveBytes
from lab.estimate.training import TrainingSettings
from lab.models.reader import read_architecture
from lab.models.sources import resolve_source

TRAIN_CATEGORIES = ("weights", "adapters", "gradients", "optimizer", "activations", "temporaries")
GENERATE_CATEGORIES = ("weights", "kv_cache")
PEAK = "peak"  # the row of the step's total peak
MEASURED = {
    "cuda": "torch.cuda.max_memory_allocated() over the real step (peak reset before each setting); categories "
            "from the simulation's tracker over the real CUDA tensors",
    "cpu": "live tensor bytes of the real step, counted by the simulation's own tracker (lab.estimate.tracker) over "
           "real tensors: this process's RSS would add Python and its libraries",
}


@dataclass(frozen=True)
class Check:
    """One setting verify runs: a training step (TrainingSettings) or a generation (InferenceSettings)."""

    name: str
    settings: TrainingSettings | InferenceSettings

    @property
    def kind(self) -> str:
        return "generation" if isinstance(self.settings, InferenceSettings) else "training"


def _train(method: str, precision: str, batch: int, gc_on: bool = False, optimizer: str = "adamw_torch",
           device: str = "cpu") -> TrainingSettings:
    # as lab.training.runner trains: in the device's compute dtype (fp32 on a CPU, adapters too: the runner casts
    # them there; bf16 on a recent GPU, whatever the checkpoint's own dtype)
    return TrainingSettings(method=method, precision=precision, dtype="compute",
                            batch_size=batch, max_length=64, gradient_checkpointing=gc_on, optimizer=optimizer, r=8,
                            targets="all-linear", adapter_dtype="fp32" if device == "cpu" else "auto")


def checks(device: str) -> tuple[Check, ...]:
    """The settings verify runs on `device`: small enough for a laptop CPU, the GPU recipe's kinds on CUDA."""
    if device == "cuda":
        return (Check("LoRA bf16, batch 2 × 64 tokens", _train("lora", "bf16", 2, device=device)),
                Check("QLoRA nf4-dq, checkpointing, paged 8-bit AdamW, batch 2 × 64",
                      _train("qlora", "nf4-dq", 2, True, "paged_adamw_8bit", device)),
                Check("QLoRA nf4, AdamW, batch 1 × 64", _train("qlora", "nf4", 1, device=device)),
                Check("generate bf16, 1 × (32 + 16) tokens", InferenceSettings("bf16", "auto", 1, 32, 16)))
    return (Check("LoRA fp32, batch 2 × 64 tokens", _train("lora", "fp32", 2)),
            Check("LoRA fp32, checkpointing, batch 1 × 64", _train("lora", "fp32", 1, True)),
            Check("QLoRA nf4, batch 2 × 64", _train("qlora", "nf4", 2)),
            Check("generate fp32, 1 × (32 + 16) tokens", InferenceSettings("fp32", "compute", 1, 32, 16)))


@dataclass(frozen=True)
class Row:
    setting: str
    category: str
    simulated_bytes: int
    measured_bytes: int

    @property
    def error_pct(self) -> float | None:
        """(simulated − measured) / measured × 100; None where nothing was measured in this category."""
        if not self.measured_bytes:
            return None if self.simulated_bytes else 0.0
        return 100.0 * (self.simulated_bytes - self.measured_bytes) / self.measured_bytes

    def to_json(self) -> dict:
        return {"setting": self.setting, "category": self.category, "simulated_bytes": self.simulated_bytes,
                "measured_bytes": self.measured_bytes, "error_pct": self.error_pct}


@dataclass(frozen=True)
class VerifyReport:
    model: str
    device: str
    measured: str  # what "measured" counts on this device
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> list[dict]:
        return [r.to_json() for r in self.rows]


def _rows(name: str, categories: tuple[str, ...], simulated: dict, measured: dict, sim_peak: int,
          real_peak: int) -> list[Row]:
    out = [Row(name, c, int(simulated.get(c, 0)), int(measured.get(c, 0))) for c in categories]
    return out + [Row(name, PEAK, int(sim_peak), int(real_peak))]


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _composed(tracker: LiveBytes, model) -> comp.Composed:
    layers = len(decoder_layers(model))
    return comp.compose(comp.blocks_from(tracker, _categories(tracker), layers, layers), layers)


def measure_training(folder: str, recipe) -> tuple[int, dict[str, int]]:
    """(peak, live bytes per category at the peak) of the real steady-state step on this device."""
    if recipe.device != "cuda":
        real = measure_real_training(folder, recipe)
        return real.peak_bytes, real.by_category
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = prepare_for_training(load_real(folder, recipe.precision, recipe.dtype, recipe.attn, "cuda"), recipe)
        _free("cuda")
        torch.manual_seed(0)
        tracker = run_training(model, torch.device("cuda"), recipe, fake=False)  # inputs made on the GPU
        peak = torch.cuda.max_memory_allocated()
    categories = _composed(tracker, model).by_category
    del model, tracker
    _free("cuda")
    return peak, categories


def measure_generation(folder: str, recipe) -> tuple[int, dict[str, int]]:
    """(peak, {weights, kv_cache}) of a real `generate` of `new_tokens` after a `prompt_tokens` prompt. The cache
    is generate's final one: prompt + new − 1 tokens (the last new token is never fed back), one token less than
    the simulation's decode step at its peak holds."""
    device = recipe.device
    model = load_real(folder, recipe.precision, recipe.dtype, recipe.attn, device).eval()
    model.requires_grad_(False)
    block = CUDA_BLOCK if device == "cuda" else 1
    tracker = LiveBytes(round_to=block, fake=False)
    register_model(model, tracker, SimpleNamespace(method="full"))  # every parameter is a base weight
    weights = tracker.live
    ids = torch.zeros((recipe.batch_size, recipe.prompt_tokens), dtype=torch.long, device=model.device)
    _free(device)
    with torch.no_grad(), (tracker if device != "cuda" else nullcontext()):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=recipe.new_tokens,
                             min_new_tokens=recipe.new_tokens, do_sample=False, pad_token_id=0,
                             return_dict_in_generate=True)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else tracker.peak
    cache = sum(-(-t.untyped_storage().nbytes() // block) * block for layer in out.past_key_values.layers
                for t in vars(layer).values() if isinstance(t, torch.Tensor))
    del model, out, tracker
    _free(device)
    return peak, {"weights": weights, "kv_cache": cache}


def simulate_check(arch, check: Check, device: str):
    """The simulation of `check` on `device`'s code paths, as the calculator runs it (five layers, composed)."""
    config = transformers_config(arch)
    if check.kind == "generation":
        recipe = resolve_inference(arch, check.settings, device)
        return recipe, simulate_inference(config, recipe, name=arch.name)
    recipe = resolve_recipe(arch, check.settings, device)
    return recipe, simulate_training(config, recipe, name=arch.name)


def run_check(arch, folder: str, check: Check, device: str) -> list[Row]:
    """One setting: simulated beside measured, per category and in total."""
    recipe, sim = simulate_check(arch, check, device)
    if check.kind == "generation":
        peak, measured = measure_generation(folder, recipe)
        return _rows(check.name, GENERATE_CATEGORIES, sim.by_category, measured, sim.peak_bytes, peak)
    peak, measured = measure_training(folder, recipe)
    return _rows(check.name, TRAIN_CATEGORIES, sim.by_category, measured, sim.peak_bytes, peak)


def verify(model: str = "embedded", only: tuple[str, ...] | None = None, report=None) -> VerifyReport:
    """Simulated against measured for each of `checks(device)` (or those whose name starts with one of `only`)
    on this machine's device. `report(message)`: progress, one line per setting."""
    t0 = time.perf_counter()
    device = device_type()
    source = resolve_source(model)  # public mode's admission, as every command
    source.require_weights()
    arch = read_architecture(source)
    chosen = [c for c in checks(device) if only is None or c.name.startswith(tuple(only))]
    if not chosen:
        raise LabError(f"No verify setting starts with {', '.join(only or ())!r}.",
                       "Settings: " + "; ".join(c.name for c in checks(device)) + ".")
    rows: list[Row] = []
    for check in chosen:
        if report:
            report(f"{check.name}: simulating, then running it for real")
        rows += run_check(arch, source.pretrained_id, check, device)
    return VerifyReport(arch.name, device, MEASURED[device], rows, round(time.perf_counter() - t0, 2))
