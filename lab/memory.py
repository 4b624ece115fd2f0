"""How many bytes a model takes: weights as bitsandbytes really stores them, training memory,
KV cache, GPU fit, and the inverse question (the largest batch / sequence / rank that fits).

Weights (verified against bitsandbytes 0.50 on this machine, see tests/test_memory.py):
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
from dataclasses import asdict, dataclass, field

from lab.architecture import Architecture
from lab.errors import LabError
from lab.lora_params import LoraEstimate, estimate_lora, packed_param_count
from lab.precision import get_precision

BLOCKSIZE_4BIT = 64  # bnb 4-bit blocksize in transformers (bnb_4bit_blocksize default)
NESTED_BLOCKSIZE = 256  # double quantization: blocks of absmax per fp32 constant
CODE_4BIT_BYTES = 16 * 4  # the NF4/FP4 code table, one fp32 tensor per layer
NESTED_CODE_BYTES = 256 * 4  # the dynamic 8-bit map of state2, copied per layer
OFFSET_BYTES = 4  # fp32 mean of the absmax, per layer
CUDA_CONTEXT_BYTES = 500 * 10**6  # CUDA context + cuBLAS workspace: 0.3–0.8 GB in practice

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8, "int64": 8, "int32": 4, "uint8": 1, "int8": 1}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "float32": "float32",
                 "bfloat16": "bfloat16", "float16": "float16"}
SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def dtype_name(dtype: str | None, arch: Architecture) -> str:
    """'auto'/None -> the config's torch_dtype; 'bf16' -> 'bfloat16'."""
    if dtype in (None, "auto", ""):
        return DTYPE_ALIASES.get(arch.config_dtype, "float32")
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_ALIASES:
        raise LabError(f"Unknown dtype {dtype!r}.", "Choose auto, fp32, bf16 or fp16.")
    return DTYPE_ALIASES[name]


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
    dtype: str | None = None,
    skip_modules: list[str] | None = None,
) -> WeightEstimate:
    """Bytes of `arch` loaded at `precision`. `dtype` is the dtype of what stays unquantized
    (fp32/bf16/fp16; None/'auto' = the config's torch_dtype); for fp32/bf16/fp16 precisions
    every weight is in that precision. `skip_modules` = BitsAndBytesConfig.llm_int8_skip_modules
    (replaces transformers' default skip list, as transformers does)."""
    key = ("weights", precision, dtype, tuple(skip_modules) if skip_modules is not None else None)
    return arch.remember(key, lambda: _estimate_weights(arch, precision, dtype, skip_modules))


def _estimate_weights(arch: Architecture, precision: str, dtype: str | None, skip_modules: list[str] | None) -> WeightEstimate:
    p = get_precision(precision)
    if p.quantized:
        dt = dtype_name(dtype, arch)
    else:
        dt = DTYPE_ALIASES[p.name]
    eb = DTYPE_BYTES[dt]
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
            buffers_bytes += t.numel * DTYPE_BYTES.get(t.dtype, 4)
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
            components.append(WeightComponent(kind, n, SHORT[dt], nbytes, nbytes, f"n × {eb} B"))
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


def measure_storage(model) -> dict:
    """What a loaded model really holds (parameters, buffers and bitsandbytes' quantization state,
    each tensor once), summarised for comparison with `estimate_weights`. The counting itself is
    `lab.measure.measure_model`, shared with the loading lab."""
    from lab.measure import measure_model

    fp = measure_model(model)
    params, buffers = fp.by_kind.get("parameter", 0), fp.by_kind.get("buffer", 0)
    return {
        "total_bytes": fp.total_bytes,
        "hf_footprint_bytes": fp.hf_footprint_bytes,
        "quant_constants_bytes": fp.total_bytes - params - buffers,
        "params_bytes": params,
        "buffers_bytes": buffers,
    }


# --------------------------------------------------------------------------- training
METHODS = {
    "lora": "LoRA: frozen base in 16-bit, small trainable adapters.",
    "qlora": "QLoRA: frozen base quantized to 4-bit (NF4), adapters in fp32, paged 8-bit or 32-bit AdamW.",
    "full": "Full fine-tuning: every weight trains, with its gradient and optimizer states.",
}
OPTIMIZERS = {
    "adamw_torch": "AdamW, 32-bit: two fp32-or-param-dtype states per trainable parameter (8 B for fp32).",
    "adamw_8bit": "bitsandbytes 8-bit AdamW: two uint8 states + an fp32 absmax per 256 values (~2.03 B).",
    "paged_adamw_32bit": "32-bit AdamW in CUDA unified memory: same bytes, but pages spill to CPU RAM under pressure.",
    "paged_adamw_8bit": "8-bit AdamW in unified memory: the QLoRA paper's choice against memory spikes.",
    "sgd": "Plain SGD without momentum: no optimizer state.",
}


