"""Count the work of every op the simulated step runs: FLOPs, bytes moved, and kernels launched.

`lab.estimate.tracker.LiveBytes` sees every aten op of the simulated forward, backward (recomputation
under checkpointing included) and optimizer step; it hands each one to `OpCounter.record`. The FLOPs of
matmuls and attention come from torch's own table (`torch.utils.flop_counter.flop_registry`, what
`FlopCounterMode` uses, which works on fake tensors); the bytes an op moves are what it reads plus what
it writes (a roofline's memory traffic); view ops move nothing and launch nothing.

Ops are grouped by identical (phase, layer, kind, FLOPs, bytes, dtype) so a 70B step is a few hundred
rows; `lab.estimate.speed` turns them into seconds on a GPU (or this CPU) with a roofline per op.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

from lab.estimate.fake_quant import GEMM_4BIT_FUSED_MAX_ROWS, Device

NO_LAYER = -1


@dataclass(frozen=True)
class Work:
    """Identical ops of the step, `count` times (scaled to the model's full depth)."""

    phase: str  # forward | recompute (checkpointing's) | backward | optimizer; generation: prefill | decode
    # matmul | attention | dequant | other | view (moves nothing, dispatched all the same) | checkpoint (a detach
    # of torch.utils.checkpoint's saved-tensor hooks: 2 per saved tensor that needs a gradient) | module (a module's
    # forward called: its Python between the ops, which a CPU pays and a GPU's queued kernels hide)
    kind: str
    flops: int
    bytes: int
    half: bool  # 16-bit operands (tensor-core peak) rather than fp32
    count: float
    # what a probe of this machine times the op by (lab.estimate.probe): a matmul's (rows, k, n, layout of a,
    # layout of b) with "t" for a transposed operand, a dequantization's (elements,); () for the rest
    shape: tuple = ()


def _shape_flops(func, args, kwargs, out) -> int | None:
    fn = flop_registry.get(func._overloadpacket) if hasattr(func, "_overloadpacket") else None
    if fn is None:
        fn = flop_registry.get(func)
    if fn is None:
        return None
    return int(fn(*args, **kwargs, out_val=out))


def _attention_flops(func, args, kwargs) -> int | None:
    """CPU's fused SDPA (what fake tensors take, and this machine's real step) counted like the CUDA
    flash kernel (torch.utils.flop_counter.sdpa_flop_count); a causal mask lets the kernel skip half."""
    name = str(func)
    causal = bool(kwargs.get("is_causal", args[4] if "backward" not in name and len(args) > 4 else False))
    if name.startswith("aten._scaled_dot_product_flash_attention_for_cpu_backward"):
        g, q, k, v = args[0], args[1], args[2], args[3]
        causal = bool(kwargs.get("is_causal", args[7] if len(args) > 7 else False))
        n = sdpa_backward_flop_count(g.shape, q.shape, k.shape, v.shape)
    elif name.startswith("aten._scaled_dot_product_flash_attention_for_cpu"):
        q, k, v = args[0], args[1], args[2]
        causal = bool(kwargs.get("is_causal", args[4] if len(args) > 4 else False))
        n = sdpa_flop_count(q.shape, k.shape, v.shape)
    else:
        return None
    return n // 2 if causal and q.shape[-2] == k.shape[-2] else n


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _nbytes(t: torch.Tensor) -> int:
    try:
        return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):
        return t.numel() * t.element_size()


FREE_OPS = {"aten.lift_fresh", "aten._local_scalar_dense", "aten.set_",
            "aten.empty", "aten.empty_strided", "aten.empty_like", "aten.new_empty", "aten.new_empty_strided",
            "aten.is_same_size", "aten.sym_size", "aten.sym_stride", "aten.sym_numel",
            "aten._has_compatible_shallow_copy_type"}
# ops that move nothing but are dispatched like any other: a CPU pays each one, a GPU hides them under its kernels
VIEW_OPS = {"aten.detach", "aten.alias",
            "aten._unsafe_view"}  # a view the schema does not flag (reshape's output after its copy)


_NAMES: dict = {}  # op -> (its name, or None for an op not counted; a view?): decided once per op (str() is slow)


def _counted_name(func) -> tuple[str | None, bool]:
    if func not in _NAMES:
        name = str(func.overloadpacket) if hasattr(func, "overloadpacket") else str(func)
        free = name in FREE_OPS or not name.startswith(("aten.", "bitsandbytes."))
        _NAMES[func] = (None if free else name, getattr(func, "is_view", False) or name in VIEW_OPS)
    return _NAMES[func]


