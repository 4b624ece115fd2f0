"""How much memory a loaded model really takes: its true bytes, and what the process and GPU saw.

True bytes = every tensor the model keeps alive, each storage byte counted once:

- parameters and buffers (a tied lm_head / embedding shares one storage: counted once);
- bitsandbytes 4-bit state that lives *outside* the parameters: per-block `absmax`, the 16-entry
  `code` table (quant_map), and with double quantization the nested `state2.absmax`,
  `state2.code` (256 entries) and `offset`;
- LLM.int8() row scales `SCB` (one fp32 per output row). bitsandbytes keeps them on
  `weight.SCB` right after loading and moves them to `module.state.SCB` on the first forward;
  the int8 matrix `CB` is the parameter's own storage. Both places are looked at.

`model.get_memory_footprint()` counts only `parameters() + buffers()` by `numel * element_size`,
so it misses absmax, code tables and SCB: the gap between the two is what quantization constants
cost.

Note, CPU only: on CPUs with AVX512-BF16, bitsandbytes repacks a Linear4bit on its first forward
(absmax becomes bf16, nested absmax is dequantized into bf16). So measure right after loading
for the canonical layout; `measure_model` after a forward reports the repacked one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import psutil
import torch

# What each kind of tensor is, for tables and tooltips.
KINDS: dict[str, str] = {
    "parameter": "nn.Parameter data (for 4-bit: the packed uint8 pairs of 4-bit codes; for int8: the int8 matrix CB).",
    "buffer": "Registered buffers (e.g. rotary inv_freq).",
    "absmax": "4-bit: one scale per block of 64 weights (fp32; uint8 when double-quantized).",
    "quant_map": "4-bit: the 16-entry code table (NF4 or FP4 levels), one per layer.",
    "nested_absmax": "Double quant: fp32 scales of the quantized absmax, one per block of 256 absmax values.",
    "nested_quant_map": "Double quant: the 256-entry 8-bit dynamic code table used for absmax.",
    "nested_offset": "Double quant: the mean absmax subtracted before quantizing absmax (one fp32 scalar).",
    "int8_row_scales": "LLM.int8(): SCB, one fp32 absmax per output row of each int8 matrix.",
    "int8_other_state": "LLM.int8(): any other tensor bitsandbytes keeps in module.state (CBt, subB, idx...).",
}


@dataclass
class TensorEntry:
    name: str
    kind: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int  # numel * element_size of this view
    new_bytes: int  # bytes not already counted through another name (0 for a tied weight's second name)


@dataclass
class Footprint:
    """The true bytes of a model, with where they are and what was not double-counted."""

    total_bytes: int
    by_kind: dict[str, int]
    by_dtype: dict[str, int]
    shared_bytes: int  # bytes reached again through tied weights / aliases and counted once
    n_tensors: int
    hf_footprint_bytes: int  # model.get_memory_footprint(), for comparison
    entries: list[TensorEntry] = field(default_factory=list, repr=False)

    def to_json(self, entries: bool = False) -> dict:
        data = asdict(self)
        if not entries:
            data.pop("entries")
        return data


# --------------------------------------------------------------------------- enumerating tensors
def _quant_state_tensors(qs) -> Iterator[tuple[str, str, torch.Tensor]]:
    yield "absmax", "absmax", qs.absmax
    yield "quant_map", "quant_map", qs.code
    state2 = getattr(qs, "state2", None)
    if getattr(qs, "nested", False) and state2 is not None:
        yield "nested_absmax", "nested_absmax", state2.absmax
        yield "nested_quant_map", "nested_quant_map", state2.code
    # The offset outlives the nested state: the CPU repack drops state2 but keeps qs.offset.
    yield "nested_offset", "nested_offset", getattr(qs, "offset", None)


def iter_model_tensors(model: torch.nn.Module) -> Iterator[tuple[str, str, torch.Tensor]]:
    """(name, kind, tensor) for every tensor the model keeps alive, aliases included."""
    seen_states: set[int] = set()
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for name, p in module.named_parameters(recurse=False):
            yield prefix + name, "parameter", p
        for name, b in module.named_buffers(recurse=False):
            if b is not None:
                yield prefix + name, "buffer", b
        weight = getattr(module, "weight", None)
        # bitsandbytes 4-bit: the QuantState hangs off the weight (and the module, same object).
        for qs in (getattr(weight, "quant_state", None), getattr(module, "quant_state", None)):
            if qs is not None and id(qs) not in seen_states and hasattr(qs, "absmax"):
                seen_states.add(id(qs))
                for name, kind, t in _quant_state_tensors(qs):
                    if isinstance(t, torch.Tensor):
                        yield f"{prefix}weight.{name}", kind, t
        # bitsandbytes int8: SCB on the weight (after load) or on module.state (after a forward).
        if weight is not None and type(weight).__name__ == "Int8Params":
            for name in ("CB", "SCB"):
                t = getattr(weight, name, None)
                if isinstance(t, torch.Tensor):
                    yield f"{prefix}weight.{name}", "int8_row_scales" if name == "SCB" else "parameter", t
        state = getattr(module, "state", None)
        if state is not None and type(state).__name__ == "MatmulLtState":
            for name in ("CB", "SCB", "CBt", "SBt", "SB", "subB", "idx"):
                t = getattr(state, name, None)
                if isinstance(t, torch.Tensor):
                    kind = {"SCB": "int8_row_scales", "CB": "parameter"}.get(name, "int8_other_state")
                    yield f"{prefix}state.{name}", kind, t


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    """[start, end) of the bytes `t` covers inside its storage."""
    size = t.element_size()
    start = t.storage_offset() * size
    if t.numel() == 0:
        return start, start
    if t.is_contiguous():
        return start, start + t.numel() * size
    extent = sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True)) + 1
    return start, start + extent * size


def _add_interval(intervals: list[list[int]], lo: int, hi: int) -> int:
    """Add [lo, hi) to a storage's covered intervals; return how many bytes were new."""
    new = hi - lo
    for a, b in intervals:
        new -= max(0, min(hi, b) - max(lo, a))
    intervals.append([lo, hi])
    intervals.sort()
    merged: list[list[int]] = []
    for a, b in intervals:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    intervals[:] = merged
    return max(new, 0)


