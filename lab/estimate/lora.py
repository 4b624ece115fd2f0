"""LoRA parameter counts, module by module, equal to what peft's `get_peft_model` creates.

For every Linear that a target name matches (peft's rule: the full module name equals the
target or ends with "." + target), peft adds
    lora_A: r × in_features        lora_B: out_features × r
plus, with DoRA, a magnitude vector of out_features, and with `lora_bias=True` a bias on
lora_B (out_features). `bias="all"|"lora_only"` adds no tensor: it unfreezes existing biases
(all of them, or those of the targeted layers). rsLoRA changes only the scale
(alpha/√r instead of alpha/r), never the count.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from lab.errors import LabError
from lab.estimate.experts import DROPOUT_NOTE, expert_groups, expert_names, peft_refuses
from lab.models.architecture import Architecture
from lab.vocab import TARGET_PRESETS, lookup

BIAS_CHOICES = {
    "none": "No bias is trained (peft's default).",
    "all": "Every existing bias in the model becomes trainable (targeted or not).",
    "lora_only": "Only the existing biases of the targeted layers become trainable.",
}

# Leaf names of a fused q/k/v projection besides any name containing "qkv" (Phi-3's qkv_proj): GPT-NeoX/Falcon,
# GPT-2, MPT/DBRX. LoRA on one of them adapts q, k and v together.
FUSED_QKV_NAMES = ("query_key_value", "c_attn", "Wqkv")

_ATTENTION_HINTS = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "query", "key", "value", "dense",
                    "c_attn", "c_proj", "out_proj", "wq", "wk", "wv", "wo", "Wqkv", "query_key_value")


@dataclass(frozen=True)
class LoraModuleRow:
    """One targeted Linear name (e.g. q_proj) and what LoRA adds to all its layers."""

    name: str
    in_features: int
    out_features: int
    count: int  # how many such layers
    a_params: int  # per layer: r × in
    b_params: int  # per layer: out × r
    magnitude_params: int  # per layer: DoRA's magnitude vector (out), else 0
    lora_bias_params: int  # per layer: lora_B's bias with lora_bias=True, else 0
    unfrozen_bias_params: int  # per layer: existing bias made trainable by bias='all'/'lora_only'
    experts: int = 0  # a fused expert parameter (peft's ParamWrapper): experts per layer; 0 for a Linear

    @property
    def per_expert(self) -> int:
        """An expert's share of `per_layer` (r × (in + out)); the Linear's per_layer for a Linear."""
        return self.per_layer // max(1, self.experts)

    @property
    def per_layer(self) -> int:
        return self.a_params + self.b_params + self.magnitude_params + self.lora_bias_params + self.unfrozen_bias_params

    @property
    def total(self) -> int:
        return self.per_layer * self.count

    def to_json(self) -> dict:
        return {**asdict(self), "per_layer": self.per_layer, "per_expert": self.per_expert, "total": self.total}


@dataclass(frozen=True)
class LoraEstimate:
    r: int
    alpha: float
    targets: tuple[str, ...]
    use_dora: bool
    use_rslora: bool
    bias: str
    lora_bias: bool
    rows: tuple[LoraModuleRow, ...]
    other_trainable_params: int  # biases of untargeted layers unfrozen by bias='all'
    params_total: int  # the base model's parameters
    packed_params_4bit: int  # what a plain numel() count shows for the model loaded in 4-bit
    extra: dict = field(default_factory=dict)

    @property
    def scale(self) -> float:
        return self.alpha / math.sqrt(self.r) if self.use_rslora else self.alpha / self.r

    @property
    def trainable_params(self) -> int:
        return sum(row.total for row in self.rows) + self.other_trainable_params

    @property
    def added_params(self) -> int:
        """New tensors peft creates (unfrozen existing biases are not new)."""
        return (
            self.trainable_params
            - self.other_trainable_params
            - sum(r.unfrozen_bias_params * r.count for r in self.rows)
        )

    @property
    def adapter_params(self) -> int:
        """Tensors saved in adapter_model.safetensors (LoRA A/B, magnitudes, lora biases, unfrozen biases)."""
        return self.trainable_params

    @property
    def adapter_bytes_fp32(self) -> int:
        return 4 * self.adapter_params

    @property
    def adapter_bytes_bf16(self) -> int:
        return 2 * self.adapter_params

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / (self.params_total + self.added_params)

    def lora_config_code(self, dropout: float | None = None, all_linear: bool = False) -> str:
        """The LoraConfig(...) a user would write; `all_linear` names the preset as peft spells it."""
        targets = '"all-linear"' if all_linear else "[" + ", ".join(f'"{t}"' for t in self.targets) + "]"
        lines = [
            "LoraConfig(",
            f"    r={self.r},",
            f"    lora_alpha={self.alpha:g},",
            f"    target_modules={targets},",
        ]
        if dropout is not None:
            lines.append(f"    lora_dropout={dropout:g},")
        lines.append(f'    bias="{self.bias}",')
        if self.use_dora:
            lines.append("    use_dora=True,")
        if self.use_rslora:
            lines.append("    use_rslora=True,")
        if self.lora_bias:
            lines.append("    lora_bias=True,")
        lines += ['    task_type="CAUSAL_LM",', ")"]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "r": self.r,
            "alpha": self.alpha,
            "scale": self.scale,
            "targets": list(self.targets),
            "use_dora": self.use_dora,
            "use_rslora": self.use_rslora,
            "bias": self.bias,
            "lora_bias": self.lora_bias,
            "trainable_params": self.trainable_params,
            "params_total": self.params_total,
            "trainable_percent": self.trainable_percent,
            "added_params": self.added_params,
            "adapter_bytes_fp32": self.adapter_bytes_fp32,
            "adapter_bytes_bf16": self.adapter_bytes_bf16,
            "packed_params_4bit": self.packed_params_4bit,
            "modules": [row.to_json() for row in self.rows],
            "other_trainable_params": self.other_trainable_params,
        }


def packed_param_count(arch: Architecture) -> int:
    """What `sum(p.numel() for p in model.parameters())` gives once loaded in 4-bit: bitsandbytes
    packs two 4-bit weights into one uint8 element, so every quantized weight counts half. This is
    the "all params: 1.8B" old peft versions printed for a 3.2B model (peft ≥ 0.7 doubles it back)."""
    return sum((t.numel + 1) // 2 if t.quantized else t.numel for t in arch.tensors if t.kind != "buffer")


def parse_targets(targets: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """'q_proj, v_proj' or a list -> ['q_proj', 'v_proj']."""
    if targets is None:
        return []
    if isinstance(targets, str):
        targets = targets.split(",")
    return [t.strip() for t in targets if t and t.strip()]


def preset_targets(arch: Architecture, preset: str, r: int | None = None) -> list[str]:
    """The Linear (and fused expert parameter) names a preset (`lab.vocab.TARGET_PRESETS`) means for this
    architecture; with `r`, broad presets leave out what cannot take it (`left_out`)."""
    names = arch.decoder_linear_names
    preset = lookup(TARGET_PRESETS, preset, "LoRA target preset").name
    if preset in ("all-linear", "attention-experts"):
        base = names if preset == "all-linear" else _attention(names)
        left = {n for n, _ in left_out(arch, preset, r)}
        return [n for n in base if n not in left] + expert_names(arch)
    if preset == "attention":
        return _attention(names)
    fused = fused_qkv(names)
    return [n for n in ("q_proj", "v_proj") if n in names] or fused or names[:1]  # Phi-3: q and v live in qkv_proj


def _attention(names: list[str]) -> list[str]:
    attn = [n for n in names if any(n == h or n.endswith(h) for h in _ATTENTION_HINTS)
            and not n.startswith(("gate", "up", "down", "fc"))]
    return attn or names


def left_out(arch: Architecture, preset: str, r: int | None) -> list[tuple[str, str]]:
    """(name, why) for the Linear layers a broad preset leaves out: narrower than r (a router gate
    `Linear(hidden, 1)`: no rank-r update exists), refused by peft (Mamba's out_proj), or a router that subclasses
    nn.Linear and returns (weights, indices), which peft's LoRA layer cannot add its update to (PhiMoE's)."""
    if preset not in ("all-linear", "attention-experts"):
        return []
    out = []
    for name in arch.decoder_linear_names:
        width = min((min(g.in_features, g.out_features) for g in arch.linears if g.name == name), default=0)
        if peft_refuses(arch, name):
            out.append((name, f"peft does not adapt {name} on {arch.model_type} (Mamba) models"))
        elif not all(g.returns_tensor for g in arch.linears if g.name == name):
            out.append((name, f"{name} is a router that returns routing weights and expert indices, not a "
                              "layer's output (peft's LoRA layer cannot add its update to it)"))
        elif r is not None and width < r:
            out.append((name, f"{name} is narrower than r={r} (min(in, out) = {width})"))
    return out


def target_notes(arch: Architecture, targets, r: int | None) -> list[str]:
    """One line per layer a preset left out, and the dropout note when fused experts are targeted."""
    wanted = parse_targets(targets)
    preset = wanted[0] if len(wanted) == 1 and wanted[0] in TARGET_PRESETS else None
    notes = [f"{why}: left out of '{preset}'." for _, why in left_out(arch, preset, r)] if preset else []
    if any(n in expert_names(arch) for n in resolve_targets(arch, targets, r)):
        notes.append(DROPOUT_NOTE)
    return notes


def fused_qkv(names) -> list[str]:
    """The names among `names` that are a fused q/k/v projection (one Linear holding q, k and v)."""
    return [n for n in names if "qkv" in n.lower() or n in FUSED_QKV_NAMES]


def _matches(path: str, target: str) -> bool:
    return path == target or path.endswith("." + target)


def resolve_targets(arch: Architecture, targets, r: int | None = None) -> list[str]:
    """Target module names for `arch`: a preset (`lab.vocab.TARGET_PRESETS`, e.g. 'all-linear', expanded
    like peft's) or names validated against the architecture."""
    wanted = parse_targets(targets)
    choices = arch.linear_names + expert_names(arch)
    if not wanted:
        raise LabError("No LoRA target modules given.", f"Choose among: {', '.join(choices)}.")
    if len(wanted) == 1 and wanted[0] in TARGET_PRESETS:
        return preset_targets(arch, wanted[0], r)
    paths = [p for g in arch.linears for p in g.paths] + [p for g in expert_groups(arch) for p in g.paths]
    missing = [t for t in wanted if not any(_matches(p, t) for p in paths)]
    if missing:
        raise LabError(
            f"Target module(s) {', '.join(repr(m) for m in missing)} match no Linear layer of {arch.name}.",
            f"Its Linear layers (and fused experts) are: {', '.join(choices)}.",
        )
    refused = [t for t in wanted if peft_refuses(arch, t)]
    if refused:
        raise LabError(f"peft does not adapt {', '.join(refused)} on {arch.model_type} (Mamba) models.",
                       f"Leave {', '.join(refused)} out of the targets.")
    return wanted


def estimate_lora(
    arch: Architecture,
    r: int,
    alpha: float | None = None,
    targets=("q_proj", "v_proj"),
    use_dora: bool = False,
    use_rslora: bool = False,
    bias: str = "none",
    lora_bias: bool = False,
) -> LoraEstimate:
    """Trainable parameters LoRA adds to `arch`, per targeted Linear name."""
    key = (
        "lora",
        r,
        alpha,
        targets if isinstance(targets, str) else tuple(targets or ()),
        use_dora,
        use_rslora,
        bias,
        lora_bias,
    )
    def compute() -> LoraEstimate:
        return _estimate_lora(arch, r, alpha, targets, use_dora, use_rslora, bias, lora_bias)

    try:
        hash(key)
    except TypeError:  # unhashable arguments: just compute
        return compute()
    return arch.remember(key, compute)


def _estimate_lora(arch, r, alpha, targets, use_dora, use_rslora, bias, lora_bias) -> LoraEstimate:
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise LabError(f"LoRA rank r={r!r} is not a positive integer.", "Use r ≥ 1 (typical: 8, 16, 32, 64).")
    alpha = float(2 * r if alpha is None else alpha)
    if alpha <= 0:
        raise LabError(f"lora_alpha={alpha:g} must be positive.", "A common choice is alpha = 2·r.")
    if bias not in BIAS_CHOICES:
        raise LabError(f"Unknown bias setting {bias!r}.", f"Choose one of: {', '.join(BIAS_CHOICES)}.")
    if lora_bias and use_dora:
        raise LabError("lora_bias=True is not supported together with DoRA (peft refuses it).")
    names = resolve_targets(arch, targets, r)
    experts = [g for g in expert_groups(arch) if g.name in names]
    if experts and (use_dora or lora_bias):
        raise LabError(f"peft adapts the fused experts ({', '.join(dict.fromkeys(g.name for g in experts))}) with its "
                       "ParamWrapper, which supports neither DoRA nor lora_bias.",
                       "Use plain LoRA, or target the attention only.")

    rows: list[LoraModuleRow] = []
    targeted_paths: set[str] = set()
    for g in arch.linears:
        paths = [p for p in g.paths if any(_matches(p, t) for t in names)]
        if not paths:
            continue
        targeted_paths.update(paths)
        rows.append(
            LoraModuleRow(
                name=g.name,
                in_features=g.in_features,
                out_features=g.out_features,
                count=len(paths),
                a_params=r * g.in_features,
                b_params=g.out_features * r,
                magnitude_params=g.out_features if use_dora else 0,
                lora_bias_params=g.out_features if lora_bias else 0,
                unfrozen_bias_params=g.out_features if (bias in ("all", "lora_only") and g.bias) else 0,
            )
        )
    rows += [LoraModuleRow(g.name, g.dims[0], g.dims[1], g.count, r * g.experts * g.dims[0], r * g.experts * g.dims[1],
                           0, 0, 0, experts=g.experts) for g in experts]
    other = 0
    if bias == "all":  # every other bias in the model is unfrozen too
        for t in arch.tensors:
            if t.path.endswith("bias") and t.kind != "buffer" and t.path.removesuffix(".bias") not in targeted_paths:
                other += t.numel
    return LoraEstimate(
        r=r,
        alpha=alpha,
        targets=tuple(names),
        use_dora=use_dora,
        use_rslora=use_rslora,
        bias=bias,
        lora_bias=lora_bias,
        rows=tuple(rows),
        other_trainable_params=other,
        params_total=arch.params_total,
        packed_params_4bit=packed_param_count(arch),
    )
