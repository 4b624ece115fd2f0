"""Count live bytes through a step, the way a device's allocator would see them.

`LiveBytes` is a small `TorchDispatchMode`: every aten op that returns a tensor with a storage it has
not seen yet adds that storage's bytes, and a weak reference on the storage takes them off again when
the storage dies. It works the same on fake tensors (`FakeTensorMode`: shapes, dtypes and lifetimes,
no data) and on real ones, which is how the simulation is checked against a real step on this machine.

Why our own mode and not `torch.distributed._tools.mem_tracker.MemTracker` (which counts the same
storages with the same weak-reference trick): the calculator needs the *event stream* — every
allocation and free in order, with the phase and decoder layer it happened in — to draw the timeline
and to repeat one simulated decoder layer up to the model's full depth (`lab.estimate.compose`).
MemTracker keeps per-module snapshots instead (a deep copy for every active module on every new
peak, slow on big graphs), files tensors by phase only, and hooks every parameter's gradient, so
frozen base weights need a guard. Here a storage's category is decided after the step from what it
became (a parameter's `.grad`, optimizer state, the KV cache), otherwise from the phase that made it.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lab.errors import Cancelled

# The CUDA caching allocator rounds every allocation up to a multiple of 512 bytes and
# max_memory_allocated counts the rounded sizes (c10/cuda/CUDACachingAllocator.cpp: kMinBlockSize, round_size).
CUDA_BLOCK = 512
NO_LAYER = -1  # embeddings, head, anything not inside one decoder layer
_DEVICE = torch.ops.prim.device.default
_CANCEL = threading.local()  # .event: what stops the simulations this thread runs (cancel_on)


@contextmanager
def cancel_on(event: threading.Event | None):
    """Within: a step this thread simulates stops where its next layer or phase begins once `event` is set
    (Cancelled). A page whose person asked for other settings meanwhile neither waits for nor pays for the old step;
    on a shared server the others' simulations, which queue behind one lock, do not either."""
    previous = getattr(_CANCEL, "event", None)
    _CANCEL.event = event
    try:
        yield
    finally:
        _CANCEL.event = previous


CANCELLED = "The simulation was cancelled: other settings were asked for meanwhile."


def stop_if_cancelled() -> None:
    """Cancelled, when this thread's simulations were asked to stop (see cancel_on)."""
    event = getattr(_CANCEL, "event", None)
    if event is not None and event.is_set():
        raise Cancelled(CANCELLED)


@dataclass
class Storage:
    """One allocation: its size, when and where it was made, and what it became."""

    nbytes: int
    phase: str  # setup | forward | recompute | backward | optimizer
    owner: int  # decoder layer it belongs to, or NO_LAYER
    role: str | None = None  # set when known: weights | adapters | gradients | optimizer | paged | kv_cache | inputs
    module: str | None = None  # module whose forward made it (only inside the profiled layer)
    raw: int = 0  # bytes as allocated, before the allocator's rounding (lab.estimate.replay interpolates these)
    pages_at: int = 0  # a paged optimizer's state: the raw bytes from which it is paged (0: never paged)


