"""Build models without touching what other threads see (issue 20: sessions interfered).

transformers 5 builds every model (`from_config`, `from_pretrained`) under `local_torch_dtype`, which
calls `torch.set_default_dtype`: a process-wide setting. On a shared server one session's calculator
builds a bf16 model while another loads an fp32 model or generates: the load came back with a mix of
fp32 and bf16 parameters, `torch.ones(3)` was bf16 in the other thread, and generation failed.
Two overlapping builds can also leave the default changed for good (each restores what it saw).

Two measures, both here:
- `local_torch_dtype` is replaced by `thread_dtype`: the process default stays as it is, and a torch
  function mode (thread-local, like `torch.device(...)`) gives the building thread's new floating
  tensors the requested dtype instead: the same dtypes transformers' switch gives (tested per
  architecture), nothing for any other thread.
- `install()` makes every build in the process hold one lock: transformers also swaps class
  attributes while it builds (`PreTrainedModel.tie_weights` is a no-op during `from_pretrained`, the
  `torch.nn.init` functions are guarded), which another build in the same moment would pick up.
  Builds are short: `from_config` on the meta device, and `from_pretrained` only while it constructs
  (its init contexts), not while it reads weights; generation and training never take it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode

BUILD_LOCK = threading.RLock()
ORIGINAL_LOCAL_DTYPE = None  # transformers' own `local_torch_dtype`, kept for the equivalence test
_INSTALL_LOCK = threading.Lock()

# Functions whose floating result follows the dtype named in them, not the default.
_EXPLICIT = {torch.Tensor.to, torch.Tensor.type, torch.Tensor.float, torch.Tensor.double, torch.Tensor.half,
             torch.Tensor.bfloat16, torch.Tensor.new_empty, torch.Tensor.new_zeros, torch.Tensor.new_ones,
             torch.Tensor.new_full, torch.Tensor.new_tensor}
_FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray, torch.empty, torch.zeros, torch.ones, torch.full,
              torch.rand, torch.randn, torch.arange, torch.linspace, torch.logspace, torch.eye, torch.empty_strided,
              torch.scalar_tensor}


def _floating_source(value) -> bool:
    """A floating tensor or array among the inputs: then a floating result's dtype came from it."""
    if isinstance(value, torch.Tensor):
        return value.is_floating_point()
    if isinstance(value, (list, tuple)):
        return any(_floating_source(v) for v in value)
    dtype = getattr(value, "dtype", None)  # numpy arrays and scalars
    return dtype is not None and getattr(dtype, "kind", "") == "f"


class _DefaultDtype(TorchFunctionMode):
    """For the thread that enters it, new floating tensors whose dtype would come from torch's
    default get `dtype` instead, as under `torch.set_default_dtype(dtype)`."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype
        self.default = torch.get_default_dtype()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self._from_default(func, args, kwargs, out):
            return out
        if func in _FACTORIES:  # made anew in the dtype (no second copy of real data)
            return func(*args, **{**kwargs, "dtype": self.dtype})
        return out.to(self.dtype)

    def _from_default(self, func, args, kwargs, out) -> bool:
        if not isinstance(out, torch.Tensor) or out.dtype != self.default or func in _EXPLICIT:
            return False
        if kwargs.get("dtype") is not None or any(isinstance(a, torch.dtype) for a in args):
            return False
        return not _floating_source(args) and not _floating_source(list(kwargs.values()))


@contextmanager
def thread_dtype(dtype: torch.dtype, model_class_name: str | None = None) -> Iterator[None]:
    """Drop-in for transformers' `local_torch_dtype` that leaves the process default alone."""
    if not dtype.is_floating_point:  # transformers' own message
        what = f"{model_class_name} cannot be instantiated under" if model_class_name else "Cannot set"
        raise ValueError(f"{what} `dtype={dtype}` as it's not a floating-point dtype")
    if dtype == torch.get_default_dtype():
        yield
        return
    with _DefaultDtype(dtype):
        yield


@contextmanager
def _one_build_at_a_time() -> Iterator[None]:
    with BUILD_LOCK:
        yield


def install() -> None:
    """Route every transformers build in this process through `thread_dtype` and `BUILD_LOCK`:
    `from_pretrained` holds the lock while it constructs (its init contexts), not while it reads
    weights; `from_config` while it builds. Once per process; call it before any build."""
    global ORIGINAL_LOCAL_DTYPE
    # transformers: 3.0 s to import; imported where used, not with this module
    from transformers import modeling_utils
    from transformers.modeling_utils import PreTrainedModel

    with _INSTALL_LOCK:
        if modeling_utils.local_torch_dtype is thread_dtype:
            return
        ORIGINAL_LOCAL_DTYPE = modeling_utils.local_torch_dtype
        init_context = PreTrainedModel.get_init_context.__func__
        from_config = PreTrainedModel._from_config.__func__

        def get_init_context(cls, *args, **kwargs):
            return [_one_build_at_a_time(), *init_context(cls, *args, **kwargs)]

        def _from_config(cls, *args, **kwargs):
            with BUILD_LOCK:
                return from_config(cls, *args, **kwargs)

        PreTrainedModel.get_init_context = classmethod(get_init_context)
        PreTrainedModel._from_config = classmethod(_from_config)
        modeling_utils.local_torch_dtype = thread_dtype


@contextmanager
def constructing() -> Iterator[None]:
    """Around a build in `lab`: installed first, then one build at a time."""
    install()
    with BUILD_LOCK:
        yield