@dataclass(frozen=True)
class TrainingSettings:
    """What decides training memory. Defaults are the QLoRA paper's/TRL's usual choices."""

    method: str = "qlora"
    precision: str | None = None  # base weights; None: nf4-dq for qlora, dtype for lora/full
    dtype: str | None = None  # compute/load dtype; None = the config's torch_dtype
    batch_size: int = 1
    seq_len: int = 512
    grad_checkpointing: bool = True  # recompute activations: only layer inputs are stored
    optimizer: str = "paged_adamw_8bit"
    r: int = 16
    alpha: float | None = None
    targets: tuple[str, ...] | str = "all-linear"
    use_dora: bool = False
    upcast_for_kbit: bool = True  # prepare_model_for_kbit_training casts non-quantized params to fp32


@dataclass(frozen=True)
class TrainingEstimate:
    settings: TrainingSettings
    components: dict[str, int]  # bytes per term
    formulas: dict[str, str]  # the formula behind each term (LaTeX-free plain text)
    trainable_params: int
    weights: WeightEstimate
    lora: LoraEstimate | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def total_bytes(self) -> int:
        return sum(self.components.values())

    def to_json(self) -> dict:
        return {
            "settings": asdict(self.settings),
            "components": dict(self.components),
            "formulas": dict(self.formulas),
            "total_bytes": self.total_bytes,
            "trainable_params": self.trainable_params,
            "weights_precision": self.weights.precision,
            "notes": list(self.notes),
        }


def _optimizer_bytes_per_param(optimizer: str, param_bytes: int) -> float:
    if optimizer in ("adamw_torch", "paged_adamw_32bit"):
        return 2 * param_bytes  # torch keeps exp_avg and exp_avg_sq in the parameter's dtype
    if optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        return 2 * (1 + 4 / 256)
    if optimizer == "sgd":
        return 0.0
    raise LabError(f"Unknown optimizer {optimizer!r}.", f"Choose one of: {', '.join(OPTIMIZERS)}.")


def activation_bytes_per_token_layer(arch: Architecture, act_bytes: int) -> int:
    """Tensors one decoder layer keeps for backward per token (SDPA attention, no s² term):
    2 norm in/outs (4h), q/k/v + attention output (2·q + 2·kv), MLP gate/up/act/product (4·i)."""
    h = arch.hidden_size
    q_dim = arch.num_attention_heads * arch.head_dim
    kv_dim = arch.num_kv_heads * arch.head_dim
    i = arch.intermediate_size or 4 * h
    return act_bytes * (4 * h + 2 * q_dim + 2 * kv_dim + 4 * i)


