"""Everything a training run checks before it loads anything: the launch, the settings, the base, the LoRA
targets, the dataset, the output folder and the device's lock.

These checks need torch and a model's config, not TRL, peft or bitsandbytes, whose imports take seconds
(lab.training.runner). `python -m lab train` runs them first, so a refused run says why at once, in one
line, instead of after those imports: a run on a busy device, a malformed dataset, a path public mode refuses,
`accelerate launch --cpu`. The runner then trains on what was checked, without checking it again.
"""

from __future__ import annotations

from dataclasses import dataclass

from lab import policy
from lab.data import datasets as ds
from lab.environment import device_type
from lab.estimate.lora import resolve_targets
from lab.estimate.simulate import peft_targets
from lab.models.reader import read_architecture
from lab.models.sources import ModelSource, resolve_source
from lab.training import distributed
from lab.training.config import TrainConfig
from lab.training.runs import check_free


@dataclass
class TrainData:
    """The checked dataset splits a run trains and evaluates on."""

    train: ds.DatasetCheck
    eval: ds.DatasetCheck | None


@dataclass
class Checked:
    """What every check found for a run's settings: what the runner trains on."""

    source: ModelSource
    targets: object  # peft's target_modules, or (target_modules, target_parameters): see peft_target_modules
    data: TrainData
    device: str


def check_run(cfg: TrainConfig) -> Checked:
    """Check `cfg` for a run on this device; LabError names the first thing wrong and what to do."""
    distributed.check_launch()
    device = device_type()
    cfg.validate(device)
    if cfg.output:
        policy.output_dir(cfg.output)  # in public mode a run name inside runs/, nothing else
    source = resolve_source(cfg.model)
    targets = peft_target_modules(source, cfg.targets, cfg.r, cfg.use_dora)
    data = check_data(cfg)
    if distributed.is_main_process():  # rank 0 takes the lock for every rank: the others never hold it
        check_free()
    return Checked(source, targets, data, device)


def check_data(cfg: TrainConfig) -> TrainData:
    train_check = ds.check_dataset(cfg.dataset, "train", "skip" if cfg.skip_bad_rows else "refuse")
    eval_check = None
    if cfg.eval_steps > 0 and ds.has_split(cfg.dataset, "test"):
        eval_check = ds.check_dataset(cfg.dataset, "test", "skip")
    return TrainData(train_check, eval_check)


def peft_target_modules(source: ModelSource, targets: str, r: int | None = None, use_dora: bool = False):
    """peft's target_modules for this base: a preset (`lab.vocab.TARGET_PRESETS`) or names, resolved and
    checked against the model's own Linear layers before anything loads ('all-linear' as peft spells it
    where it means the same). On a mixture-of-experts model: (target_modules, target_parameters), the
    fused experts apart (lab.estimate.experts), exactly as the simulation applies them."""
    arch = read_architecture(source)
    if r is None:
        names = resolve_targets(arch, targets)
        return "all-linear" if targets.strip() == "all-linear" else names
    modules, parameters = peft_targets(arch, targets, r, use_dora)
    return (modules if isinstance(modules, str) else list(modules), list(parameters)) if parameters else \
        (modules if isinstance(modules, str) else list(modules))
