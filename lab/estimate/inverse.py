"""The inverse question: the largest batch, sequence length or LoRA rank that fits a memory budget."""

from __future__ import annotations

from dataclasses import replace

from lab.errors import LabError
from lab.estimate.training import TrainingSettings, estimate_training
from lab.models.architecture import Architecture

INVERSE_KNOBS = {
    "batch_size": "The largest per-device batch size that fits.",
    "seq_len": "The longest sequence (tokens) that fits.",
    "r": "The largest LoRA rank that fits (LoRA/QLoRA only).",
}


def max_fitting(arch: Architecture, capacity_bytes: int, knob: str, settings: TrainingSettings,
                upper: int = 1 << 20) -> int:
    """Largest value of `knob` whose estimate stays within `capacity_bytes` (0 if even 1 does not fit).
    Memory grows monotonically with each knob, so a binary search is exact."""
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
    rows = []
    for L in seq_lens:
        est = estimate_training(arch, replace(settings, seq_len=int(L)))
        rows.append({"seq_len": int(L), "total_bytes": est.total_bytes, **est.components})
    return rows
