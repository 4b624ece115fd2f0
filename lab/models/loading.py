"""Load a model and its tokenizer at a chosen precision, with errors a person can act on."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import torch

from lab.environment import device_type
from lab.errors import LabError
from lab.models.precision import get_precision, load_kwargs
from lab.models.sources import ModelSource, hub_error, resolve_source
from lab.vocab import COMPUTE


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: ModelSource
    precision: str
    device: str
    load_seconds: float


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.pretrained_id)
    except OSError as e:
        raise hub_error(source, e) from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(source: ModelSource | str, precision: str = "fp32", dtype: str = COMPUTE,
               device: str | None = None) -> LoadedModel:
    """Load `source` at `precision` on `device` (default: CUDA if available, else CPU)."""
    from transformers import AutoModelForCausalLM

    source = resolve_source(source) if isinstance(source, str) else source
    if not source.has_weights:
        raise LabError(
            f"{source.display_name} is a config without weights: it can be estimated, not loaded.",
            "Pick 'embedded', a model folder with weights, or a Hub id.",
        )
    device = device or device_type()
    p = get_precision(precision)
    tokenizer = load_tokenizer(source)
    started = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(source.pretrained_id, **load_kwargs(p.name, dtype, device))
    except torch.OutOfMemoryError as e:
        free_memory()
        raise LabError(
            f"Out of memory loading {source.display_name} at {p.label}.",
            "Try a 4-bit precision (nf4), a smaller model, or free other loaded models first.",
        ) from e
    except OSError as e:
        raise hub_error(source, e) from e
    model.eval()
    return LoadedModel(model, tokenizer, source, p.name, device, time.perf_counter() - started)


def free_memory() -> None:
    """Hand memory back after dropping references to a model: Python objects, then CUDA cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
