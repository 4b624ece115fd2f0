"""Weights: how many bytes a model takes at a precision, as bitsandbytes really stores them.

Verified against bitsandbytes 0.50 on this machine (see tests/test_memory.py):
- Quantized: every `nn.Linear` transformers' bnb quantizer converts (all but lm_head / tied /
  `llm_int8_skip_modules`). Biases, embeddings, norms and lm_head stay in the load dtype.
- int8 (Linear8bitLt): int8 weight (out × in bytes) + `SCB`, one fp32 scale per output row.
- 4-bit (Linear4bit, Params4bit): two weights per uint8 (⌈n/2⌉ bytes) + a quant_state with
  absmax: one fp32 per 64-weight block, and its own copy of the 16-entry fp32 code table.
- 4-bit + double quant: absmax stored as uint8 (one byte per block) + `state2`: an fp32 absmax
  per 256 blocks, its own 256-entry fp32 code table, and an fp32 offset (the absmax mean).
- CPU only: on a CPU with AVX512-BF16, the first inference forward (no grad, eval mode) of a
  Linear4bit repacks its weight for the fused CPU kernel: nested absmax are dequantized and kept
  as **bf16** (2 bytes per block), `state2` is dropped. That is why a 4-bit model on CPU shows a
  bfloat16 absmax after generating. CUDA never does this. `cpu_packed_bytes` models that state. A CPU
  without AVX512-BF16 keeps the loaded layout; there the forward only casts quantized layers' biases to the
  fp32 compute dtype (`cpu_forward_bytes`).
- `model.get_memory_footprint()` sums parameters and buffers only: it counts a packed 4-bit
  weight as ⌈n/2⌉ uint8 and misses absmax, code tables, SCB — `hf_footprint_bytes` reproduces it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from lab.errors import LabError
from lab.models.architecture import Architecture
from lab.models.precision import get_precision, resolve_dtype
from lab.vocab import DTYPES, dtype_by_torch_name

BLOCKSIZE_4BIT = 64  # bnb 4-bit blocksize in transformers (bnb_4bit_blocksize default)
NESTED_BLOCKSIZE = 256  # double quantization: blocks of absmax per fp32 constant
CODE_4BIT_BYTES = 16 * 4  # the NF4/FP4 code table, one fp32 tensor per layer
NESTED_CODE_BYTES = 256 * 4  # the dynamic 8-bit map of state2, copied per layer
OFFSET_BYTES = 4  # fp32 mean of the absmax, per layer

# --------------------------------------------------------------------------- weights
def quantized_linear_bytes(numel: int, out_features: int, precision: str, cpu_packed: bool = False) -> int:
    """True bytes bitsandbytes holds for one quantized Linear weight of `numel` elements."""
    if precision == "int8":
        return numel + 4 * out_features  # int8 weight + fp32 SCB per output row
    data = (numel + 1) // 2
    blocks = math.ceil(numel / BLOCKSIZE_4BIT)
    if cpu_packed:  # repacked for the CPU kernel: bf16 absmax, nested state dropped, offset kept
        return data + 2 * blocks + CODE_4BIT_BYTES + (OFFSET_BYTES if precision == "nf4-dq" else 0)
    if precision == "nf4-dq":
        nested = math.ceil(blocks / NESTED_BLOCKSIZE)
        return data + blocks + 4 * nested + NESTED_CODE_BYTES + OFFSET_BYTES + CODE_4BIT_BYTES
    return data + 4 * blocks + CODE_4BIT_BYTES


@dataclass(frozen=True)
class WeightComponent:
    name: str  # "quantized Linear weights", "quantization constants", "embeddings", ...
    params: int
    storage: str  # "nf4 (2 per byte)", "bf16", ...
    bytes: int  # true bytes
    hf_bytes: int  # what get_memory_footprint counts for it
    formula: str


@dataclass(frozen=True)
class WeightEstimate:
    model: str
    precision: str
    dtype: str  # dtype of the unquantized tensors
    params_total: int
    quantized_params: int
    unquantized_params: int
    weights_bytes: int  # true bytes incl. quantization constants and buffers
    hf_footprint_bytes: int  # model.get_memory_footprint()
    quant_constants_bytes: int
    buffers_bytes: int
    packed_params: int  # sum(p.numel()) on the loaded model (4-bit counts half)
    cpu_packed_bytes: int | None  # 4-bit on an AVX512-BF16 CPU after the first inference forward (fp32 compute)
    components: tuple[WeightComponent, ...]
    # 4-bit on a CPU without AVX512-BF16 after the first forward: no repack, only the biases cast to fp32
    cpu_forward_bytes: int | None = None

    def after_cpu_forward_bytes(self, repacks: bool) -> int | None:
        """Bytes of a 4-bit model on a CPU after its first inference forward; `repacks`: the CPU has
        AVX512-BF16, so bitsandbytes repacks the layers for its fused kernel (`lab.models.precision.cpu_repacks_4bit`).
        None for other precisions (nothing changes)."""
        return self.cpu_packed_bytes if repacks else self.cpu_forward_bytes

    @property
    def naive_bytes(self) -> int:
        """The tutorial figure: every parameter at the precision's bits."""
        return int(self.params_total * get_precision(self.precision).bits / 8)

    def to_json(self) -> dict:
        d = asdict(self)
        d["components"] = [asdict(c) for c in self.components]
        d["naive_bytes"] = self.naive_bytes
        return d


