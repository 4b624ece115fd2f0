"""What a training run is: one dataclass whose fields carry their help text (like TRL's
sft_config.py). The CLI builds its flags from it, the Training page its widgets and tooltips, and
`lab_run.json` stores it so a run can be reproduced.

Defaults are device-aware (`default_config`): on a CPU they are the demo run (embedded
SmolLM2-135M, the `style` dataset, fp32 LoRA, a few dozen steps: a few minutes on a laptop and a
visible change); on a CUDA GPU they are a classic QLoRA setup (NF4 + double quant, gradient
checkpointing, paged 8-bit AdamW).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from lab import policy, recipe
from lab.data.datasets import dataset_name
from lab.environment import device_type
from lab.errors import LabError
from lab.estimate.simulate import simulate
from lab.estimate.training import TrainingSettings, estimate_training
from lab.models.precision import slow_on
from lab.models.reader import read_architecture
from lab.models.sources import ModelSource
from lab.paths import runs_dir
from lab.recipe import setting
from lab.vocab import OPTIMIZERS, PRECISIONS, TARGET_PRESETS

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


def _f(default, help: str, **meta):
    """A dataclass field with its help text (and optional choices/min/max) in metadata."""
    kw = {"default_factory": default} if callable(default) and not isinstance(default, type) else {"default": default}
    return field(metadata={"help": help, **meta}, **kw)


@dataclass
class TrainConfig:
    # ---- what to train
    model: str = _f(
        "embedded",
        "Base model: 'embedded' (SmolLM2-135M-Instruct, offline), a local model folder, or a Hub id when online.",
    )
    dataset: str = _f(
        "style",
        "Bundled dataset name (infra-alpaca, banking-intents, style), a .jsonl/.csv file or folder "
        "(Alpaca, chat messages or prompt/completion rows), or a Hub dataset id when online.",
    )
    skip_bad_rows: bool = _f(
        False, "Skip malformed dataset rows (they are listed with their line numbers) instead of refusing the dataset.",
        label="Skip malformed rows",
    )
    precision: str = _f(
        "fp32",
        "Precision the frozen base model is loaded at. nf4/nf4-dq/fp4 = QLoRA (4-bit base, "
        "bitsandbytes); int8 = LLM.int8(); bf16/fp16/fp32 = plain LoRA. On CPU, 4-bit works but "
        "is ~3x slower per step than fp32 (weights are dequantized on every matmul).",
        label="Precision of the base", choices=tuple(PRECISIONS),
    )
    # ---- LoRA (peft.LoraConfig)
    r: int = setting("r")
    alpha: float = setting("alpha")
    dropout: float = setting("dropout")
    targets: str = setting("targets")
    use_rslora: bool = _f(
        False, "rsLoRA: scale by alpha/sqrt(r) instead of alpha/r, which keeps high ranks learning (peft use_rslora).",
        label="rsLoRA",
    )
    use_dora: bool = setting("use_dora")
    loraplus_ratio: float = _f(
        0.0,
        "LoRA+: learning rate of B = ratio x learning rate of A (peft create_loraplus_optimizer). "
        "0 = off; the LoRA+ paper suggests 16.",
        label="LoRA+ ratio", min=0.0, max=64.0, step=1.0,
    )
    # ---- optimisation (trl.SFTConfig / transformers.TrainingArguments)
    learning_rate: float = _f(
        1e-3,
        "Peak learning rate of the LoRA weights. LoRA tolerates far higher rates than full fine-tuning (1e-4 to 1e-3).",
        label="Learning rate", min=0.0, max=1.0, step=1e-4, format="%.1e",
        aliases=("--lr",),
    )
    epochs: float = _f(1.0, "Passes over the training split. Ignored when max steps is set (> 0).",
                        label="Epochs", min=0.0, max=100.0, step=0.5)
    max_steps: int = _f(
        20, "Optimizer steps to run; > 0 overrides epochs. The CPU demo uses 20 (the style is learned by then).",
        label="Max steps", min=-1,
    )
    batch_size: int = setting("batch_size")
    grad_accum: int = _f(
        1, "Gradient accumulation: passes per optimizer step. Effective batch = batch size x this (x devices).",
        label="Grad accumulation", min=1, max=1024,
    )
    max_length: int = setting("max_length")
    gradient_checkpointing: bool = setting("gradient_checkpointing")
    optimizer: str = setting("optimizer")
    scheduler: str = _f("linear", "Learning-rate schedule after warmup.", label="Schedule", choices=SCHEDULERS)
    warmup_ratio: float = _f(0.0, "Fraction of the steps spent ramping the learning rate up from 0.",
                              label="Warmup ratio", min=0.0, max=0.5, step=0.05)
    weight_decay: float = _f(0.0, "AdamW weight decay on the LoRA weights.",
                              label="Weight decay", min=0.0, max=1.0, step=0.01)
    seed: int = _f(
        42, "Random seed for LoRA initialisation, dropout and data order: same seed + same settings = same run.",
        label="Seed", min=0, max=2**31 - 1,
    )
    # ---- logging, evaluation, checkpoints
    logging_steps: int = _f(
        1, "Log loss, learning rate and throughput every this many steps (each log is one point on the curve).",
        label="Log every (steps)", min=1, max=10_000,
    )
    eval_steps: int = _f(10, "Compute the eval loss on the test split every this many steps; 0 = never.",
                        label="Eval every (steps)", min=0, max=100_000)
    max_eval_rows: int = _f(32, "Use at most this many test rows for the eval loss (it costs forward passes).", min=1)
    save_steps: int = _f(
        10,
        "Save a checkpoint (adapter + optimizer) every this many steps; a crash or out-of-memory keeps the last one.",
        label="Checkpoint every (steps)", min=1, max=100_000,
    )
    save_total_limit: int = _f(2, "Keep only this many checkpoints on disk.", min=1)
    merge: bool = _f(
        False,
        "After training, reload the base at 16/32-bit, merge the adapter into it and save a standalone model in "
        "merged/.",
        label="Merge & export after training",
    )
    # ---- where
    output: str = _f("", "Run folder. Empty = runs/<name>, named {base}-{dataset}_SFT_LoRa{r}_{PRECISION}-<timestamp>.")

    # ------------------------------------------------------------------
    @classmethod
    def help(cls, name: str) -> str:
        return FIELDS[name].metadata["help"]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        unknown = set(data) - set(FIELDS)
        if unknown:
            raise LabError(f"Unknown training option(s): {', '.join(sorted(unknown))}.", f"Known: {', '.join(FIELDS)}.")
        return cls(**data)

    def memory_settings(self, device: str | None = None):
        """This run as the calculator's TrainingSettings (`lab.estimate`): the same recipe, for the formula
        and for the simulation on fake tensors."""

        return TrainingSettings.for_run(self.to_dict(), "cpu" if (device or device_type()) == "cpu" else "cuda")

    def memory_estimate(self, device: str | None = None):
        """The calculator's training-memory formula for this run (`lab.estimate.training`)."""

        device = device or device_type()
        est = estimate_training(read_architecture(self.model), self.memory_settings(device))
        if device == "cpu":  # no CUDA context on a CPU: the term is a GPU's
            est = replace(est, components={k: v for k, v in est.components.items() if k != "cuda_context"},
                          formulas={k: v for k, v in est.formulas.items() if k != "cuda_context"})
        return est

    def simulate_memory(self, device: str | None = None):
        """One step of this run simulated on fake tensors (`lab.estimate.simulate`), on this device's code paths."""

        device = device or device_type()
        return simulate(read_architecture(self.model), self.memory_settings(device), device)

    def validate(self, device: str | None = None) -> TrainConfig:
        """Check every value early, with messages that name the bad one. Returns self."""
        device = device or device_type()
        for f in fields(self):
            recipe.check(f.name, getattr(self, f.name), f.metadata)
        if OPTIMIZERS[self.optimizer].cuda_only and device != "cuda":
            raise LabError(f"optimizer={self.optimizer} needs a CUDA GPU (this machine: {device}).",
                           "Use adamw_torch on CPU.")
        if slow_on(self.precision, device):
            raise LabError(
                f"precision={self.precision} trains ~20x slower than fp32 on this CPU (no fast half-precision matmul).",
                "Use fp32 on CPU, or nf4 to see QLoRA's 4-bit base at work.",
            )
        if self.max_steps <= 0 and self.epochs <= 0:
            raise LabError(
                "Both epochs and max_steps are 0: the run would do nothing.", "Set max_steps > 0 or epochs > 0."
            )
        if not self.targets.strip(" ,"):
            raise LabError(f"targets={self.targets!r} names no module.",
                           f"Use a preset ({', '.join(TARGET_PRESETS)}) or module names, e.g. q_proj,v_proj.")
        return self


