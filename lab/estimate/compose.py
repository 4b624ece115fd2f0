"""From a simulation of five decoder layers to the model's full depth.

Decoder layers repeat, and so does what they allocate. The simulation runs five layers — the first,
the second, one in the middle, the second-to-last and the last — and the tracker stamps every
allocation and free with the segment of the step it happened in. The full-depth stream is then
written down without running it:

- the forward and backward of the middle layer (segments `("F", 2, step)` and `("B", 2, step)`)
  repeat `L - 4` times, in time;
- everywhere else (weights before the step, the head and loss, the end of the backward, the
  optimizer step) events are filed by the layer whose tensor they are: a run of events on the middle
  layer's tensors repeats `L - 4` times (its weights, gradients, optimizer state, the foreach
  temporaries the optimizer makes for them, activations released with the graph).

Why five: a layer next to the first or the last is not typical — the second layer's backward frees
what the first one left (Gemma-2 scales the embeddings before layer 0), the last layers free a few
tensors of the layer before them at the end of the forward. The middle layer has typical neighbours
on both sides. The peak of a block repeated R times is found in closed form (in its first or its last
repetition, depending on the block's net growth), so a 126-layer model costs what a 5-layer one does.
`tests/test_simulate.py` checks the composed peak against a simulation of every layer.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from lab.estimate.tracker import LiveBytes

SIMULATED_LAYERS = 5
MIDDLE = 2
EXCLUDED = ("paged",)  # allocated outside PyTorch's allocator: shown, not part of the peak


@dataclass
class Block:
    deltas: list[tuple[int, str]]  # (bytes, category) per event
    reps: int
    label: tuple  # the segment label
    first_layer: int = 0  # for a repeated layer block: the layer its first repetition stands for


@dataclass(frozen=True)
class Composed:
    peak_bytes: int
    by_category: dict[str, int]  # live bytes per category at the peak
    peak_at: str  # where in the step, e.g. "backward, layer 32 of 32 (step 2)"
    timeline: list[dict] = field(default_factory=list)  # {"x", "bytes", "phase", "step"}
    excluded: dict[str, int] = field(default_factory=dict)  # e.g. paged optimizer state bytes
    final_by_category: dict[str, int] = field(default_factory=dict)  # live bytes after the last event


def blocks_from(tracker: LiveBytes, categories: list[str], full_layers: int, simulated_layers: int) -> list[Block]:
    """Cut the tracker's event stream into blocks, with how often each repeats at `full_layers` depth."""
    columns = tuple(zip(*tracker.events, strict=True)) if tracker.events else ((), (), ())
    return blocks_of(columns, tracker.segments, [s.nbytes for s in tracker.storages],
                     [s.owner for s in tracker.storages], categories, full_layers, simulated_layers)


def blocks_of(events, segments, sizes, owners, categories, full_layers: int, simulated_layers: int) -> list[Block]:
    """`blocks_from` on a stream's columns (storage index, +1/-1, segment index per event) and each storage's
    size, owner and category: a simulation's, or one replayed at other sizes (lab.estimate.replay)."""
    reps = full_layers - (simulated_layers - 1) if full_layers > simulated_layers else 1
    scale = simulated_layers == SIMULATED_LAYERS and full_layers > simulated_layers
    by_segment: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for idx, sign, seg in zip(*events, strict=True):
        by_segment[seg].append((idx, sign))
    blocks: list[Block] = []
    for seg, seg_events in sorted(by_segment.items()):
        label = segments[seg]
        deltas = [(sign * sizes[i], categories[i]) for i, sign in seg_events]
        if label[0] in ("F", "B"):
            repeat = scale and label[1] == MIDDLE
            blocks.append(Block(deltas, reps if repeat else 1, label, _layer_of(label[1], full_layers, scale)))
            continue
        # by owner: runs of the middle layer's tensors repeat, the rest happens once
        run: list[tuple[int, str]] = []
        run_middle = None
        for (i, _sign), delta in zip(seg_events, deltas, strict=True):
            middle = scale and owners[i] == MIDDLE
            if run and middle != run_middle:
                blocks.append(Block(run, reps if run_middle else 1, label))
                run = []
            run.append(delta)
            run_middle = middle
        if run:
            blocks.append(Block(run, reps if run_middle else 1, label))
    return blocks


