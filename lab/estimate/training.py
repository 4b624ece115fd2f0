"""Training memory, term by term: weights + trainable parameters + gradients + optimizer states +
activations + logits + the CUDA context allowance. A formula, explained on the page next to each number.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from lab.errors import LabError
from lab.estimate.gpus import CUDA_CONTEXT_BYTES
from lab.estimate.lora import LoraEstimate, estimate_lora
from lab.estimate.weights import WeightEstimate, estimate_weights
from lab.models.architecture import Architecture
from lab.models.precision import get_precision, resolve_dtype
from lab.recipe import setting, values
from lab.vocab import ADAPTER_DTYPES, AUTO, DTYPES, METHODS, OPTIMIZERS, PRECISIONS, lookup


def _f(default, help: str):
    """A settings field whose help text the CLI and the calculator page reuse (TRL's sft_config style)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainingSettings:
    """What decides training memory. Defaults: QLoRA as the lab's Training page runs it on a GPU (lab.recipe.GPU)."""

    method: str = _f("qlora", "full, lora or qlora (lab.vocab.METHODS).")
    precision: str | None = _f(None, "Precision of the base weights (lab.vocab.PRECISIONS). Default: nf4-dq for "
                                     "QLoRA, the dtype for LoRA and full fine-tuning.")
    dtype: str = _f("auto", "dtype of everything bitsandbytes leaves unquantized and of the compute "
                            "(lab.vocab.DTYPE_CHOICES; auto = the checkpoint's torch_dtype).")
    # the settings a run has too: one name, default, bound and help with TrainConfig (lab.recipe), at the GPU recipe
    batch_size: int = setting("batch_size", gpu=True)
    max_length: int = setting("max_length", gpu=True)
    gradient_checkpointing: bool = setting("gradient_checkpointing", gpu=True)
    optimizer: str = setting("optimizer", gpu=True)
    r: int = setting("r", gpu=True)
    # alpha does not change memory; None (2·r) keeps the code snippet's lora_alpha following the rank asked about
    alpha: float | None = setting("alpha", None)
    targets: tuple[str, ...] | str = setting("targets", gpu=True)
    use_dora: bool = setting("use_dora", gpu=True)
    upcast_for_kbit: bool = _f(True, "prepare_model_for_kbit_training's fp32 cast of the non-quantized weights "
                                     "(lab.vocab.KBIT_UPCAST: on, as the Training page does).")
    attn: str | None = _f(None, "Attention implementation (lab.vocab.ATTENTION); None = what transformers picks on a "
                                "GPU: sdpa where the model supports it.")
    adapter_dtype: str = _f("auto", "dtype of the trainable adapters (lab.vocab.ADAPTER_DTYPES; auto = as the "
                                    "Training page does).")
    dropout: float = setting("dropout", gpu=True)
    autocast: bool = _f(True, "torch.autocast around the forward in the compute dtype for a 16-bit run (lab.vocab."
                              "AUTOCAST: on, as the Training page's bf16/fp16 flags; off for a plain loop).")
    loss: str = _f("fused", "How the loss is computed (lab.vocab.LOSSES): fused = TRL's chunked log-probabilities, "
                            "as the Training page runs; logits = transformers' Trainer on the full logits.")

    @classmethod
    def for_run(cls, config, device: str = "cpu") -> TrainingSettings:
        """A run's settings (`TrainConfig.to_dict()`) as this question takes them, on `device` ("cpu" or "cuda"):
        the shared ones through lab.recipe's one table, the method from the base's precision, and what the runner
        does there (a CPU computes in fp32 and casts a quantized base's adapters to fp32)."""
        precision = lookup(PRECISIONS, config.get("precision") or "fp32", "precision")
        cpu = device == "cpu"
        return cls(method="qlora" if precision.quantized else "lora", precision=precision.name,
                   dtype="compute" if cpu else "auto", upcast_for_kbit=precision.quantized,
                   adapter_dtype="fp32" if cpu else "auto", **values(config))


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

    @property
    def allocated_bytes(self) -> int:
        """The formula's peak as torch.cuda.max_memory_allocated would count it: every term but the CUDA
        context (memory outside PyTorch's allocator). What the simulated peak is compared with."""
        return self.total_bytes - self.components.get("cuda_context", 0)

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


def optimizer_state_bytes(optimizer: str, shapes: list[tuple[int, ...]], param_bytes: int) -> int:
    """Bytes of optimizer state for trainable tensors of these shapes (see `lab.vocab.OPTIMIZERS`)."""
    opt = lookup(OPTIMIZERS, optimizer, "optimizer")
    n = sum(math.prod(s) for s in shapes)
    if opt.factored:  # Adafactor: fp32 row + column vectors per matrix, a full fp32 vector for 1-D tensors
        return 4 * sum(sum(s) if len(s) >= 2 else math.prod(s) for s in shapes)
    if opt.state_bits == 8:  # uint8 states + an fp32 absmax per 256 values
        return int(opt.moments * n * (1 + 4 / 256))
    return opt.moments * n * (param_bytes if opt.state_bits is None else opt.state_bits // 8)


def activation_bytes_per_token_layer(arch: Architecture, act_bytes: int) -> int:
    """Tensors one decoder layer keeps for backward per token (SDPA attention, no s² term):
    2 norm in/outs (4h), q/k/v + attention output (2·q + 2·kv), MLP gate/up/act/product (4·i)."""
    h = arch.hidden_size
    q_dim = arch.num_attention_heads * arch.head_dim
    kv_dim = arch.num_kv_heads * arch.head_dim
    i = arch.intermediate_size or 4 * h
    return act_bytes * (4 * h + 2 * q_dim + 2 * kv_dim + 4 * i)


def method_for(precision: str, method: str) -> str:
    """The method that trains on a base stored at `precision`: QLoRA needs a quantized base, LoRA and full
    fine-tuning an unquantized one. `method` is kept when it already fits; otherwise QLoRA ⇄ LoRA."""
    quantized = get_precision(precision).quantized
    if quantized:
        return "qlora"
    return "lora" if method == "qlora" else method


def precision_for(method: str, precision: str) -> str:
    """The base precision `method` trains on: `precision` when it fits, else QLoRA's nf4-dq or LoRA's bf16."""
    if get_precision(precision).quantized == (method == "qlora"):
        return precision
    return "nf4-dq" if method == "qlora" else "bf16"


def adapter_dtype(s: TrainingSettings, quantized_base: bool) -> str:
    """The dtype the adapters train in (lab.vocab.ADAPTER_DTYPES): 'auto' is what the Training page's run does,
    bf16 on a quantized base (TRL's SFTTrainer casts them) and fp32 otherwise (peft's autocast_adapter_dtype)."""
    name = lookup(ADAPTER_DTYPES, s.adapter_dtype, "adapter dtype").name
    if name == AUTO:
        return "bf16" if quantized_base else "fp32"
    return name


def estimate_training(arch: Architecture, settings: TrainingSettings | None = None, **overrides) -> TrainingEstimate:
    """Peak training memory, term by term. Keyword overrides update `settings`."""
    s = replace(settings or TrainingSettings(), **overrides)
    lookup(METHODS, s.method, "training method")
    for label, v in (("batch size", s.batch_size), ("sequence length", s.max_length)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise LabError(f"The {label} must be a positive integer, got {v!r}.")
    compute = resolve_dtype(s.dtype, config_dtype=arch.config_dtype)
    cb = compute.bytes
    weights, notes = _base_weights(arch, s, compute.name)
    precision = weights.precision
    formulas: dict[str, str] = {}
    comps: dict[str, int] = {"weights": weights.weights_bytes}
    formulas["weights"] = weights_formula(arch, s, weights)
    lora = None
    if s.method == "full":
        trainable = arch.params_total
        pbytes = DTYPES[weights.precision].bytes
        comps["adapter"] = 0
        formulas["adapter"] = "none: the weights themselves train"
        comps["gradients"] = trainable * pbytes
        formulas["gradients"] = f"{trainable:,} params × {pbytes} B (same dtype as the weights)"
    else:
        lora = estimate_lora(arch, s.r, s.alpha, s.targets, use_dora=s.use_dora)
        trainable = lora.trainable_params
        adapter = adapter_dtype(s, get_precision(precision).quantized)
        pbytes = DTYPES[adapter].bytes
        comps["adapter"] = trainable * pbytes
        formulas["adapter"] = f"{trainable:,} LoRA params × {pbytes} B (adapters in {adapter})"
        comps["gradients"] = trainable * pbytes
        formulas["gradients"] = f"{trainable:,} × {pbytes} B (only adapters get gradients)"
    comps["optimizer"] = optimizer_state_bytes(s.optimizer, trainable_shapes(arch, lora), pbytes)
    per = comps["optimizer"] / trainable if trainable else 0
    formulas["optimizer"] = f"{trainable:,} × {per:.3g} B ({s.optimizer})"

    tokens = s.batch_size * s.max_length
    per_layer = activation_bytes_per_token_layer(arch, cb)
    L = arch.num_layers
    if s.gradient_checkpointing:
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
    formulas["cuda_context"] = ("memory outside PyTorch's allocator (CUDA context, kernels, workspaces): the median of "
                                "published out-of-memory reports (lab.estimate.gpus.OOM_REPORTS); 0 on a CPU")
    return TrainingEstimate(s, comps, formulas, trainable, weights, lora, tuple(notes))


def _base_weights(arch: Architecture, s: TrainingSettings, compute: str) -> tuple[WeightEstimate, list[str]]:
    """The frozen (or, fully fine-tuned, trained) base as the step holds it, and what to note about it."""
    if s.method == "qlora":
        precision = s.precision or "nf4-dq"
        if not get_precision(precision).quantized:
            raise LabError(f"QLoRA needs a quantized precision, got {precision!r}.", "Use nf4, nf4-dq, fp4 or int8.")
        weights = estimate_weights(arch, precision, "fp32" if s.upcast_for_kbit else compute)
        return weights, (["prepare_model_for_kbit_training casts embeddings, norms and lm_head to fp32."]
                         if s.upcast_for_kbit else [])
    precision = s.precision or compute
    if get_precision(precision).quantized:
        raise LabError(f"{s.method} trains an unquantized base; precision {precision!r} is quantized.",
                       "Use method 'qlora' for a quantized base.")
    return estimate_weights(arch, precision), []


def weights_formula(arch: Architecture, s: TrainingSettings, weights: WeightEstimate) -> str:
    """How the Weights term is counted; with QLoRA's fp32 upcast it says why it is more than the weights table
    (which stores what stays unquantized in the chosen dtype, as loading does before training starts)."""
    if not (weights.quantized_params and s.upcast_for_kbit and s.method == "qlora"):
        return f"base model at {weights.precision} (as in the weights table): {weights.weights_bytes:,} B"
    loaded = estimate_weights(arch, weights.precision, s.dtype)
    return (f"base model at {weights.precision} as loaded ({loaded.weights_bytes:,} B, the weights table) + "
            f"{weights.weights_bytes - loaded.weights_bytes:,} B for the fp32 copy of embeddings, norms and lm_head "
            f"that prepare_model_for_kbit_training makes = {weights.weights_bytes:,} B")


def trainable_shapes(arch: Architecture, lora: LoraEstimate | None) -> list[tuple[int, ...]]:
    """Shapes of the tensors that train: every parameter (full fine-tuning) or the LoRA tensors."""
    if lora is None:
        return [t.shape for t in arch.tensors if t.kind != "buffer"]
    shapes: list[tuple[int, ...]] = []
    for row in lora.rows:
        per_layer = [(lora.r, row.in_features), (row.out_features, lora.r)]
        per_layer += [(n,) for n in (row.magnitude_params, row.lora_bias_params, row.unfrozen_bias_params) if n]
        shapes += per_layer * row.count
    if lora.other_trainable_params:
        shapes.append((lora.other_trainable_params,))
    return shapes