class OpCounter:
    """What `LiveBytes` hands over: each op's FLOPs, bytes and kind, grouped, per phase and layer."""

    def __init__(self, checkpointing: bool = False) -> None:
        self.checkpointing = checkpointing  # a detach in the backward is then checkpointing's hooks' (most are)
        self.rows: Counter = Counter()  # (phase, owner, kind, flops, bytes, half, shape) -> count
        self.stage: str | None = None  # generation: "prefill" | "decode", filed as the phase

    def record(self, func, args, kwargs, out, phase: str, owner: int) -> None:
        if phase not in ("forward", "recompute", "backward", "optimizer"):
            return
        name, view = _counted_name(func)
        if name is None:
            return
        if name == "bitsandbytes.gemm_4bit" and not self.fused_4bit(args):
            return  # dequantized then F.linear: the inner ops were counted
        phase = self._filed(phase)
        if view:
            # checkpointing's hooks detach each saved tensor that needs a gradient twice, in the backward (the
            # backward makes ~17 detaches a layer of its own, priced so too: 10 µs more a layer on this CPU)
            ckpt = self.checkpointing and name == "aten.detach" and phase in ("backward", "recompute")
            kind = "checkpoint" if ckpt else "view"
            self.rows[(phase, owner, kind, 0, 0, False, ())] += 1
            return
        ins, outs = _tensors((args, kwargs)), _tensors(out)
        moved = sum(_nbytes(t) for t in ins) + sum(_nbytes(t) for t in outs)
        if name == "aten.embedding":  # a gather: reads the rows it looks up (as many bytes as it writes), not the table
            moved = _nbytes(ins[1]) + 2 * sum(_nbytes(t) for t in outs)
        flops, kind = self._flops(func, name, args, kwargs, out, ins)
        half = any(t.dtype in (torch.bfloat16, torch.float16) for t in ins[:2])
        self.rows[(phase, owner, kind, flops, moved, half, _shape(name, kind, ins, outs))] += 1

    def record_module(self, phase: str, owner: int) -> None:
        """A module's forward is called (in the forward, or again in checkpointing's recomputation)."""
        if phase in ("forward", "backward"):
            self.rows[(self._filed(phase), owner, "module", 0, 0, False, ())] += 1

    def _filed(self, phase: str) -> str:
        """The phase an op or module call is filed under: the engine runs backward with grad off, so one with grad
        on is checkpointing's rerun forward; generation files everything under its stage (prefill | decode)."""
        if phase == "backward" and torch.is_grad_enabled():
            phase = "recompute"
        return self.stage or phase

    def _flops(self, func, name, args, kwargs, out, ins) -> tuple[int, str]:
        if "attention" in name:
            n = _attention_flops(func, args, kwargs)
            if n is None:
                n = _shape_flops(func, args, kwargs, out) or 0
            return n, "attention"
        if name == "bitsandbytes.gemm_4bit":  # the fused 4-bit GEMV/GEMM: reads packed weights
            a, b = ins[0], ins[1]
            rows, k = a.numel() // a.shape[-1], a.shape[-1]
            return 2 * rows * k * (b.numel() * 2 // k), "matmul"
        if name.startswith("bitsandbytes.") and "dequantize" in name:
            return 0, "dequant"
        if name == "aten.addmm_":  # in-place addmm (the chunked loss's backward): torch's FLOP table lacks it
            m1, m2 = ins[1], ins[2]
            return 2 * m1.shape[0] * m1.shape[1] * m2.shape[1], "matmul"
        if name == "aten.linear":  # reaches dispatch whole inside bitsandbytes' dequantizing path
            a, w = ins[0], ins[1]
            return 2 * (a.numel() // a.shape[-1]) * w.numel(), "matmul"
        n = _shape_flops(func, args, kwargs, out)
        if n is not None:
            return n, "matmul"
        return 0, "other"

    @staticmethod
    def fused_4bit(args) -> bool:
        a = args[0]
        return Device.current == "cuda" and a.numel() // a.shape[-1] <= GEMM_4BIT_FUSED_MAX_ROWS

    def scaled(self, full: int, layers: int, middle: int, optimizer_scale: float) -> tuple[Work, ...]:
        """The rows at the model's full depth: the middle layer's ops once per layer it stands for, the
        optimizer's once per trainable byte of the full model (`optimizer_scale`)."""
        reps = full - (layers - 1) if full > layers else 1
        out: Counter = Counter()
        for (phase, owner, kind, flops, moved, half, shape), n in self.rows.items():
            k = n * (reps if owner == middle and full > layers else 1)
            if phase == "optimizer":
                k = n * optimizer_scale
            out[(phase, kind, flops, moved, half, shape)] += k
        return tuple(Work(p, kd, f, b, h, c, sh) for (p, kd, f, b, h, sh), c in sorted(out.items()))


def _layout(t: torch.Tensor) -> str:
    return "t" if t.dim() == 2 and t.stride(-1) != 1 else "n"


def _shape(name: str, kind: str, ins: list, outs: list) -> tuple:
    """The key a probe times this op by: a 2-D matmul's rows, k, n and operand layouts (a CPU's GEMM speed
    depends on all five: 32 rows run at half the rate of 256, a transposed operand changes the kernel); a
    dequantization's output elements. () where the roofline's peak figures serve."""
    if kind == "dequant" and outs:
        return (outs[0].numel(),)
    if kind != "matmul" or any(t.dtype != torch.float32 for t in ins[:2]):
        return ()
    if name in ("aten.mm", "aten.addmm", "aten.addmm_"):
        a, b = (ins[0], ins[1]) if name == "aten.mm" else (ins[1], ins[2])
        return (a.shape[0], a.shape[1], b.shape[1], _layout(a), _layout(b))
    if name == "aten.linear":  # x @ w.T with w stored (n, k): b transposed
        a, w = ins[0], ins[1]
        return (a.numel() // a.shape[-1], a.shape[-1], w.shape[0], "n", "t")
    return ()