def measure_model(model: torch.nn.Module) -> Footprint:
    """True bytes of `model`, deduplicated by storage (untyped_storage data_ptr + byte ranges)."""
    covered: dict[tuple[str, int], list[list[int]]] = {}
    entries: list[TensorEntry] = []
    by_kind: dict[str, int] = {}
    by_dtype: dict[str, int] = {}
    shared = 0
    for name, kind, t in iter_model_tensors(model):
        t = t.detach()
        nbytes = t.numel() * t.element_size()
        if t.device.type == "meta":  # no memory behind it (offloaded / not materialized)
            new = 0
        else:
            storage = t.untyped_storage()
            key = (str(t.device), storage.data_ptr())
            lo, hi = _byte_span(t)
            new = _add_interval(covered.setdefault(key, []), lo, hi)
        shared += nbytes - new if new < nbytes else 0
        dtype = str(t.dtype).removeprefix("torch.")
        entries.append(TensorEntry(name, kind, dtype, tuple(t.shape), nbytes, new))
        if new:
            by_kind[kind] = by_kind.get(kind, 0) + new
            by_dtype[dtype] = by_dtype.get(dtype, 0) + new
    hf = model.get_memory_footprint() if hasattr(model, "get_memory_footprint") else sum(
        t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())
    )
    return Footprint(
        total_bytes=sum(by_kind.values()),
        by_kind=by_kind,
        by_dtype=by_dtype,
        shared_bytes=shared,
        n_tensors=len(entries),
        hf_footprint_bytes=int(hf),
        entries=entries,
    )