def _layer_of(j: int, full_layers: int, scale: bool) -> int:
    """The full model's layer that simulated layer j stands for (the middle one: its first copy)."""
    if not scale or j <= MIDDLE:
        return j
    return full_layers - (SIMULATED_LAYERS - j)


def compose(blocks: list[Block], full_layers: int, max_points: int = 60) -> Composed:
    """Walk the blocks once: the peak, what it is made of, and a timeline small enough to plot."""
    totals: dict[str, int] = defaultdict(int)
    live = 0
    best, best_cats, best_at = -1, {}, ""
    x = 0
    points: list[dict] = []
    excluded_peak: dict[str, int] = defaultdict(int)
    for block in blocks:
        prefix = 0
        cats: dict[str, int] = defaultdict(int)
        top, top_cats, top_i = 0, {}, -1
        series = []
        for i, (delta, cat) in enumerate(block.deltas):
            cats[cat] += delta
            if cat in EXCLUDED:
                series.append(prefix)
                continue
            prefix += delta
            series.append(prefix)
            if prefix > top:
                top, top_cats, top_i = prefix, dict(cats), i
        r_star = block.reps - 1 if prefix > 0 else 0
        candidate = live + r_star * prefix + top
        if candidate > best:
            best = candidate
            best_cats = {c: totals[c] + r_star * cats[c] + top_cats.get(c, 0) for c in dict.fromkeys([*totals, *cats])}
            best_at = describe(block.label, block.first_layer + r_star, full_layers)
        if block.label[0] != "setup":  # what exists before the step is one point: the baseline
            if not points:
                points.append({"x": 0, "bytes": live, "phase": "before the step", "step": 0})
            points += _points(block, series, x, live, prefix, top, top_i, max_points)
            x += block.reps * len(series)
        live += block.reps * prefix
        for c, v in cats.items():
            totals[c] += block.reps * v
        for c in EXCLUDED:
            excluded_peak[c] = max(excluded_peak[c], totals[c])
    best_cats = {c: v for c, v in best_cats.items() if c not in EXCLUDED and v}
    return Composed(max(best, 0), best_cats, best_at, points, dict(excluded_peak),
                    {c: v for c, v in totals.items() if v})


def _points(block: Block, series: list[int], x: int, live: int, prefix: int, top: int, top_i: int,
            max_points: int) -> list[dict]:
    """Timeline points of one block: a sample of its events, or per repetition its start and its top."""
    phase, step = phase_of(block.label)
    if block.reps == 1:
        return [{"x": x + j + 1, "bytes": live + series[j], "phase": phase, "step": step}
                for j in _sample(series, max_points, top_i)]
    points = []
    for r in range(block.reps):
        base = live + r * prefix
        points.append({"x": x + r * len(series), "bytes": base, "phase": phase, "step": step})
        if top_i >= 0:
            points.append({"x": x + r * len(series) + top_i + 1, "bytes": base + top, "phase": phase, "step": step})
    return points


def _sample(series: list[int], n: int, keep: int) -> list[int]:
    if len(series) <= n:
        return list(range(len(series)))
    step = len(series) / n
    picks = {int(k * step) for k in range(n)} | {len(series) - 1}
    if keep >= 0:
        picks.add(keep)
    return sorted(picks)


def phase_of(label: tuple) -> tuple[str, int | str]:
    """(phase, step) of a segment label; inference labels carry "prefill"/"decode" as their step."""
    kind = label[0]
    step = label[-1] if len(label) > 1 and isinstance(label[-1], (int, str)) else 0
    if kind == "setup":
        return "before the step", 0
    if isinstance(step, str):
        return step, step
    if kind in ("pre", "F", "head"):
        return "forward", step
    if kind in ("head_bwd", "B", "post"):
        return "backward", step
    return "optimizer step", step


def describe(label: tuple, layer: int, full_layers: int) -> str:
    phase, step = phase_of(label)
    where = phase
    if label[0] in ("F", "B"):
        where += f", layer {layer + 1} of {full_layers}"
    elif label[0] == "head":
        where += ", head and loss"
    elif label[0] == "head_bwd":
        where += ", head and loss"
    return where
