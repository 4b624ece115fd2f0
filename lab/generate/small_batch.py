"""Small-batch Linear layers on a CPU, computed the way its BLAS is fast at.

A side-by-side generate decodes one token per column per step: every Linear layer multiplies a
(columns × in) input by its (out × in) weight. `F.linear` computes that as `x @ Wᵀ`, and for a
handful of rows the CPU's BLAS does badly with the transposed weight. On the 2-core dev machine
(`benchmarks/bench_playground.py --matmuls`, medians, fp32): the embedded model's LM head (49,152 × 576)
took 7.1 ms for one row and 13.9 ms for two through `F.linear`, and 2.2 ms for the two as `(W @ xᵀ)ᵀ`;
the MLP's up/gate (1,536 × 576) and down (576 × 1,536) projections 90–93 µs → 60–66 µs; the small
attention weights gain little (576 × 576: 35 → 25 µs; 192 × 576: 12.7 → 11.9 µs) and were slower in
some runs. So only weights of at least `MIN_WEIGHT` elements take this path, only for inputs of at
most `MAX_ROWS` rows (decoding steps: a prefill has many rows and keeps `F.linear`), only plain float32
`nn.Linear` layers on a CPU (quantized layers subclass nn.Linear and keep their own kernels; a GPU's
BLAS handles small batches well).

The result is the same product summed in another order: equal to `F.linear` within float32 rounding
(tests compare logits and greedy tokens with plain transformers). The swap acts only in the thread that
made it: another session's generate on the same shared model at the same moment runs `F.linear`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

MAX_ROWS = 4  # tokens in one forward (columns × 1 while decoding) up to which the swap applies
MIN_WEIGHT = 800_000  # weight elements from which (W @ xᵀ)ᵀ beat F.linear here (the up/gate/down projections)


def _eligible(module: nn.Module, min_weight: int) -> bool:
    w = getattr(module, "weight", None)
    return (type(module) is nn.Linear and w is not None and w.dtype == torch.float32 and w.device.type == "cpu"
            and w.numel() >= min_weight)


@contextmanager
def small_batch_linear(model: nn.Module, max_rows: int = MAX_ROWS, min_weight: int = MIN_WEIGHT) -> Iterator[int]:
    """For the duration of the block (in this thread only), eligible Linear layers of `model` compute inputs of
    at most `max_rows` rows as `(W @ xᵀ)ᵀ`. Yields how many layers were swapped."""
    owner = threading.get_ident()
    swapped = [m for m in model.modules() if _eligible(m, min_weight) and "forward" not in vars(m)]
    try:
        for m in swapped:
            m.forward = _forward(m, owner, max_rows)
        yield len(swapped)
    finally:
        for m in swapped:
            vars(m).pop("forward", None)  # the class's forward again


def _forward(module: nn.Linear, owner: int, max_rows: int):
    plain = nn.Linear.forward.__get__(module)

    def forward(x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.dim() else 0
        if threading.get_ident() != owner or not 0 < rows <= max_rows or x.dtype != module.weight.dtype:
            return plain(x)
        out = (module.weight @ x.reshape(rows, -1).t()).t()
        if module.bias is not None:
            out = out + module.bias
        return out.reshape(*x.shape[:-1], module.out_features)

    return forward
