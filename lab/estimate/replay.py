"""A simulated step replayed at another batch size, sequence length or rank, without running it again.

A step's ops hardly change with the batch, the sequence or the LoRA rank, only the sizes of what they allocate,
and most sizes are polynomials in the knob (linear in the batch and the rank, up to quadratic in the sequence:
eager attention's scores). Two simulations whose event streams are alike, allocation for allocation and free for
free (a `Trace`'s `shape`), give each tensor's polynomial; the step at any value is then the same stream with those
sizes, composed to full depth as `compose` composes a simulation, in about 15 ms instead of two seconds
(`replay_peak`). The inverse question uses it to choose what to simulate: Qwen2.5-7B's QLoRA step replayed from
2,048 and 4,096 tokens gives the simulated peak to the byte at 14,645.

It is a prediction, not a simulation. Where the streams differ nothing is replayed across them: bitsandbytes'
4-bit matmul is one fused kernel up to 1,536 rows and a dequantize + matmul beyond
(`fake_quant.GEMM_4BIT_FUSED_MAX_ROWS`), a model's first step makes one-time copies. A paged optimizer's states
are one stream on either side of its threshold: it pages only states of 100,000 elements or more, the same
allocation either way, so a state's category (paged, outside the allocator, or optimizer) is replayed from its
replayed size (Llama-3.1-70B's rank on an H100: ranks 16 and 1,024 replay to 708, to the byte). And a stream can
stay alike while a size stops growing: TRL's chunked log-probabilities keep one buffer of min(tokens, 4,096) rows,
so a replay from below 4,096 tokens overshoots a head-bound peak beyond it.
"""

from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass

from lab.estimate import compose as comp


@dataclass(frozen=True, eq=False)
class Trace:
    """A simulated step's event stream, compact: what `replay_peak` needs to compose it at other sizes."""

    raw: array  # each storage's bytes as allocated, before the allocator's rounding
    round_to: int  # the allocator's block (tracker.CUDA_BLOCK on CUDA, 1 elsewhere)
    owners: array  # each storage's decoder layer (tracker.NO_LAYER outside one)
    categories: tuple[str, ...]  # each storage's category (simulate._categories)
    pages_at: array  # a paged optimizer's state: the raw bytes from which it is paged (0: never; tracker.Storage)
    events: tuple[array, array, array]  # storage index, +1/-1, segment index
    segments: tuple[tuple, ...]
    full_layers: int
    simulated_layers: int
    shape: str  # a digest of everything above but the sizes: equal shapes replay into each other

    @classmethod
    def of(cls, tracker, categories: list[str], full_layers: int, simulated_layers: int) -> Trace:
        raw = array("q", (s.raw for s in tracker.storages))
        owners = array("i", (s.owner for s in tracker.storages))
        columns = zip(*_frees_in_order(tracker.events), strict=True) if tracker.events else ((), (), ())
        events = tuple(array(code, column) for code, column in zip("ibi", columns, strict=True))
        pages_at = array("q", (s.pages_at for s in tracker.storages))
        alike = tuple("pageable" if at else c for c, at in zip(categories, pages_at, strict=True))  # paged or not
        digest = hashlib.sha1()
        for part in (owners.tobytes(), *(e.tobytes() for e in events), repr(alike).encode(), pages_at.tobytes(),
                     repr(tuple(tracker.segments)).encode(), f"{full_layers}/{simulated_layers}".encode()):
            digest.update(part)
        return cls(raw, tracker.round_to, owners, tuple(categories), pages_at, events, tuple(tracker.segments),
                   full_layers, simulated_layers, digest.hexdigest())

    def peak_bytes(self, sizes, categories=None) -> int:
        """The composed peak of this stream with these storage sizes (already rounded) and categories (default:
        the simulated ones)."""
        blocks = comp.blocks_of(self.events, self.segments, sizes, self.owners, categories or self.categories,
                                self.full_layers, self.simulated_layers)
        return comp.compose(blocks, self.full_layers).peak_bytes


def _frees_in_order(events: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """The stream with each run of frees in one segment in storage order. Storages freed together (a graph let go,
    a module's outputs) die in an order that depends on the process's history (a model built afresh or reused, in
    this process or another: lab.estimate.pool), not on the step; frees in a row cannot move the peak, so in storage
    order two simulations of one step have one stream and replay into each other wherever they ran."""
    out: list[tuple[int, int, int]] = []
    run: list[tuple[int, int, int]] = []
    for event in events:
        if event[1] < 0 and (not run or run[0][2] == event[2]):
            run.append(event)
            continue
        out += sorted(run)
        run = [event] if event[1] < 0 else []
        if event[1] >= 0:
            out.append(event)
    return out + sorted(run)


def replay_peak(basis: list[tuple[int, Trace]], x: int) -> int:
    """The peak at `x` of a step simulated at the basis' values (equal shapes): each storage's size is the
    polynomial through its sizes at those values (degree len(basis) - 1), rounded as the allocator rounds."""
    xs = [v for v, _ in basis]
    weights = []
    for j, xj in enumerate(xs):  # Lagrange: size(x) = sum_j w_j(x) * size_j
        w = 1.0
        for k, xk in enumerate(xs):
            if k != j:
                w *= (x - xk) / (xj - xk)
        weights.append(w)
    first = basis[0][1]
    step = first.round_to
    sizes = [0] * len(first.raw)
    categories = list(first.categories)
    columns = [t.raw for _, t in basis]
    for i, row in enumerate(zip(*columns, strict=True)):
        n = max(0, round(sum(w * b for w, b in zip(weights, row, strict=True))))
        sizes[i] = -(-n // step) * step
        if first.pages_at[i]:
            categories[i] = "paged" if n >= first.pages_at[i] else "optimizer"
    return first.peak_bytes(sizes, categories)