def estimate_training(arch: Architecture, settings: TrainingSettings | None = None, **overrides) -> TrainingEstimate:
    """Peak training memory, term by term. Keyword overrides update `settings`."""
    from dataclasses import replace

    s = replace(settings or TrainingSettings(), **overrides)
    if s.method not in METHODS:
        raise LabError(f"Unknown training method {s.method!r}.", f"Choose one of: {', '.join(METHODS)}.")
    for label, v in (("batch size", s.batch_size), ("sequence length", s.seq_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise LabError(f"The {label} must be a positive integer, got {v!r}.")
    compute = dtype_name(s.dtype, arch)
    if compute == "float32" and s.method != "full" and s.dtype in (None, "auto"):
        compute = "float32"
    cb = DTYPE_BYTES[compute]
    notes: list[str] = []
    if s.method == "qlora":
        precision = s.precision or "nf4-dq"
        if not get_precision(precision).quantized:
            raise LabError(f"QLoRA needs a quantized precision, got {precision!r}.", "Use nf4, nf4-dq, fp4 or int8.")
        unq = "fp32" if s.upcast_for_kbit else compute
        weights = estimate_weights(arch, precision, unq)
        if s.upcast_for_kbit:
            notes.append("prepare_model_for_kbit_training casts embeddings, norms and lm_head to fp32.")
    else:
        precision = s.precision or SHORT[compute]
        if get_precision(precision).quantized:
            raise LabError(f"{s.method} trains an unquantized base; precision {precision!r} is quantized.",
                           "Use method 'qlora' for a quantized base.")
        weights = estimate_weights(arch, precision)

    formulas: dict[str, str] = {}
    comps: dict[str, int] = {"weights": weights.weights_bytes}
    formulas["weights"] = f"base model at {weights.precision} (see the weights table): {weights.weights_bytes:,} B"
    lora = None
    if s.method == "full":
        trainable = arch.params_total
        pbytes = DTYPE_BYTES[DTYPE_ALIASES[weights.precision]]
        comps["adapter"] = 0
        formulas["adapter"] = "none: the weights themselves train"
        comps["gradients"] = trainable * pbytes
        formulas["gradients"] = f"{trainable:,} params × {pbytes} B (same dtype as the weights)"
    else:
        lora = estimate_lora(arch, s.r, s.alpha, s.targets, use_dora=s.use_dora)
        trainable = lora.trainable_params
        pbytes = 4  # peft autocasts adapters to fp32 (autocast_adapter_dtype=True)
        comps["adapter"] = trainable * pbytes
        formulas["adapter"] = f"{trainable:,} LoRA params × 4 B (peft keeps adapters in fp32)"
        comps["gradients"] = trainable * pbytes
        formulas["gradients"] = f"{trainable:,} × 4 B (only adapters get gradients)"
    per = _optimizer_bytes_per_param(s.optimizer, pbytes)
    comps["optimizer"] = int(trainable * per)
    formulas["optimizer"] = f"{trainable:,} × {per:g} B ({s.optimizer})"

    tokens = s.batch_size * s.seq_len
    per_layer = activation_bytes_per_token_layer(arch, cb)
    L = arch.num_layers
    if s.grad_checkpointing:
        layers_part = tokens * (L * arch.hidden_size * cb + per_layer)
        formulas["activations"] = (f"b·s × (L·h·{cb} B checkpoints + one layer recomputed: {per_layer:,} B) "
                                   f"= {tokens:,} × ({L}·{arch.hidden_size}·{cb} + {per_layer:,})")
    else:
        layers_part = tokens * L * per_layer
        formulas["activations"] = (f"b·s × L × {per_layer:,} B per token-layer "
                                   f"[{cb}·(4h + 2·q + 2·kv + 4·i)] = {tokens:,} × {L} × {per_layer:,}")
    comps["activations"] = layers_part
    # logits in compute dtype + fp32 upcast for the loss + fp32 gradient of the log-softmax
    comps["logits"] = tokens * arch.vocab_size * (cb + 8)
    formulas["logits"] = f"b·s × vocab × ({cb} + 4 + 4) B = {tokens:,} × {arch.vocab_size:,} × {cb + 8}"
    comps["cuda_context"] = CUDA_CONTEXT_BYTES
    formulas["cuda_context"] = "fixed allowance: CUDA context + cuBLAS workspace (0.3–0.8 GB; 0 on CPU)"
    if s.optimizer.startswith("paged"):
        notes.append("Paged optimizer states can spill to CPU RAM when the GPU is full, so the peak can be lower.")
    return TrainingEstimate(s, comps, formulas, trainable, weights, lora, tuple(notes))


# --------------------------------------------------------------------------- inference
def kv_cache_bytes(arch: Architecture, context: int, batch_size: int = 1, dtype: str | None = None) -> int:
    """2 (K and V) × layers × kv_heads × head_dim × tokens × bytes."""
    eb = DTYPE_BYTES[dtype_name(dtype, arch)]
    return 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * context * batch_size * eb


# --------------------------------------------------------------------------- GPUs
@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int  # what torch.cuda.get_device_properties reports (a bit under the label)
    note: str = ""


MiB = 2**20
GPUS: tuple[Gpu, ...] = (
    Gpu("T4 16 GB", 15_360 * MiB, "Colab free tier, HF Spaces 'T4 small/medium'"),
    Gpu("RTX 3060 12 GB", 12_288 * MiB),
    Gpu("RTX 4090 24 GB", 24_564 * MiB),
    Gpu("L4 24 GB", 23_034 * MiB, "HF Spaces 'L4'"),
    Gpu("A10G 24 GB", 23_028 * MiB, "HF Spaces 'A10G small/large'"),
    Gpu("L40S 48 GB", 46_068 * MiB, "HF Spaces 'L40S'"),
    Gpu("A100 40 GB", 40_960 * MiB),
    Gpu("A100 80 GB", 81_920 * MiB, "HF Spaces 'A100 large'"),
    Gpu("H100 80 GB", 81_559 * MiB, "HF Spaces 'H100'"),
)
TIGHT = 0.90  # above this share of memory: fits, but little room for spikes and fragmentation


def get_gpu(name: str) -> Gpu:
    for g in GPUS:
        if g.name.lower() == name.lower() or g.name.lower().startswith(name.lower()):
            return g
    raise LabError(f"Unknown GPU {name!r}.", f"Choose one of: {', '.join(g.name for g in GPUS)}.")


def fit_verdict(total_bytes: int, capacity_bytes: int) -> str:
    if total_bytes <= TIGHT * capacity_bytes:
        return "fits"
    if total_bytes <= capacity_bytes:
        return "tight"
    return "does not fit"


def this_machine(env: dict | None = None) -> Gpu:
    """This machine's GPU, or its RAM when there is no GPU (the CUDA allowance then does not apply).
    `env`: an `environment_report().to_json()` dict, if the caller already has one (pages cache it)."""
    if env is None:
        from lab.environment import environment_report

        env = environment_report().to_json()
    if env["gpus"]:
        g = env["gpus"][0]
        return Gpu(f"this machine: {g['name']}", int(g["total_bytes"]))
    return Gpu("this machine: CPU RAM", int(env["ram_total_bytes"]), "no GPU: RAM holds the model")


def fit_table(total_bytes: int, gpus=GPUS) -> list[dict]:
    return [
        {"gpu": g.name, "memory_bytes": g.memory_bytes, "used_percent": 100.0 * total_bytes / g.memory_bytes,
         "verdict": fit_verdict(total_bytes, g.memory_bytes), "note": g.note}
        for g in gpus
    ]


# --------------------------------------------------------------------------- inverse question
INVERSE_KNOBS = {
    "batch_size": "The largest per-device batch size that fits.",
    "seq_len": "The longest sequence (tokens) that fits.",
    "r": "The largest LoRA rank that fits (LoRA/QLoRA only).",
}


def max_fitting(arch: Architecture, capacity_bytes: int, knob: str, settings: TrainingSettings,
                upper: int = 1 << 20) -> int:
    """Largest value of `knob` whose estimate stays within `capacity_bytes` (0 if even 1 does not fit).
    Memory grows monotonically with each knob, so a binary search is exact."""
    from dataclasses import replace

    if knob not in INVERSE_KNOBS:
        raise LabError(f"Cannot solve for {knob!r}.", f"Choose one of: {', '.join(INVERSE_KNOBS)}.")
    if knob == "r" and settings.method == "full":
        raise LabError("Full fine-tuning has no LoRA rank to solve for.", "Pick batch_size or seq_len.")
    if knob == "seq_len" and arch.max_position_embeddings:
        upper = min(upper, int(arch.max_position_embeddings))
    if knob == "r":  # beyond the widest layer a LoRA update cannot gain rank
        upper = min(upper, max(max(g.in_features, g.out_features) for g in arch.linears))

    def fits(v: int) -> bool:
        return estimate_training(arch, replace(settings, **{knob: v})).total_bytes <= capacity_bytes

    if not fits(1):
        return 0
    lo, hi = 1, 1
    while hi < upper and fits(min(hi * 2, upper)):
        hi = min(hi * 2, upper)
        lo = hi
    if hi >= upper:
        return upper
    hi = min(hi * 2, upper)
    while hi - lo > 1:  # invariant: fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def memory_vs_seq_len(arch: Architecture, settings: TrainingSettings, seq_lens: list[int]) -> list[dict]:
    """The training estimate at each sequence length: {'seq_len', 'total_bytes', **components}."""
    from dataclasses import replace

    rows = []
    for L in seq_lens:
        est = estimate_training(arch, replace(settings, seq_len=int(L)))
        rows.append({"seq_len": int(L), "total_bytes": est.total_bytes, **est.components})
    return rows


__all__ = [
    "WeightEstimate", "WeightComponent", "estimate_weights", "measure_storage", "quantized_linear_bytes",
    "TrainingSettings", "TrainingEstimate", "estimate_training", "kv_cache_bytes", "GPUS", "Gpu", "get_gpu",
    "fit_verdict", "fit_table", "this_machine", "max_fitting", "memory_vs_seq_len", "packed_param_count",
    "METHODS", "OPTIMIZERS",
]
