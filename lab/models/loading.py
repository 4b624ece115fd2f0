"""Load a model and its tokenizer at a chosen precision, with errors a person can act on."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from dataclasses import dataclass

import torch

from lab.environment import device_type
from lab.errors import LabError
from lab.models.construct import install
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
    # transformers: 0.8 s to import; imported where used, not with this module
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
    # transformers: 0.8 s to import; imported where used, not with this module
    from transformers import AutoModelForCausalLM

    source = (resolve_source(source, weights=True) if isinstance(source, str) else source).require_weights()
    device = device or device_type()
    p = get_precision(precision)
    tokenizer = load_tokenizer(source)
    started = time.perf_counter()
    install()  # the build neither changes other sessions' dtypes nor overlaps another build (issue 20)
    try:
        model = AutoModelForCausalLM.from_pretrained(source.pretrained_id, **load_kwargs(p.name, dtype, device))
    except OSError as e:
        raise hub_error(source, e) from e
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        free_memory()
        raise out_of_memory(source, p.name, device) from e
    model.eval()
    return LoadedModel(model, tokenizer, source, p.name, device, time.perf_counter() - started)


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or the allocator's RuntimeError on a CPU."""
    text = str(error).lower()
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text))


def out_of_memory(source: ModelSource, precision: str, device: str) -> LabError:
    """The one message for a model that did not fit while loading (GPU memory or RAM)."""
    return LabError(f"Out of memory loading {source.display_name} at {get_precision(precision).label} on {device}.",
                    "Try a 4-bit precision (nf4), a smaller model, or free other loaded models first.")


_LIBC = None


def free_memory() -> None:
    """Hand memory back after dropping references to a model: collect unreachable objects, empty
    the CUDA cache, and ask glibc to return freed heap pages to the OS (so RSS shows what a
    released model gave back)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trim_heap()


def trim_heap() -> None:
    """Ask glibc to return freed heap pages to the OS (about 10 ms). Without it, memory freed by a
    worker thread stays in that thread's malloc arena: eight sessions' comparisons and evaluations of
    the embedded model in one process grew RSS by 528 MB untrimmed, 217 MB when trimmed after each
    queue turn (measured on the 2-core CPU)."""
    global _LIBC
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        try:
            _LIBC = ctypes.CDLL(name) if name else False
        except OSError:  # not glibc (musl, macOS): nothing to trim
            _LIBC = False
    trim = getattr(_LIBC, "malloc_trim", None) if _LIBC else None
    if trim is not None:
        trim(0)