FIELDS = {f.name: f for f in fields(TrainConfig)}


def default_config(device: str | None = None, **overrides) -> TrainConfig:
    """Defaults for this device: the CPU demo, or QLoRA on a CUDA GPU."""
    device = device or device_type()
    cfg = TrainConfig()
    if device == "cuda":  # the GPU recipe (lab.recipe.GPU), one sequence per pass, accumulated to 8 per step
        cfg = replace(cfg, **recipe.GPU, learning_rate=2e-4, max_steps=-1, epochs=1.0, grad_accum=8)
    return replace(cfg, **overrides)


def planned_steps(cfg: TrainConfig, rows: int) -> int:
    """Optimizer steps the run will take: max_steps, or epochs over `rows` training rows."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * math.ceil(rows / cfg.batch_size) / cfg.grad_accum))


REPEATS_WARN = 10  # passes over every row beyond which a run memorises rather than learns (loss -> 0)


def repetition_warning(cfg: TrainConfig, rows: int) -> str | None:
    """A run that sees each training row many times memorises it: its training loss heads to 0 and says
    nothing about other inputs. Said before it starts (the page, the CLI)."""
    if rows <= 0:
        return None
    passes = planned_steps(cfg, rows) * cfg.batch_size * cfg.grad_accum / rows
    if passes <= REPEATS_WARN:
        return None
    return (f"This run sees each of its {rows} training row{'s' * (rows != 1)} about {passes:.0f} times: it will "
            "memorise them, and a training loss near 0 will mean memorised, not learned. Add rows, train fewer "
            "steps, or watch the eval loss on held-out rows.")


def page_precision(device: str | None = None) -> str:
    """The Training page's default base precision: a 4-bit QLoRA base wherever bitsandbytes runs (its CPU
    kernels included), because QLoRA is what the page is about. The CLI keeps `default_config`'s (fp32 on a
    CPU: its demo run is about 3x quicker per step, as no weight has to be dequantized at each matmul)."""
    device = device or device_type()
    if device == "cuda":
        return default_config(device).precision
    return "nf4" if importlib.util.find_spec("bitsandbytes") is not None else default_config(device).precision


def run_name(cfg: TrainConfig, base_display_name: str, dataset_short: str, when: float | None = None) -> str:
    """{base}-{dataset}_SFT_LoRa{r}_{PRECISION}-YYYYmmdd-HHMMSS (file-system safe)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when or time.time()))
    name = f"{base_display_name}-{dataset_short}_SFT_LoRa{cfg.r}_{cfg.precision.upper()}-{stamp}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def run_dir_for(cfg: TrainConfig, source: ModelSource, when: float | None = None) -> Path:
    """Where a run of `cfg` on `source` lives: `cfg.output` when given (in public mode a run name, always inside
    runs/: lab.policy), else runs/<run_name>. The runner and the training queue both name run folders here."""

    if cfg.output:
        return policy.output_dir(cfg.output)
    return runs_dir() / run_name(cfg, source.display_name, dataset_name(cfg.dataset), when)


# --------------------------------------------------------------------------- CLI flags
def add_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig | None = None) -> None:
    """One --flag per field, with the field's help; booleans are --flag / --no-flag."""
    defaults = defaults or default_config()
    for f in fields(TrainConfig):
        default = getattr(defaults, f.name)
        typ = {"bool": bool, "int": int, "float": float, "str": str}.get(str(f.type), str)
        recipe.add_argument(parser, f.name, f.metadata, typ, default, f" (default: {default})")


def from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{name: getattr(args, name) for name in FIELDS})


def to_cli_args(cfg: TrainConfig, exclude: tuple[str, ...] = ()) -> list[str]:
    """The `python -m lab train` flags that reproduce `cfg` (the page starts exactly this), leaving out the
    fields named in `exclude` (e.g. "output", which the caller adds itself)."""
    unknown = set(exclude) - set(FIELDS)
    if unknown:
        raise ValueError(f"to_cli_args: no such field(s) {sorted(unknown)}")  # a programming error, not user input
    out = []
    for f in fields(TrainConfig):
        if f.name in exclude:
            continue
        v = getattr(cfg, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(v, bool):
            out.append(flag if v else "--no-" + f.name.replace("_", "-"))
        else:
            out += [flag, str(v)]
    return out
