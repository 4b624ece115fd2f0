"""The inverse question: the largest batch, sequence length or LoRA rank that fits a GPU.

Memory is a polynomial in each knob — linear in the batch size and the rank, linear or quadratic in
the sequence length (eager attention keeps seq² scores). A few simulations at spread-out values give
the polynomial; solving it against the GPU's budget (the same verdict as the fit table: peak + CUDA
context + fragmentation within the card) gives the answer, and one more simulation at that value
checks it, and one more 2% above checks that it is the largest. If a check fails (the polynomial was
off), the next value is read off the straight line between the largest value known to fit and the
smallest known not to, one simulation a step, until the two are 2% apart (at most six simulations
after the samples). The line, not the middle: the peak is piecewise linear in the batch (the step's
peak moves from the loss to the layers as the batch grows: SmolLM2 and Qwen2.5 at small batches
grow ~2/3 as fast as at large ones, so the samples' line overshoots), and two points on the same
piece give the answer at once — bisection took six simulations where the line takes two. Where a
piece bends (the rank jumps where bitsandbytes starts paging optimizer state), a line that lands
on the value known to fit is nudged 2% above it, and one that lands nowhere between is bisected.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from lab.errors import LabError
from lab.estimate.gpus import Gpu, budget_for_peak, gpu_verdict
from lab.estimate.lora import resolve_targets
from lab.estimate.simulate import simulate
from lab.estimate.training import TrainingSettings
from lab.models.architecture import Architecture

INVERSE_KNOBS = {
    "batch_size": "The largest per-device batch size that fits.",
    "max_length": "The longest sequence (tokens) that fits, up to the model's context.",
    "r": "The largest LoRA rank that fits, up to the targeted layers' width (LoRA/QLoRA only).",
}
INVERSE_LABELS = {"max_length": "max seq len"}  # "max max length" would read as a typo


def knobs_for(method: str) -> list[str]:
    """The knobs the inverse question can solve for this method: full fine-tuning has no LoRA rank."""
    return [k for k in INVERSE_KNOBS if not (k == "r" and method == "full")]


SAMPLES = {"batch_size": (1, 2, 4), "max_length": (256, 2048, 8192), "r": (8, 64)}
DEGREE = {"batch_size": 1, "max_length": 2, "r": 1}
MAX_BATCH = 1 << 16
MAX_CHECKS = 6


@dataclass(frozen=True)
class InverseAnswer:
    knob: str
    value: int  # 0: not even the smallest value fits
    gpu: str
    budget_bytes: int  # the largest peak the GPU takes (the fit table's verdict, solved for the peak)
    upper: int  # the largest value the model allows
    points: list[tuple[int, int]] = field(default_factory=list)  # (value, simulated peak) used
    coefficients: list[float] = field(default_factory=list)  # peak ≈ c0 + c1·x (+ c2·x²)
    checked: bool = False  # the answer was confirmed by a simulation

    def to_json(self) -> dict:
        return asdict(self)


def upper_bound(arch: Architecture, settings: TrainingSettings, knob: str) -> int:

    if knob == "max_length":
        return int(arch.max_position_embeddings or 1 << 20)
    if knob == "r":
        from lab.estimate.experts import expert_groups

        names = resolve_targets(arch, settings.targets, settings.r)  # broad presets: layers narrower than r left out
        widths = [min(g.in_features, g.out_features) for g in arch.linears if g.name in names]
        widths += [min(g.dims) for g in expert_groups(arch) if g.name in names]
        return min(widths, default=MAX_BATCH)
    return MAX_BATCH


def max_fitting(arch: Architecture, settings: TrainingSettings, gpu: Gpu, knob: str) -> InverseAnswer:
    """The largest value of `knob` whose simulated step fits `gpu`, other settings as given."""
    if knob not in INVERSE_KNOBS:
        raise LabError(f"Cannot solve for {knob!r}.", f"Choose one of: {', '.join(INVERSE_KNOBS)}.")
    if knob not in knobs_for(settings.method):
        raise LabError("Full fine-tuning has no LoRA rank to solve for.", "Pick batch_size or max_length.")
    upper = upper_bound(arch, settings, knob)
    budget = budget_for_peak(gpu)

    def peak(x: int) -> int:
        return simulate(arch, replace(settings, **{knob: int(x)})).peak_bytes

    xs = sorted({min(x, upper) for x in SAMPLES[knob]})
    points = [(x, peak(x)) for x in xs]
    coefficients = _fit(points, min(DEGREE[knob], len(points) - 1))
    lo = max((x for x, p in points if p <= budget), default=0)  # known to fit
    hi = min((x for x, p in points if p > budget), default=upper + 1)  # known not to (upper + 1: none yet)

    def next_value(guess: int | None) -> int:
        step = max(1, lo // 50)
        if guess is not None and lo <= guess < hi:
            return min(max(guess, lo + step), hi - 1)  # at least 2% above what fits: is it the largest?
        if hi <= upper:
            return (lo + hi) // 2  # bisect between what fits and what does not
        return min(upper, lo + step)  # nothing known to fail yet: is 2% more still fitting?

    candidate = next_value(_solve(coefficients, budget, upper))
    for _ in range(MAX_CHECKS):
        if candidate <= lo or lo >= upper or hi - lo <= max(1, lo // 50):
            break
        p = peak(candidate)
        points.append((candidate, p))
        if gpu_verdict(p, gpu).fits:
            lo = candidate
        else:
            hi = candidate
        candidate = next_value(_between(dict(points), lo, hi, budget))
    checked = lo == 0 or any(x == lo for x, _ in points)  # the answer itself was simulated
    return InverseAnswer(knob, lo, gpu.name, budget, upper, sorted(points), coefficients, checked)


def solve_all(arch: Architecture, settings: TrainingSettings, gpu: Gpu, knobs, report=None, cancel=None) -> dict:
    """`max_fitting` for each knob (`report`/`cancel`: lab.tasks.BackgroundTask's hooks, for pages)."""
    answers = {}
    for knob in knobs:
        if cancel is not None and cancel.is_set():
            break
        if report:
            report(f"solving for {knob}")
        answers[knob] = max_fitting(arch, settings, gpu, knob)
    return answers


def _between(peaks: dict[int, int], lo: int, hi: int, budget: int) -> int | None:
    """Where the straight line from (lo, its peak) to (hi, its peak) meets `budget`; None without both points."""
    if lo not in peaks or hi not in peaks or peaks[hi] <= peaks[lo]:
        return None
    return lo + int((budget - peaks[lo]) * (hi - lo) // (peaks[hi] - peaks[lo]))


def _fit(points: list[tuple[int, int]], degree: int) -> list[float]:
    """Least-squares polynomial coefficients c0, c1, ... through the points."""
    import numpy as np

    xs = np.array([x for x, _ in points], dtype=float)
    ys = np.array([p for _, p in points], dtype=float)
    if degree <= 0 or len(points) == 1:
        return [float(ys.mean())]
    return [float(c) for c in np.polynomial.polynomial.polyfit(xs, ys, degree)]


def _solve(c: list[float], budget: int, upper: int) -> int:
    """The largest integer x in [0, upper] with c0 + c1·x + c2·x² ≤ budget (the fit grows with x)."""
    c0, c1, c2 = (c + [0.0, 0.0])[:3]
    if c0 + c1 + c2 > budget:
        return 0
    if abs(c2) < 1e-12:
        x = (budget - c0) / c1 if c1 > 0 else upper
    else:
        disc = c1 * c1 - 4 * c2 * (c0 - budget)
        x = (-c1 + math.sqrt(max(disc, 0.0))) / (2 * c2) if c2 > 0 else upper
    return max(0, min(upper, int(math.floor(x))))


def seq_len_curve(answer: InverseAnswer, lengths: list[int]) -> list[tuple[int, int]]:
    """The fitted peak at each sequence length (for the page's chart; the points themselves are simulated)."""
    c = (answer.coefficients + [0.0, 0.0])[:3]
    return [(n, int(c[0] + c[1] * n + c[2] * n * n)) for n in lengths]