def estimate_weights(
    arch: Architecture,
    precision: str,
    dtype: str = "auto",
    skip_modules: list[str] | None = None,
) -> WeightEstimate:
    """Bytes of `arch` loaded at `precision`. `dtype` is the dtype choice for what stays unquantized
    (see `lab.vocab.DTYPE_CHOICES`; 'auto' = the config's torch_dtype); for fp32/bf16/fp16 precisions
    every weight is in that precision. `skip_modules` = BitsAndBytesConfig.llm_int8_skip_modules
    (replaces transformers' default skip list, as transformers does)."""
    key = ("weights", precision, dtype, tuple(skip_modules) if skip_modules is not None else None)
    return arch.remember(key, lambda: _estimate_weights(arch, precision, dtype, skip_modules))


def _estimate_weights(arch: Architecture, precision: str, dtype: str, skip_modules: list[str] | None) -> WeightEstimate:
    p = get_precision(precision)
    unquantized = resolve_dtype(dtype, config_dtype=arch.config_dtype) if p.quantized else DTYPES[p.name]
    eb = unquantized.bytes
    tally = _tally(arch, p, eb, _quantized_predicate(arch, p, skip_modules))
    components = _components(p, tally, unquantized.name, eb)
    weights_bytes = sum(c.bytes for c in components)
    unq_bytes = weights_bytes - tally.q_data - tally.q_const
    return WeightEstimate(
        model=arch.name,
        precision=p.name,
        dtype=unquantized.torch_name,
        params_total=arch.params_total,
        quantized_params=tally.q_params,
        unquantized_params=arch.params_total - tally.q_params,
        weights_bytes=weights_bytes,
        hf_footprint_bytes=sum(c.hf_bytes for c in components),
        quant_constants_bytes=tally.q_const,
        buffers_bytes=tally.buffers_bytes,
        packed_params=arch.params_total - tally.q_params + (tally.q_data if p.four_bit else tally.q_params),
        # ...and Linear4bit.forward casts the biases of quantized layers to the compute dtype (fp32 on CPU)
        cpu_packed_bytes=(unq_bytes + tally.q_cpu + tally.q_bias * (4 - eb)) if p.four_bit else None,
        components=tuple(components),
        cpu_forward_bytes=(weights_bytes + tally.q_bias * (4 - eb)) if p.four_bit else None,
    )


def _quantized_predicate(arch: Architecture, p, skip_modules: list[str] | None):
    """Which tensors bitsandbytes quantizes: Linear weights outside the skip list (transformers' default list
    unless `skip_modules` replaces it)."""
    quantized_paths = None
    if p.quantized and skip_modules is not None:
        # transformers: 2.6 s to import; imported where used, not with this module
        from transformers.quantizers.quantizers_utils import should_convert_module

        quantized_paths = {
            path for g in arch.linears for path in g.paths if should_convert_module(path, list(skip_modules))
        }

    def is_quantized(t) -> bool:
        if not p.quantized or t.kind != "linear_weight":
            return False
        if quantized_paths is not None:
            return t.path.removesuffix(".weight") in quantized_paths
        return t.quantized

    return is_quantized


_BUCKETS = {"linear_weight": "unquantized Linear weights", "linear_bias": "biases", "embedding": "embeddings",
            "norm": "norms", "other": "other parameters",
            # fused 3-D experts (transformers 5): bitsandbytes replaces nn.Linear only, so they stay unquantized
            "expert": "experts (fused, not quantized)"}