# --------------------------------------------------------------------------- process / device memory
MEMORY_LABELS: dict[str, str] = {
    "rss_bytes": "Process RSS: resident pages of this whole process (Python, libraries, every loaded model). "
    "Memory-mapped safetensors pages count only once touched.",
    "rss_anon_bytes": "The anonymous part of RSS (Linux RssAnon): tensors, copies, the allocator's free blocks.",
    "rss_file_bytes": "The file-backed part of RSS (Linux RssFile): pages of files mapped into the process, "
    "e.g. checkpoint weights read through the safetensors memory map.",
    "cuda_allocated_bytes": "torch.cuda.memory_allocated: bytes in live tensors on the GPU.",
    "cuda_max_allocated_bytes": "torch.cuda.max_memory_allocated: the peak of the above since the load started "
    "(includes temporaries such as the fp16 copy quantized from).",
    "cuda_reserved_bytes": (
        "torch.cuda.memory_reserved: what PyTorch's caching allocator holds (allocated + cached free "
        "blocks)."
    ),
    "cuda_used_bytes": "Device used memory from torch.cuda.mem_get_info (total - free): every process, "
    "the CUDA context and the allocator's cache included.",
}


def measure_storage(model) -> dict:
    """What a loaded model really holds (parameters, buffers and bitsandbytes' quantization state,
    each tensor once), summarised for comparison with `lab.estimate.weights.estimate_weights`."""
    fp = measure_model(model)
    params, buffers = fp.by_kind.get("parameter", 0), fp.by_kind.get("buffer", 0)
    return {
        "total_bytes": fp.total_bytes,
        "hf_footprint_bytes": fp.hf_footprint_bytes,
        "quant_constants_bytes": fp.total_bytes - params - buffers,
        "params_bytes": params,
        "buffers_bytes": buffers,
    }

@dataclass
class MemorySnapshot:
    rss_bytes: int
    rss_anon_bytes: int | None = None  # Linux only (/proc/self/status)
    rss_file_bytes: int | None = None
    cuda_allocated_bytes: int | None = None
    cuda_max_allocated_bytes: int | None = None
    cuda_reserved_bytes: int | None = None
    cuda_used_bytes: int | None = None

    @classmethod
    def take(cls, device: str = "cpu") -> MemorySnapshot:
        snap = cls(rss_bytes=psutil.Process().memory_info().rss, **_rss_parts())
        if device == "cuda" and torch.cuda.is_available():
            torch.cuda.synchronize()
            free, total = torch.cuda.mem_get_info()
            snap.cuda_allocated_bytes = torch.cuda.memory_allocated()
            snap.cuda_max_allocated_bytes = torch.cuda.max_memory_allocated()
            snap.cuda_reserved_bytes = torch.cuda.memory_reserved()
            snap.cuda_used_bytes = total - free
        return snap

    def minus(self, before: MemorySnapshot) -> dict[str, int | None]:
        """Growth from `before` to this snapshot (the CUDA peak is reported as is, not as a difference)."""
        out: dict[str, int | None] = {}
        for key, value in asdict(self).items():
            prev = getattr(before, key)
            if value is None or prev is None:
                out[key] = None
            elif key == "cuda_max_allocated_bytes":
                out[key] = value
            else:
                out[key] = value - prev
        return out


def _rss_parts() -> dict[str, int]:
    """RssAnon and RssFile from /proc/self/status (Linux); {} elsewhere. They tell a model's own tensors
    from checkpoint pages that are merely mapped and read."""
    keys = {"RssAnon": "rss_anon_bytes", "RssFile": "rss_file_bytes"}
    try:
        with open("/proc/self/status") as f:
            return {keys[k]: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f) if k in keys}
    except (OSError, ValueError):
        return {}


def reset_peak(device: str) -> None:
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

