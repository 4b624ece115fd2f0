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
  bfloat16 absmax after generating. CUDA never does this. `cpu_packed_bytes` models that state.
- `model.get_memory_footprint()` sums parameters and buffers only: it counts a packed 4-bit
  weight as ⌈n/2⌉ uint8 and misses absmax, code tables, SCB — `hf_footprint_bytes` reproduces it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from lab.models.architecture import Architecture
from lab.models.precision import get_precision, resolve_dtype
from lab.vocab import DTYPES

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
    dt, eb = unquantized.torch_name, unquantized.bytes
    quantized_paths = None
    if p.quantized and skip_modules is not None:
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

    out_features = {path: g.out_features for g in arch.linears for path in g.paths}
    q_params = q_data = q_const = q_hf = q_cpu = q_bias = 0
    weight_paths = {t.path.removesuffix(".weight") for t in arch.tensors if is_quantized(t)}
    buckets: dict[str, list[int]] = {}  # kind -> [params, bytes]
    buffers_bytes = 0
    for t in arch.tensors:
        if t.kind == "buffer":
            buffers_bytes += t.numel * _itemsize(t.dtype)
            continue
        if is_quantized(t):
            n = t.numel
            total = quantized_linear_bytes(n, out_features[t.path.removesuffix(".weight")], p.name)
            data = n if p.name == "int8" else (n + 1) // 2
            q_params += n
            q_data += data
            q_const += total - data
            q_hf += data
            if p.four_bit:
                q_cpu += quantized_linear_bytes(n, 0, p.name, cpu_packed=True)
            continue
        if t.kind == "linear_bias" and t.path.removesuffix(".bias") in weight_paths:
            q_bias += t.numel
        kind = {"linear_weight": "unquantized Linear weights", "linear_bias": "biases", "embedding": "embeddings",
                "norm": "norms", "other": "other parameters"}[t.kind]
        if t.kind == "linear_weight" and t.path.removesuffix(".weight") == arch.output_path:
            kind = "lm_head"
        b = buckets.setdefault(kind, [0, 0])
        b[0] += t.numel
        b[1] += t.numel * eb

    components: list[WeightComponent] = []
    if p.quantized:
        storage = "int8" if p.name == "int8" else f"{p.name.removesuffix('-dq')} (2 per byte)"
        components.append(WeightComponent("quantized Linear weights", q_params, storage, q_data, q_hf,
                                          "n bytes" if p.name == "int8" else "⌈n/2⌉ bytes"))
        const_formula = {
            "int8": "4 B × out_features (fp32 SCB per row)",
            "nf4": "4 B × ⌈n/64⌉ (fp32 absmax) + 64 B code table per layer",
            "fp4": "4 B × ⌈n/64⌉ (fp32 absmax) + 64 B code table per layer",
            "nf4-dq": "1 B × ⌈n/64⌉ (uint8 absmax) + 4 B × ⌈n/64/256⌉ + 1,092 B tables/offset per layer",
        }[p.name]
        components.append(WeightComponent("quantization constants", 0, "fp32/uint8", q_const, 0, const_formula))
    order = ["unquantized Linear weights", "biases", "embeddings", "lm_head", "norms", "other parameters"]
    for kind in order:
        if kind in buckets:
            n, nbytes = buckets[kind]
            components.append(WeightComponent(kind, n, unquantized.name, nbytes, nbytes, f"n × {eb} B"))
    if buffers_bytes:
        components.append(WeightComponent("buffers (rotary tables)", 0, "fp32", buffers_bytes, buffers_bytes,
                                          "non-trainable tensors, kept in fp32"))
    weights_bytes = sum(c.bytes for c in components)
    hf_bytes = sum(c.hf_bytes for c in components)
    unq_bytes = weights_bytes - q_data - q_const
    return WeightEstimate(
        model=arch.name,
        precision=p.name,
        dtype=dt,
        params_total=arch.params_total,
        quantized_params=q_params,
        unquantized_params=arch.params_total - q_params,
        weights_bytes=weights_bytes,
        hf_footprint_bytes=hf_bytes,
        quant_constants_bytes=q_const,
        buffers_bytes=buffers_bytes,
        packed_params=arch.params_total - q_params + (q_data if p.four_bit else q_params),
        # ...and Linear4bit.forward casts the biases of quantized layers to the compute dtype (fp32 on CPU)
        cpu_packed_bytes=(unq_bytes + q_cpu + q_bias * (4 - eb)) if p.four_bit else None,
        components=tuple(components),
    )


def _itemsize(torch_name: str) -> int:
    import torch

    return getattr(torch, torch_name).itemsize