_BUCKET_ORDER = ["unquantized Linear weights", "experts (fused, not quantized)", "biases", "embeddings", "lm_head",
                 "norms", "other parameters"]


@dataclass
class _Tally:
    """Parameters and bytes counted tensor by tensor (q_*: the quantized Linear weights)."""

    q_params: int = 0  # parameters stored quantized
    q_data: int = 0  # their packed bytes (1 per int8 parameter, 2 4-bit parameters per byte)
    q_const: int = 0  # quantization constants (absmax, SCB, code tables)
    q_cpu: int = 0  # 4-bit bytes as bitsandbytes' CPU kernels repack them
    q_bias: int = 0  # biases of quantized layers (cast to the compute dtype in forward)
    buffers_bytes: int = 0
    buckets: dict[str, list[int]] = field(default_factory=dict)  # kind -> [params, bytes], unquantized


def _tally(arch: Architecture, p, eb: int, is_quantized) -> _Tally:
    out_features = {path: g.out_features for g in arch.linears for path in g.paths}
    weight_paths = {t.path.removesuffix(".weight") for t in arch.tensors if is_quantized(t)}
    s = _Tally()
    for t in arch.tensors:
        if t.kind == "buffer":
            s.buffers_bytes += t.numel * _itemsize(t.dtype)
        elif is_quantized(t):
            n = t.numel
            total = quantized_linear_bytes(n, out_features[t.path.removesuffix(".weight")], p.name)
            data = n if p.name == "int8" else (n + 1) // 2
            s.q_params += n
            s.q_data += data
            s.q_const += total - data
            if p.four_bit:
                s.q_cpu += quantized_linear_bytes(n, 0, p.name, cpu_packed=True)
        else:
            if t.kind == "linear_bias" and t.path.removesuffix(".bias") in weight_paths:
                s.q_bias += t.numel
            is_head = t.kind == "linear_weight" and t.path.removesuffix(".weight") == arch.output_path
            b = s.buckets.setdefault("lm_head" if is_head else _BUCKETS[t.kind], [0, 0])
            b[0] += t.numel
            b[1] += t.numel * eb
    return s


_CONSTANTS_FORMULA = {
    "int8": "4 B × out_features (fp32 SCB per row)",
    "nf4": "4 B × ⌈n/64⌉ (fp32 absmax) + 64 B code table per layer",
    "fp4": "4 B × ⌈n/64⌉ (fp32 absmax) + 64 B code table per layer",
    "nf4-dq": "1 B × ⌈n/64⌉ (uint8 absmax) + 4 B × ⌈n/64/256⌉ + 1,092 B tables/offset per layer",
}


def _components(p, s: _Tally, unquantized_name: str, eb: int) -> list[WeightComponent]:
    components: list[WeightComponent] = []
    if p.quantized:
        storage = "int8" if p.name == "int8" else f"{p.name.removesuffix('-dq')} (2 per byte)"
        # hf footprint counts the packed data only (get_memory_footprint leaves the constants out)
        components.append(WeightComponent("quantized Linear weights", s.q_params, storage, s.q_data, s.q_data,
                                          "n bytes" if p.name == "int8" else "⌈n/2⌉ bytes"))
        components.append(WeightComponent("quantization constants", 0, "fp32/uint8", s.q_const, 0,
                                          _CONSTANTS_FORMULA[p.name]))
    for kind in _BUCKET_ORDER:
        if kind in s.buckets:
            n, nbytes = s.buckets[kind]
            components.append(WeightComponent(kind, n, unquantized_name, nbytes, nbytes, f"n × {eb} B"))
    if s.buffers_bytes:
        components.append(WeightComponent("buffers (rotary tables)", 0, "fp32", s.buffers_bytes, s.buffers_bytes,
                                          "non-trainable tensors, kept in fp32"))
    return components


def _itemsize(torch_name: str) -> int:
    """Bytes per value of a buffer's dtype: the float dtypes from the vocabulary (rotary tables are float32), any
    other from torch."""
    try:
        return dtype_by_torch_name(torch_name).bytes
    except LabError:  # not a dtype the lab offers (an int64 or bool buffer)
        import torch  # why: heavy (~2.5 s); only a buffer of a dtype the vocabulary does not list asks it

        return getattr(torch, torch_name).itemsize
