"""The simulation's truth test on this machine: the same step on real tensors, counted the same way.

`measure_real_training` loads a real model folder at the recipe's precision on the CPU (bitsandbytes
quantizes it for real), prepares it with the same recipe functions the simulation uses, runs the same
two optimizer steps with the same `LiveBytes` tracker — only now the tensors hold data. The simulation
of the same folder's config with `device="cpu"` (CPU code paths, exact bytes) must land within 3%
(`tests/test_simulate.py`, `benchmarks/bench_simulation.py`).
"""

from __future__ import annotations

import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from lab.estimate import compose as comp
from lab.estimate.recipe import Recipe, decoder_layers, prepare_for_training
from lab.estimate.simulate import (
    InferenceRecipe,
    Simulation,
    _categories,
    run_inference,
    run_training,
)
from lab.models.construct import install
from lab.models.precision import load_kwargs

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class Measured:
    peak_bytes: int
    by_category: dict[str, int]
    seconds: float


def load_real(model_dir: str, precision: str, dtype: torch.dtype, attn: str, device: str = "cpu"):
    """The model as `lab.models.precision.load_kwargs` loads it on `device` (a real bitsandbytes load)."""
    # transformers: 0.6 s to import; imported where used, not with this module
    from transformers import AutoModelForCausalLM

    install()  # as the server loads (issue 20)
    kwargs = load_kwargs(precision, DTYPE_NAMES[dtype], device)
    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn, **kwargs)


def measure_real_training(model_dir: str, recipe: Recipe) -> Measured:
    """Peak live bytes of two real training steps of `model_dir` on the CPU, tracked as simulated."""
    if recipe.device != "cpu":
        raise ValueError("A real step here runs on the CPU: use a recipe with device='cpu'.")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the libraries' deprecation chatter, as in the simulation
        model = load_real(model_dir, recipe.precision, recipe.dtype, recipe.attn)
        model = prepare_for_training(model, recipe)
        torch.manual_seed(0)
        tracker = run_training(model, nullcontext(), recipe, fake=False)
    return _measured(tracker, model, t0)


def measure_real_inference(model_dir: str, recipe: InferenceRecipe) -> Measured:
    t0 = time.perf_counter()
    model = load_real(model_dir, recipe.precision, recipe.dtype, recipe.attn)
    model.requires_grad_(False)
    model.eval()
    tracker = run_inference(model, nullcontext(), recipe, fake=False)
    return _measured(tracker, model, t0)


def _measured(tracker, model, t0: float) -> Measured:

    layers = len(decoder_layers(model))
    composed = comp.compose(comp.blocks_from(tracker, _categories(tracker), layers, layers), layers)
    return Measured(composed.peak_bytes, composed.by_category, round(time.perf_counter() - t0, 2))


def compare(simulated: Simulation, measured: Measured) -> dict:
    """Both sides and the relative error of the simulation."""
    return {
        "simulated_bytes": simulated.peak_bytes,
        "measured_bytes": measured.peak_bytes,
        "error_pct": 100.0 * (simulated.peak_bytes - measured.peak_bytes) / measured.peak_bytes,
        "simulated_by_category": simulated.by_category,
        "measured_by_category": measured.by_category,
    }


__all__ = ["Measured", "measure_real_training", "measure_real_inference", "compare"]
