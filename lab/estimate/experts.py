"""Mixture-of-experts as transformers 5 builds it, and what LoRA targets on it.

transformers 5 stores a layer's experts fused: one 3-D parameter per projection (`experts.gate_up_proj`
of shape experts × a × b, `experts.down_proj`), not one `nn.Linear` per expert. Two consequences:

- bitsandbytes (transformers' quantizer) replaces only `nn.Linear` modules, so at nf4 / int8 the experts
  are NOT quantized: they stay in the compute dtype (bf16), which is most of a MoE's bytes. The weights
  estimate counts them that way (they are plain parameters), and a real load measures the same.
- peft reaches them only through `target_parameters` (its `ParamWrapper`): per targeted parameter of
  shape (E, a, b) it adds lora_A (r·E × in) and lora_B (out × r·E), i.e. r·(a + b) per expert.
  ParamWrapper refuses lora_dropout != 0, so the lab trains with lora_dropout = 0 when experts are
  targeted and says so.

peft also rewrites a LoraConfig written for transformers 4 (expert names gate_proj/up_proj/w1/...,
the router "gate") into v5 parameters, per model type. The lab writes its LoraConfig for the model it
has (v5 module and parameter names), so that rewrite is switched off while the lab applies its own
config (`as_written`): a shared expert's `gate_proj` stays the Linear it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from lab.estimate.patch import for_this_thread

# peft refuses these module names on Mamba-based models (peft.tuners.tuners_utils._check_lora_target_modules_mamba)
PEFT_MAMBA_TYPES = frozenset({"falcon_h1", "mamba", "mamba2", "falcon_mamba", "nemotron_h"})
PEFT_MAMBA_REFUSED = frozenset({"out_proj", "conv1d"})
DROPOUT_NOTE = ("lora_dropout is 0: the experts are adapted through peft's ParamWrapper (target_parameters), "
                "which does not support dropout.")


@dataclass(frozen=True)
class ExpertGroup:
    """All fused expert parameters sharing a leaf name and shape, e.g. the 48 `gate_up_proj` of Qwen3-30B-A3B."""

    name: str  # parameter leaf name: what peft's target_parameters matches
    experts: int
    dims: tuple[int, int]  # the two matrix dimensions of one expert
    count: int  # layers
    paths: tuple[str, ...]

    def lora_params_per_expert(self, r: int) -> int:
        return r * (self.dims[0] + self.dims[1])

    def lora_params_per_layer(self, r: int) -> int:
        return self.experts * self.lora_params_per_expert(r)


def expert_groups(arch) -> list[ExpertGroup]:
    """The 3-D (fused expert) parameters of `arch`, grouped by leaf name and shape."""
    groups: dict[tuple, list[str]] = {}
    for t in arch.tensors:
        if t.kind == "expert":
            groups.setdefault((t.path.rsplit(".", 1)[-1], t.shape), []).append(t.path)
    return [ExpertGroup(leaf, shape[0], (shape[1], shape[2]), len(paths), tuple(paths))
            for (leaf, shape), paths in groups.items()]


def expert_names(arch) -> list[str]:
    return list(dict.fromkeys(g.name for g in expert_groups(arch)))


def peft_refuses(arch, name: str) -> bool:
    """Whether peft refuses LoRA on module `name` of this model (Mamba's out_proj and conv1d)."""
    return arch.model_type in PEFT_MAMBA_TYPES and name in PEFT_MAMBA_REFUSED


def active_fraction(arch) -> float | None:
    """Experts a token runs through over experts per layer (top-k routing), None for a dense model."""
    text = arch.config.get("text_config") or arch.config
    k = text.get("num_experts_per_tok") or text.get("moe_topk") or text.get("top_k")
    groups = expert_groups(arch)
    if not groups or not isinstance(k, int):
        return None
    return min(1.0, k / groups[0].experts)


def active_params(arch) -> int | None:
    """Parameters one token uses: everything but the experts, plus top-k of each layer's experts."""
    frac = active_fraction(arch)
    if frac is None:
        return None
    expert = sum(t.numel for t in arch.tensors if t.kind == "expert")
    return int(arch.params_total - expert + round(expert * frac))


@contextmanager
def as_written() -> Iterator[None]:
    """peft applies the LoraConfig the lab wrote (v5 names) without its v4 → v5 MoE rewrite, on this thread."""
    try:
        # peft: 4.2 s to import; imported where used, not with this module
        from peft.utils import transformers_weight_conversion as twc
    except ImportError:  # transformers < 5: peft has no rewrite
        yield
        return

    with for_this_thread(twc, "convert_peft_config_for_transformers", lambda *a, **k: None):
        yield
