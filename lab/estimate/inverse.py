"""The inverse question: the largest batch, sequence length or LoRA rank that fits a GPU.

The samples' steps, replayed at every value (lab.estimate.replay), usually settle it: the value the replay says
is the largest that fits is simulated, and where its peak is the replay's to the byte, the replay's word that one
more does not fit is taken (`_replay_search`): Qwen2.5-7B's three answers on an A10G take seven simulations
besides the page's own (batches 2, 4, 14; 2,048, 4,096 and 14,704 tokens; rank 512, the widest), where they took
eleven. Where the samples' streams differ, or the checks run out, the search below takes over, and the replay
again as soon as a check is a second step alike.

Memory is a polynomial in each knob — linear in the batch size and the rank, linear or quadratic in
the sequence length (eager attention keeps seq² scores). A few simulations at spread-out values give
the polynomial; solving it against the GPU's budget (the same verdict as the fit table: peak + CUDA
context + fragmentation within the card) gives the answer, and one more simulation at that value
checks it, and one more 2% above checks that it is the largest (where the smallest sample does not
fit, 1 is simulated, and if that does not fit either the answer is 0 at once: Qwen3-30B-A3B's bf16
experts alone overfill an 80 GB card, which took 17 simulations for three zeros). If a check fails (the polynomial was
off), the next value is read off a straight line through two simulated points, one simulation a
step, until the largest value known to fit and the smallest known not to are 2% apart (at most six
simulations after the samples, so a curve that bends hard may end wider than 2%: the answer then says so,
`settled` False and `above` the smallest value known not to fit):

- between those two, the line joining them, kept 2% inside either end: where the peak is straight
  (piecewise linear in the batch: Qwen2.5-0.5B's peak grows ~2/3 as fast at small batches as at
  large ones, the step's peak moving from the loss to the layers, so the samples' line overshoots)
  one check lands on the answer and one more 2% above proves it: bisection took six simulations
  where the lines take three. An end kept twice in a row pulls the line half as hard (Illinois),
  so a bending curve does not creep up on the answer from one side;
- while nothing simulated is known not to fit, at least twice the last stride beyond the largest
  value that fits, to get past the answer (Qwen2.5-7B's longest sequence on an A10G went up 2% a
  check until the checks ran out, nine simulations, no value known not to fit; now six, bracketed);
  a line that says the largest value that fits is the answer checks 2% more.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from functools import partial

import numpy as np

from lab.errors import LabError
from lab.estimate import pool
from lab.estimate.experts import expert_groups
from lab.estimate.gpus import Gpu, budget_for_peak, gpu_verdict
from lab.estimate.lora import resolve_targets
from lab.estimate.replay import replay_peak
from lab.estimate.simulate import Simulation, is_cached, simulate
from lab.estimate.tracker import cancel_on
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


# Samples whose steps replay into each other (lab.estimate.replay) in the regime of most answers: past the 1,536
# rows of bitsandbytes' fused 4-bit kernel and within one 4,096-token tile of TRL's chunked log-probabilities (the
# batch of 1 serves a card that takes little, and is the page's default: simulated already).
SAMPLES = {"batch_size": (1, 2, 4), "max_length": (2048, 4096), "r": (8, 64)}
# The rank's samples are the smallest and the widest the targets allow (up to MAX_RANK_SAMPLE: a rank any wider is a
# search's to find), not 8 and 64: the widest is often the answer itself (Qwen2.5-7B on an A10G: 512, settled by the
# samples alone), and where it is not, the replay interpolates between the samples instead of extrapolating far past
# them (Llama-3.1-70B on an H100: 16 and 1,024 replay to 708, one check; 16 and 64 replayed to 704, and a paged
# state's stream then differed: four checks).
MAX_RANK_SAMPLE = 8192
DEGREE = {"batch_size": 1, "max_length": 2, "r": 1}
MAX_BATCH = 1 << 16
MAX_CHECKS = 6
SimulateMany = Callable[[list[TrainingSettings]], list[Simulation]]


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
    above: int | None = None  # the smallest value simulated that does not fit (None: every value tried fits)
    settled: bool = True  # `above` is within 2% of the answer, or the answer is `upper`: nothing larger fits
    above_replayed: bool = False  # `above` (answer + 1) was replayed, not simulated: the answer's simulated peak
    # is the replay's to the byte, and the replay one unit on is over the budget

    def to_json(self) -> dict:
        return {**asdict(self), "note": self.gap_note()}  # what an unsettled answer leaves open, in words

    def gap_note(self) -> str:
        """What an unsettled answer leaves open ('' when settled): the search ran out of checks with a gap."""
        if self.settled:
            return ""
        beyond = f"{self.above:,} does not fit" if self.above is not None else \
            f"nothing tried above it failed (up to {self.upper:,} allowed)"
        return (f"at least {self.value:,}: {beyond}; the search stopped after {len(self.points)} simulations "
                "without closing the gap to 2%.")


def upper_bound(arch: Architecture, settings: TrainingSettings, knob: str) -> int:

    if knob == "max_length":
        return int(arch.max_position_embeddings or 1 << 20)
    if knob == "r":
        names = resolve_targets(arch, settings.targets, settings.r)  # broad presets: layers narrower than r left out
        widths = [min(g.in_features, g.out_features) for g in arch.linears if g.name in names]
        widths += [min(g.dims) for g in expert_groups(arch) if g.name in names]
        return min(widths, default=MAX_BATCH)
    return MAX_BATCH


def max_fitting(arch: Architecture, settings: TrainingSettings, gpu: Gpu, knob: str,
                known: Simulation | None = None, simulate_many: SimulateMany | None = None) -> InverseAnswer:
    """The largest value of `knob` whose simulated step fits `gpu`, other settings as given. `known`: the step at
    `settings` themselves, simulated already. `simulate_many`: simulates several settings side by side (in the
    simulation processes, lab.estimate.pool; see solve_all), and the samples are then all asked for at once, unless
    the step at the settings themselves does not fit (then the smallest sample likely does not either, and the
    others would be simulated for nothing: a MoE's experts); without it, each step is simulated here in turn."""
    _check_knob(knob, settings.method)
    upper, budget = upper_bound(arch, settings, knob), budget_for_peak(gpu)
    runs: dict[int, Simulation] = {}  # what was asked for: the replay is drawn through these
    peaks = partial(_peaks, runs, arch, settings, knob, known, simulate_many)

    def peak(x: int) -> int:
        return peaks([x])[0]

    ahead = simulate_many is not None and (known is None or known.peak_bytes <= budget)
    points = _samples(peaks, knob, upper, budget, getattr(settings, knob), ahead)
    if points[0][1] > budget:  # not even 1 fits: 0 at once
        return InverseAnswer(knob, 0, gpu.name, budget, upper, points, [], True, points[0][0])
    coefficients = _fit(points, min(DEGREE[knob], len(points) - 1))
    lo = max((x for x, p in points if p <= budget), default=0)  # known to fit
    hi = min((x for x, p in points if p > budget), default=upper + 1)  # known not to (upper + 1: none yet)

    def next_value(guess: int | None) -> int:
        return _next_value(guess, lo, hi, upper, [x for x, p in points if p <= budget])

    line: dict[int, int] = {}  # the peaks the lines are drawn through (an end kept twice counts half as far: Illinois)
    used, replayed, last_fit = 0, False, None
    while True:
        # the replay wherever two steps alike allow it (again after each line check: a check may be the second)
        lo, hi, checks, replayed = _replay_search(runs, points, lo, hi, upper, budget, DEGREE[knob], peak,
                                                  MAX_CHECKS - used)
        line.update((x, p) for x, p in points if x not in line)
        candidate = next_value(_between(line, lo, hi, budget) if used or checks else
                               _solve(coefficients, budget, upper))
        used += checks
        if replayed or used >= MAX_CHECKS or candidate <= lo or lo >= upper or _within_2pct(lo, hi):
            break
        p = peak(candidate)
        used += 1
        points.append((candidate, p))
        line[candidate] = p
        fits = gpu_verdict(p, gpu).fits
        if fits:
            lo = candidate
        else:
            hi = candidate
        if fits == last_fit:  # the same end moved twice: the other, kept, pulls the line half as hard
            kept = hi if fits else lo
            if kept in line:
                line[kept] = budget + (line[kept] - budget) // 2
        last_fit = fits
    return _answer(knob, lo, hi, gpu, budget, upper, points, coefficients, replayed)


def _next_value(guess: int | None, lo: int, hi: int, upper: int, fitting: list[int]) -> int:
    """The next value to simulate, from a line's `guess` (None: no line), between `lo` (fits) and `hi` (does not;
    upper + 1: nothing known not to fit yet). `fitting`: every value simulated that fits."""
    step = max(1, lo // 50)
    if guess is not None and guess >= max(lo, 1):  # (0 with nothing fitting: bisect rather than try 1)
        if hi > upper and guess <= lo + step:  # the line says `lo` is the answer: is 2% more still fitting?
            return min(upper, lo + step)
        if hi > upper:  # nothing known not to fit: at least twice the last stride, to get past the answer
            fitting = sorted(fitting)
            stride = lo - fitting[-2] if len(fitting) > 1 else step
            return min(upper, max(guess, lo + 2 * stride, lo + step))
        # 2% inside either end: a line that lands next to one end settles the answer with one check
        return min(max(guess, lo + step), max(hi - step, lo + step), hi - 1)
    if hi <= upper:
        return (lo + hi) // 2  # bisect between what fits and what does not
    return min(upper, lo + step)  # nothing known to fail yet: is 2% more still fitting?


def _peaks(runs: dict[int, Simulation], arch: Architecture, settings: TrainingSettings, knob: str,
           known: Simulation | None, simulate_many: SimulateMany | None, xs: list[int]) -> list[int]:
    """The simulated peak at each value of `knob` in `xs`, simulating (all at once) those not in `runs` yet."""
    new, current = [x for x in dict.fromkeys(xs) if x not in runs], getattr(settings, knob)
    if known is not None and current in new:
        runs[current] = known
        new.remove(current)
    batch = [replace(settings, **{knob: int(x)}) for x in new]
    sims = simulate_many(batch) if simulate_many else [simulate(arch, s) for s in batch]
    runs.update(zip(new, sims, strict=True))
    return [runs[x].peak_bytes for x in xs]


def _samples(peaks, knob: str, upper: int, budget: int, current: int, ahead: bool = False) -> list[tuple[int, int]]:
    """The samples' (value, peak), in order. Where the smallest does not fit, 1 is simulated next, and nothing larger
    is (a MoE's bf16 experts alone may overfill the card). A rank of at most half the largest sample stands for the
    smallest: the step at the current settings is simulated already (the page's and
    the CLI's own peak), so the rank costs one simulation less. `ahead`: every sample is asked for at once (side by
    side in the simulation processes: the others are wasted only where not even the smallest fits)."""
    xs = list(SAMPLES[knob])
    if knob == "r" and upper <= MAX_RANK_SAMPLE:
        xs[-1] = upper  # (SAMPLES' comment says why)
    if knob == "r" and 0 < current <= xs[-1] // 2:
        xs[0] = current
    xs = sorted({min(x, upper) for x in xs})
    if ahead:
        peaks(xs)
    points = [(xs[0], peaks([xs[0]])[0])]
    if points[0][1] > budget:
        if xs[0] > 1:
            points.insert(0, (1, peaks([1])[0]))
        if points[0][1] > budget or not ahead:  # (the larger samples cannot fit where the smallest does not: the
            return points  # search goes on between 1 and it, unless they were asked for already)
    return sorted(points + list(zip(xs[1:], peaks(xs[1:]), strict=True)))


def _within_2pct(lo: int, hi: int) -> bool:
    """The search's stopping rule: what fits and what does not are 2% (at least 1) apart."""
    return hi - lo <= max(1, lo // 50)


def _check_knob(knob: str, method: str) -> None:
    if knob not in INVERSE_KNOBS:
        raise LabError(f"Cannot solve for {knob!r}.", f"Choose one of: {', '.join(INVERSE_KNOBS)}.")
    if knob not in knobs_for(method):
        raise LabError("Full fine-tuning has no LoRA rank to solve for.", "Pick batch_size or max_length.")


def _answer(knob: str, lo: int, hi: int, gpu: Gpu, budget: int, upper: int, points: list, coefficients: list,
            above_replayed: bool = False) -> InverseAnswer:
    """`lo` known to fit, `hi` known not to (upper + 1: nothing found that does not fit)."""
    checked = lo == 0 or any(x == lo for x, _ in points)  # the answer itself was simulated
    settled = lo >= upper or (hi <= upper and _within_2pct(lo, hi))
    return InverseAnswer(knob, lo, gpu.name, budget, upper, sorted(points), coefficients, checked,
                         hi if hi <= upper else None, settled, above_replayed)


def _replay_search(runs: dict, points: list, lo: int, hi: int, upper: int, budget: int, degree: int, peak,
                   checks: int = MAX_CHECKS) -> tuple[int, int, int, bool]:
    """Simulate what the replayed steps (lab.estimate.replay) say is the answer, then the value above it: where
    the replay holds, two simulations after the samples bracket the answer to the unit (a batch of 14 fits and 15
    does not; 14,645 tokens fit and 14,646 do not). Where it does not (a size that stops growing, such as TRL's
    4,096-token log-probability tile), each check joins the values the replay is drawn through, and the next
    replay is nearer. Simulations whose streams differ (a kernel or a paged state that switches at some size) do
    not replay into each other: with no two alike, the line search takes over.

    A check that fits with the replay's peak to the byte ends the search when the replay one unit on is over the
    budget: that unit is not simulated (Qwen2.5-7B on an A10G: 14 simulated, 15 replayed; 14,704 tokens
    simulated, 14,705 replayed). The replay is then right at the answer, and the unit above is an extrapolation
    by one; were it wrong, the answer would err low, never high: the answer itself is always simulated.
    At most `checks` simulations. Returns lo, hi, the simulations used and whether `hi` was replayed."""
    used = 0
    while used < checks and lo < upper and not _within_2pct(lo, hi):
        basis = _basis(runs, lo, hi, degree)
        if basis is None:
            break
        top = min(hi - 1, upper)
        candidate = _largest(partial(replay_peak, basis), budget, lo, top)
        if candidate <= lo:  # the replay says `lo` is the answer: does one more fit?
            candidate = lo + 1
        p = peak(candidate)
        points.append((candidate, p))
        used += 1
        if p > budget:
            hi = candidate
            continue
        lo = candidate
        if lo + 1 < min(hi, upper + 1) and p == replay_peak(basis, lo) and replay_peak(basis, lo + 1) > budget:
            return lo, lo + 1, used, True  # (a `hi` of lo + 1 was simulated: the loop ends by itself)
    return lo, hi, used, False


def _basis(runs: dict, lo: int, hi: int, degree: int) -> list | None:
    """The simulations to replay from: of the groups of two or more whose streams are alike, the one with a value
    nearest the answer's bracket, its degree + 1 values nearest it (a check of another shape, such as one
    simulated across bitsandbytes' fused-kernel limit, does not join it)."""
    groups: dict[str, list] = {}
    for x, sim in runs.items():
        if sim.trace is not None:
            groups.setdefault(sim.trace.shape, []).append((x, sim.trace))
    groups = {k: g for k, g in groups.items() if len(g) >= 2}
    if not groups:
        return None

    def distance(xt) -> int:
        return min(abs(xt[0] - lo), abs(xt[0] - hi))

    best = min(groups.values(), key=lambda g: min(map(distance, g)))
    return sorted(best, key=distance)[:degree + 1]


def _largest(replayed, limit: int, lo: int, top: int) -> int:
    """The largest x in [lo, top] whose replayed peak is within `limit` (lo if none above it; the replay grows)."""
    while lo < top:
        mid = (lo + top + 1) // 2
        if replayed(mid) <= limit:
            lo = mid
        else:
            top = mid - 1
    return lo


def solve_all(arch: Architecture, settings: TrainingSettings, gpu: Gpu, knobs, report=None, cancel=None) -> dict:
    """`max_fitting` for each knob. With simulation processes (lab.estimate.pool) the knobs' searches run side by
    side, each in a thread of this process that hands its steps to the processes (its samples all at once); without,
    one after the other here. `report`/`cancel`: lab.tasks.BackgroundTask's hooks, for pages: once cancelled, each
    search stops at its next simulated layer or phase, Cancelled. Each report carries the answers found so far as
    its partial result, so a page shows each answer as soon as it is known."""
    knobs = list(knobs)
    for knob in knobs:
        _check_knob(knob, settings.method)
    # the step at the settings themselves, where this process has simulated it (the page's own): no search repeats it
    known = simulate(arch, settings) if is_cached(arch, settings) else None
    answers: dict[str, InverseAnswer] = {}
    if report:
        report(f"solving for {', '.join(knobs)}", partial={})
    if not pool.enabled():
        for knob in knobs:
            with cancel_on(cancel):
                answers[knob] = max_fitting(arch, settings, gpu, knob, known)
            if report:
                report(f"solved {knob}", partial=dict(answers))
        return answers
    failed = threading.Event()  # one search failed (or was cancelled): the others stop too
    many = partial(_in_processes, arch, _Either(cancel, failed))
    with ThreadPoolExecutor(len(knobs), thread_name_prefix="inverse") as searches:
        running = {searches.submit(max_fitting, arch, settings, gpu, k, known, many): k for k in knobs}
        try:
            for search in as_completed(running):
                answers[running[search]] = search.result()
                if report:
                    report(f"solved {running[search]}", partial=dict(answers))
        except BaseException:
            failed.set()
            raise
    return {k: answers[k] for k in knobs}


class _Either:
    """Set when either event is (the page's cancel may be None)."""

    def __init__(self, first: threading.Event | None, second: threading.Event) -> None:
        self.first, self.second = first, second

    def is_set(self) -> bool:
        return self.second.is_set() or (self.first is not None and self.first.is_set())


def _in_processes(arch: Architecture, cancel, batch: list[TrainingSettings]) -> list[Simulation]:
    """The steps of `batch`, side by side in the simulation processes (those this process has cached, from here)."""
    out = {i: simulate(arch, s) for i, s in enumerate(batch) if is_cached(arch, s)}
    new = [i for i in range(len(batch)) if i not in out]
    for j, sim in pool.run(simulate, [(arch, batch[i]) for i in new], cancel):
        out[new[j]] = sim
    return [out[i] for i in range(len(batch))]


def _between(peaks: dict[int, int], lo: int, hi: int, budget: int) -> int | None:
    """Where a line through two simulated points meets `budget`: the line from `lo` (fits) to `hi` (does not),
    or, with nothing simulated that does not fit, the line through the two largest values that fit, extended.
    None without two such points, or where the line does not rise."""
    if lo not in peaks:
        return None
    below = [x for x in peaks if x < lo]
    a, b = (lo, hi) if hi in peaks else (max(below, default=None), lo)
    if a is None or peaks[b] <= peaks[a]:
        return None
    return a + int((budget - peaks[a]) * (b - a) // (peaks[b] - peaks[a]))


def _fit(points: list[tuple[int, int]], degree: int) -> list[float]:
    """Least-squares polynomial coefficients c0, c1, ... through the points."""
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
