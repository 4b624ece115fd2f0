"""The lab's vocabularies: every choice a person makes, named once, with its help text.

One table per vocabulary — precisions, dtypes, training methods, optimizers, LoRA target presets —
shared by the calculator, the loading lab, training, the playground and the CLI. The CLI, URLs and
`lab_run.json` use an entry's `name`; pages show its `label` and reuse its `help` as the tooltip,
and `python -m lab CMD --help` lists the same help. Adding a choice means adding one row here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from lab.errors import LabError


@dataclass(frozen=True)
class Term:
    name: str  # what the CLI, URLs and run records say: "nf4-dq"
    label: str  # what a page shows: "NF4 + double quant"
    help: str  # one or two sentences, used as tooltip and --help text


T = TypeVar("T", bound=Term)


def table(*terms: T) -> dict[str, T]:
    return {t.name: t for t in terms}


def lookup(vocabulary: dict[str, T], name: str, what: str) -> T:
    """The entry called `name` (case-insensitive), or a LabError naming the bad value and the choices."""
    entry = vocabulary.get(str(name).strip().lower()) if name is not None else None
    if entry is None:
        raise LabError(f"Unknown {what} {name!r}.", f"Choose one of: {', '.join(vocabulary)}.")
    return entry


def describe(vocabulary: dict[str, Term], names=None, markdown: bool = False) -> str:
    """'name: help; ...' for --help, or '**label**: help · ...' for a page tooltip."""
    entries = [vocabulary[n] for n in (names or vocabulary)]
    if markdown:
        return " · ".join(f"**{t.label}**: {t.help}" for t in entries)
    return "; ".join(f"{t.name}: {t.help}" for t in entries)


# --------------------------------------------------------------------------- precisions
@dataclass(frozen=True)
class Precision(Term):
    bits: float  # bits per quantized weight, before quantization constants

    @property
    def quantized(self) -> bool:
        """Loaded through bitsandbytes (int8 or 4-bit)."""
        return self.bits <= 8

    @property
    def four_bit(self) -> bool:
        return self.bits == 4


PRECISIONS: dict[str, Precision] = table(
    Precision("fp32", "FP32", "Full precision: 4 bytes per weight. The reference for quality.", 32),
    Precision("bf16", "BF16", "bfloat16: fp32's range with 8 bits of mantissa; slow on most CPUs.", 16),
    Precision("fp16", "FP16", "float16: more mantissa than bf16, less range; the T4's fast path.", 16),
    Precision("int8", "INT8", "LLM.int8(): 1 byte per weight plus an fp32 scale per output row.", 8),
    Precision("nf4", "NF4", "4-bit NormalFloat (QLoRA): 16 levels placed for normally distributed weights.", 4),
    Precision("nf4-dq", "NF4 + double quant",
              "NF4 whose per-block absmax constants are themselves quantized to 8 bits.", 4),
    Precision("fp4", "FP4", "4-bit floating point: 16 levels, evenly spread in exponent.", 4),
)


# --------------------------------------------------------------------------- dtypes
@dataclass(frozen=True)
class Dtype(Term):
    torch_name: str  # what torch and config.json call it: "bfloat16"
    bytes: int

    @property
    def torch_dtype(self):
        # torch: 1.0 s to import; imported where used, not with this module
        import torch

        return getattr(torch, self.torch_name)


DTYPES: dict[str, Dtype] = table(
    Dtype("fp32", "FP32", "float32: 4 bytes per value.", "float32", 4),
    Dtype("bf16", "BF16", "bfloat16: 2 bytes, fp32's range; fast on Ampere and newer GPUs, ~20x slower on most CPUs.",
          "bfloat16", 2),
    Dtype("fp16", "FP16", "float16: 2 bytes, less range than bf16; the fast path on a T4.", "float16", 2),
)

# A dtype *choice* is one of DTYPES or one of these two words; each means one thing everywhere.
AUTO = "auto"
COMPUTE = "compute"
DTYPE_CHOICES: dict[str, Term] = table(
    Term(AUTO, "auto (checkpoint's dtype)",
         "The checkpoint's own dtype (config.json's torch_dtype), as transformers' dtype='auto' means."),
    Term(COMPUTE, "this device's compute dtype",
         "fp32 on a CPU (bf16 matmuls are ~20x slower there), bf16 on GPUs that support it, fp16 otherwise (a T4)."),
    *DTYPES.values(),
)


def dtype_by_torch_name(torch_name: str) -> Dtype:
    """'bfloat16' (or 'torch.bfloat16') -> the bf16 entry."""
    name = str(torch_name).removeprefix("torch.")
    for d in DTYPES.values():
        if d.torch_name == name:
            return d
    raise LabError(f"Unsupported dtype {torch_name!r}.", f"Use one of: {', '.join(DTYPES)}.")


# --------------------------------------------------------------------------- training methods
METHODS: dict[str, Term] = table(
    Term("full", "Full fine-tuning", "Every weight trains, with its gradient and optimizer states."),
    Term("lora", "LoRA", "Frozen base in 16-bit (or 32-bit), small trainable adapters."),
    Term(
        "qlora",
        "QLoRA",
        "Frozen base quantized by bitsandbytes (NF4 in the QLoRA paper), adapters in fp32, paged 8-bit or 32-bit "
        "AdamW.",
    ),
)


# --------------------------------------------------------------------------- optimizers
@dataclass(frozen=True)
class Optimizer(Term):
    # full-size moment tensors kept per trainable parameter (AdamW: exp_avg and exp_avg_sq)
    moments: int
    # bits per moment value; None = the parameter's own dtype (torch keeps AdamW states like the param)
    state_bits: int | None
    # Adafactor keeps a factored second moment: one row and one column vector per matrix
    factored: bool = False
    paged: bool = False  # CUDA unified memory: pages can spill to CPU RAM under pressure
    cuda_only: bool = False  # bitsandbytes' paged/8-bit optimizers need CUDA


OPTIMIZERS: dict[str, Optimizer] = table(
    Optimizer("adamw_torch", "AdamW (32-bit)",
              "torch AdamW: two states per trainable parameter, in the parameter's dtype (8 B for fp32).", 2, None),
    Optimizer("adamw_8bit", "AdamW 8-bit",
              "bitsandbytes 8-bit AdamW: two uint8 states + an fp32 absmax per 256 values (~2.03 B per parameter).",
              2, 8, cuda_only=True),
    Optimizer("paged_adamw_32bit", "Paged AdamW (32-bit)",
              "32-bit AdamW in CUDA unified memory: same bytes, but pages spill to CPU RAM under pressure.",
              2, 32, paged=True, cuda_only=True),
    Optimizer("paged_adamw_8bit", "Paged AdamW 8-bit",
              "8-bit AdamW in unified memory: the QLoRA paper's choice against memory spikes. Needs CUDA.",
              2, 8, paged=True, cuda_only=True),
    Optimizer("adafactor", "Adafactor",
              "Adafactor without momentum: a factored second moment (a row and a column vector per matrix).",
              0, None, factored=True),
    Optimizer("sgd", "SGD", "Plain SGD without momentum: no optimizer state.", 0, None),
)


def optimizers_for(device: str) -> list[str]:
    """The optimizers that can run on `device` ('cpu' or 'cuda')."""
    return [o.name for o in OPTIMIZERS.values() if device == "cuda" or not o.cuda_only]


# --------------------------------------------------------------------------- LoRA target presets
# Resolved against the Linear layers a model really has (lab.estimate.lora.preset_targets), so the
# calculator, the estimator and training mean the same modules for every architecture.
TARGET_PRESETS: dict[str, Term] = table(
    Term("all-linear", "all linear",
         "Every Linear layer of the decoder except lm_head, like peft's target_modules='all-linear' (QLoRA paper), "
         "and on a mixture-of-experts model the fused experts too. Layers narrower than r (a router gate "
         "Linear(hidden, 1)) and modules peft refuses (Mamba's out_proj) are left out, with a note."),
    Term("attention", "attention",
         "Every attention projection the model has: q, k, v, o — or a fused qkv_proj (Phi-3)."),
    Term("attention-experts", "attention + experts",
         "The attention projections and, on a mixture-of-experts model, every expert's projections (the fused 3-D "
         "expert parameters, through peft's target_parameters; lora_dropout is then 0). Dense models: attention."),
    Term("qv", "q, v",
         "The original LoRA paper's choice: query and value projections only (a fused qkv_proj where q and v "
         "live in one layer, as in Phi-3: the whole fused layer is adapted)."),
)


# --------------------------------------------------------------------------- multi-process launch modes
# How `lab.training.distributed.launch_command` spreads one training over several processes.
LAUNCH_MODES: dict[str, Term] = table(
    Term("ddp", "DDP (data parallel)",
         "Every process holds the whole (quantized) base and its own LoRA copy, trains on its share of each batch, "
         "and the gradients are averaged (NCCL on GPUs, gloo on a CPU). The model must fit on one device."),
    Term("fsdp", "FSDP + QLoRA (sharded)",
         "The base is sharded across the GPUs (4-bit weights stored in the compute dtype so FSDP can shard them), "
         "peft's FSDP + QLoRA recipe: for models that do not fit on one GPU. CUDA only."),
)


# FSDP's sharding strategies (torch.distributed.fsdp.ShardingStrategy), as lab.estimate.parallel models them.
FSDP_STRATEGIES: dict[str, Term] = table(
    Term("full_shard", "FULL_SHARD",
         "Parameters, gradients and optimizer state sharded over every GPU; each layer's parameters are gathered "
         "for its forward and again for its backward (the lab's FSDP launch)."),
    Term("shard_grad_op", "SHARD_GRAD_OP",
         "Gradients and optimizer state sharded; parameters gathered in the forward stay gathered until the "
         "backward (ZeRO-2-like: less communication, every layer's full parameters at the end of the forward)."),
    Term("hybrid_shard", "HYBRID_SHARD",
         "FULL_SHARD within a node, replicated across nodes: the state is divided by the GPUs of one node."),
)


# --------------------------------------------------------------------------- attention implementations
ATTENTION: dict[str, Term] = table(
    Term("sdpa", "SDPA",
         "PyTorch's scaled_dot_product_attention (flash / memory-efficient kernels): no seq × seq score matrix is "
         "kept. What transformers picks on a GPU when the model supports it."),
    Term("eager", "eager",
         "transformers' plain attention: softmax(QKᵀ)V in PyTorch ops, which keeps batch × heads × seq² scores per "
         "layer for the backward — memory grows with the square of the sequence length."),
)

# --------------------------------------------------------------------------- adapter dtypes
# The dtype the trainable LoRA weights are kept in: a DTYPES entry, or "auto" for the lab's own recipe.
ADAPTER_DTYPES: dict[str, Term] = table(
    Term(AUTO, "as the Training page does",
         "What a run of the Training page does: bf16 adapters on a quantized base (TRL's SFTTrainer casts them, as "
         "the QLoRA paper recommends), fp32 otherwise (peft's autocast_adapter_dtype=True). fp32/bf16/fp16 force "
         "one: fp32 as peft keeps them by default, bf16/fp16 as 'bf16-true' frameworks do."),
    *DTYPES.values(),
)

# --------------------------------------------------------------------------- kbit upcast
KBIT_UPCAST: dict[str, Term] = table(
    Term("on", "upcast to fp32",
         "peft's prepare_model_for_kbit_training casts every fp16/bf16 parameter that is not 4-bit (embeddings, norms, "
         "lm_head) to fp32 — what the lab's Training page does for a quantized base."),
    Term("off", "keep the load dtype",
         "Freeze the base without the fp32 cast, as frameworks that skip prepare_model_for_kbit_training do."),
)

# --------------------------------------------------------------------------- mixed precision (autocast)
AUTOCAST: dict[str, Term] = table(
    Term("on", "autocast",
         "The Trainer's bf16/fp16 flags, as the Training page runs: the forward runs under torch.autocast in the "
         "compute dtype, so fp32 adapters compute in bf16/fp16 and keep half-width inputs for the backward."),
    Term("off", "no autocast",
         "A plain loop on a bf16/fp16-loaded model without torch.autocast (e.g. peft's MetaMathQA benchmark, "
         "use_amp=false): peft's fp32 adapters cast each adapted layer's input to fp32 and keep that copy for "
         "the backward."),
)

# --------------------------------------------------------------------------- how the loss is computed
LOSSES: dict[str, Term] = table(
    Term("fused", "TRL (chunked)",
         "What the lab's Training page runs: TRL's SFTTrainer computes per-token log-probabilities in chunks "
         "of the vocabulary and never holds the batch × seq × vocab logits."),
    Term("logits", "full logits",
         "transformers' Trainer (and older TRL): the model returns the full logits and the loss upcasts them to "
         "fp32 — several batch × seq × vocab tensors at the end of the forward."),
)
