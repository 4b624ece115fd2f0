"""One recipe: the settings of a training step, each with one name, one default, one bound and one help text.

A run (`lab.training.config.TrainConfig`: the Training page, `lab train`) and the memory question about a
run (`lab.estimate.training.TrainingSettings`: the calculator, `lab memory`, the simulation) build the fields
they share from this table, and pages build their widgets from the same metadata (pages/_fields.py), so a
bound is never retyped. Names follow TRL's SFTConfig and peft's LoraConfig (`max_length`,
`gradient_checkpointing`, `use_dora`); older spellings stay accepted as hidden CLI aliases.

Defaults are the CPU demo run. `GPU` holds the few a GPU-sized question starts from instead (a CUDA run's
defaults, the calculator's and `lab memory`'s): derived here, once.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field

from lab.errors import LabError
from lab.vocab import OPTIMIZERS, TARGET_PRESETS


@dataclass(frozen=True)
class Setting:
    label: str  # what a page's widget says
    help: str  # tooltip, --help text, and the hint of a refusal
    default: object
    min: float | None = None
    max: float | None = None
    step: float | None = None  # a number widget's step
    format: str | None = None  # a number widget's printf format
    choices: tuple[str, ...] | None = None
    aliases: tuple[str, ...] = ()  # older CLI spellings: still parsed, hidden from --help

    def metadata(self) -> dict:
        """What a dataclass field carries (TRL's sft_config style): read by the CLI, the pages and `check`."""
        meta = {"label": self.label, "help": self.help}
        for key in ("min", "max", "step", "format", "choices"):
            if getattr(self, key) is not None:
                meta[key] = getattr(self, key)
        if self.aliases:
            meta["aliases"] = self.aliases
        return meta


SETTINGS: dict[str, Setting] = {s_name: s for s_name, s in (
    ("r", Setting("LoRA rank r", "LoRA rank: the inner dimension of the A (r x in) and B (out x r) matrices. More "
                  "rank = more trainable parameters and capacity.", 16, min=1, max=1024)),
    ("alpha", Setting("alpha", "lora_alpha: the update B·A is scaled by alpha/r (alpha/sqrt(r) with rsLoRA). "
                      "alpha = 2r is a common choice.", 32.0, min=0.0, max=4096.0, step=1.0)),
    ("dropout", Setting("dropout", "lora_dropout: dropout on the LoRA branch's input during training; 0 disables "
                        "it.", 0.05, min=0.0, max=0.9, step=0.05)),
    ("targets", Setting("Target modules", f"Target modules: a preset ({', '.join(TARGET_PRESETS)}; resolved "
                        "against the model's own Linear layers) or comma-separated module names from the "
                        "architecture (e.g. q_proj,v_proj).", "all-linear")),
    ("use_dora", Setting("DoRA", "DoRA: split each weight into magnitude and direction and train both (peft "
                         "use_dora): a trainable magnitude per output feature and a weight norm in every forward. "
                         "Slower per step.", False, aliases=("--dora",))),
    ("batch_size", Setting("Batch size", "Examples per forward/backward pass (per device). Lower it if you run "
                           "out of memory.", 4, min=1)),
    ("max_length", Setting("Max length (tokens)", "Tokens per sequence: longer training texts are truncated to "
                           "this many. Memory grows with it.", 256, min=8, step=256, aliases=("--seq-len",))),
    ("gradient_checkpointing", Setting(
        "Gradient checkpointing", "Recompute activations in the backward pass instead of storing them: much less "
        "activation memory, ~30% slower. Worth it on a GPU near its limit; off on CPU.", False,
        aliases=("--grad-checkpointing",))),
    ("optimizer", Setting("Optimizer", "Optimizer (transformers' optim name). paged_adamw_8bit (bitsandbytes, "
                          "QLoRA's choice) keeps 8-bit states and pages them to CPU RAM on spikes; bitsandbytes' "
                          "8-bit and paged optimizers need CUDA and are offered only there.", "adamw_torch",
                          choices=tuple(OPTIMIZERS))),
)}

# A GPU's question starts from the classic QLoRA recipe (NF4 + double quant, gradient checkpointing, paged 8-bit
# AdamW) at a GPU-sized sequence, one sequence per step: the calculator's and `lab memory`'s defaults, and a CUDA
# run's (which reaches an effective batch of 8 through gradient accumulation, lab.training.config.default_config).
# The CPU demo's defaults above are sized for minutes on a laptop instead.
GPU: dict[str, object] = {"precision": "nf4-dq", "gradient_checkpointing": True, "optimizer": "paged_adamw_8bit",
                          "max_length": 1024, "batch_size": 1}


def setting(name: str, default: object = MISSING, gpu: bool = False):
    """A dataclass field for setting `name`: its default (the GPU one with gpu=True, or `default`) and metadata."""
    spec = SETTINGS[name]
    if default is MISSING:
        default = GPU.get(name, spec.default) if gpu else spec.default
    return field(default=default, metadata=spec.metadata())


def values(config) -> dict[str, object]:
    """A run's values (`TrainConfig.to_dict()`, lab_run.json's "config") of the settings in this table, by name: how
    a run becomes the memory and time question about it (`TrainingSettings.for_run`). A setting an older record
    lacks takes its default here."""
    return {name: config.get(name, spec.default) for name, spec in SETTINGS.items()}


def check(name: str, value, meta: dict) -> None:
    """Refuse a value outside its field's choices or bounds, naming the value and quoting the field's help."""
    if "choices" in meta and value not in meta["choices"]:
        raise LabError(f"{name}={value!r} is not one of {', '.join(meta['choices'])}.", meta["help"])
    if "min" in meta and value < meta["min"]:
        raise LabError(f"{name}={value} is below its minimum {meta['min']}.", meta["help"])
    if "max" in meta and value > meta["max"]:
        raise LabError(f"{name}={value} is above its maximum {meta['max']}.", meta["help"])


def add_argument(parser, name: str, meta: dict, typ: type, default, help_suffix: str = "") -> None:
    """One --flag for a field (booleans: --flag / --no-flag), with its older spellings as hidden aliases."""
    flag = "--" + name.replace("_", "-")
    help_text = meta["help"] + help_suffix
    if typ is bool:
        parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        for alias in meta.get("aliases", ()):
            parser.add_argument(alias, dest=name, action="store_true", default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)
        return
    choices = meta.get("choices")
    parser.add_argument(flag, dest=name, type=typ, default=default, help=help_text, choices=choices,
                        metavar=None if choices else name.upper())
    for alias in meta.get("aliases", ()):
        parser.add_argument(alias, dest=name, type=typ, default=argparse.SUPPRESS, choices=choices,
                            help=argparse.SUPPRESS)