class LiveBytes(TorchDispatchMode):
    """Track live storages: `register()` what exists before the step (weights), mark where the step
    is with `segment()`, `phase` and `owner`, and run the step inside `with tracker:`."""

    def __init__(self, round_to: int = 1, fake: bool = True):
        super().__init__()
        self.round_to = round_to  # CUDA_BLOCK to predict CUDA's allocated bytes; 1 = exact bytes
        self.fake = fake  # the op overrides below only make sense on fake tensors
        self.cancel: threading.Event | None = getattr(_CANCEL, "event", None)
        self.storages: list[Storage] = []
        self.events: list[tuple[int, int, int]] = []  # (storage index, +1 alloc / -1 free, segment index)
        self.segments: list[tuple] = []  # labels, e.g. ("F", 3, 1) = forward of layer 3 in step 1
        self.phase = "setup"
        self.owner = NO_LAYER
        self.module: str | None = None
        self.live = 0
        self.peak = 0
        self._index: dict[int, int] = {}  # id(storage object) -> storage index, while it is alive
        self._refs: dict[int, weakref.ref] = {}
        self.ops = None  # a lab.estimate.work.OpCounter, when the step's FLOPs and bytes are wanted too
        self.kernels: list = []  # set when a GPU kernel stood in for a library's fallback (lab.estimate.scan)
        self.segment(("setup",))

    # ------------------------------------------------------------------ bookkeeping
    def segment(self, label: tuple) -> None:
        # A cancelled step stops here, where a layer or phase begins (Python hooks and the step's own code), never
        # inside an op's dispatch: raised there, from within a checkpoint's saved-tensor hooks, torch aborts the
        # process. The event itself, not this thread's: autograd may run the backward's hooks on its own threads.
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(CANCELLED)
        if not self.segments or self.segments[-1] != label:
            self.segments.append(label)

    def _add(self, st, owner: int, role: str | None = None) -> int | None:
        key = id(st)
        if key in self._index:
            return self._index[key]
        raw = st.nbytes()
        if raw == 0:
            return None
        n = -(-raw // self.round_to) * self.round_to
        idx = len(self.storages)
        self.storages.append(Storage(n, self.phase, owner, role, self.module, raw))
        self._index[key] = idx
        self._refs[key] = weakref.ref(st, lambda _ref, key=key, idx=idx: self._free(key, idx))
        self._event(idx, +1)
        return idx

    def _free(self, key: int, idx: int) -> None:
        self._index.pop(key, None)
        self._refs.pop(key, None)
        self._event(idx, -1)

    def _event(self, idx: int, sign: int) -> None:
        self.events.append((idx, sign, len(self.segments) - 1))
        self.live += sign * self.storages[idx].nbytes
        self.peak = max(self.peak, self.live)

    def index_of(self, t: torch.Tensor) -> int | None:
        return self._index.get(id(t.untyped_storage()))

    def register(self, t: torch.Tensor | None, role: str, owner: int = NO_LAYER, pages_at: int = 0) -> None:
        """Count a tensor that exists before tracking starts (a weight, a quantization constant). `pages_at`: a
        paged optimizer's state, paged from that many bytes on (the role says whether this one is)."""
        if t is not None:
            idx = self._add(t.untyped_storage(), owner, role)
            if idx is not None and self.storages[idx].role is None:
                self.storages[idx].role = role
            if idx is not None:
                self.storages[idx].pages_at = pages_at

    def mark(self, t: torch.Tensor | None, role: str, owner: int | None = None) -> None:
        """Say what an already counted tensor became (a gradient, optimizer state, the KV cache)."""
        idx = None if t is None else self.index_of(t)
        if idx is not None:
            self.storages[idx].role = role
            if owner is not None:
                self.storages[idx].owner = owner

    # ------------------------------------------------------------------ dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is _DEVICE:
            # Two thirds of a fake step's dispatches: autograd asks every gradient for its device. Answered as
            # FakeTensorMode's own handler answers it (torch/_subclasses/fake_tensor.py: _device_handler) without
            # the ~50 us of its dispatch; a device allocates nothing to count.
            t = args[0]
            if isinstance(t, FakeTensor):
                return torch.device("meta") if t.fake_mode.in_kernel_invocation else t.fake_device
            return func(*args)
        kwargs = kwargs or {}
        override = OVERRIDES.get(func) if self.fake else None
        out = override(self, func, args, kwargs) if override else func(*args, **kwargs)
        self._record(args, kwargs, out)
        if self.ops is not None:
            self.ops.record(func, args, kwargs, out, self.phase, self.owner)
        return out

    def _record(self, args, kwargs, out) -> None:
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not outs:
            return
        if self.phase in ("forward", "recompute", "backward"):
            for t in outs:
                self._add(t.untyped_storage(), self.owner)
            return
        # Elsewhere (optimizer step, setup) a new tensor belongs to the layer of the tensor it was made
        # from; a foreach op's output i comes from element i of its first list argument.
        first_list = next((a for a in args if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)),
                          None)
        inputs = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        default = self._owner_of(inputs)
        aligned = first_list is not None and len(first_list) == len(outs)
        for i, t in enumerate(outs):
            self._add(t.untyped_storage(), self._owner_of([first_list[i]]) if aligned else default)

    def _owner_of(self, tensors) -> int:
        for t in tensors:
            idx = self.index_of(t)
            if idx is not None and self.storages[idx].owner != NO_LAYER:
                return self.storages[idx].owner
        return NO_LAYER


# Ops whose fake kernel cannot know what the device kernel allocates, or whose output size depends on
# the data: `override(tracker, func, args, kwargs)` runs instead of `func` on fake tensors. The tracker
# is paused while it runs; `with tracker:` inside the override counts what it allocates.
OVERRIDES: dict = {}
