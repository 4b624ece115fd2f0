"""Row-wise LoRA: one batched generate in which each row runs its own adapter (or none), cheaply.

Why not peft's `generate(..., adapter_names=[...])` (its mixed-adapter batches)? For every LoRA layer,
at every decoding step, peft rebuilds per-adapter index lists in Python, gathers each adapter's
sub-batch (`x[indices]`) and scatters its result back (`result[indices] += ...`), behind a pre-forward
hook that injects `adapter_names`. On the 2-core CPU that routing added 20-40% to the plain 2-row
batch it rides on (torch.profiler and cProfile on the embedded model: 210 LoRA layers, each called 33
times for 32 tokens, ~7 small ops each); this path adds about 3-10%.

Here the side-by-side batch has one row per column, so each adapter's row is known in advance. peft's
adapter layers stay *disabled* (each LoRA layer returns its base layer's output, exactly the base), and
a forward hook on every LoRA layer adds, for each adapter row only,

    out[row] += x[row] @ Aᵀ @ (s·B)ᵀ          (one matmul and one addmm_ on views: no gather, no scatter)

Base rows are never touched, so they are bit-for-bit what the base layers computed. With s a power
of two (alpha = 2·r, the lab's default) s·B is exact, and adapter rows follow peft's own arithmetic
(`result + lora_B(lora_A(x)) * s`).

Only public extension points are used: torch's `register_forward_hook` on peft's LoRA layers, peft's
`disable_adapter_layers()`, and the per-adapter `lora_A` / `lora_B` / `scaling` attributes every peft
LoRA layer has (plus `AuxiliaryTrainingWrapper._adapters`, only to detect `modules_to_save`). Checked
against peft 0.21.2. Anything this does not cover — DoRA and other LoRA
variants, LoRA on embeddings or convolutions, `lora_bias`, `modules_to_save`, trainable tokens —
makes `row_lora_supported` say no, and the caller uses peft's own mixed batches instead.

The hooks act only in the thread that installed them: another session generating with the same
shared model at the same moment sees the plain base model.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def _lora_layers(peft_model) -> list[nn.Module]:
    from peft.tuners.lora import LoraLayer

    return [m for m in peft_model.modules() if isinstance(m, LoraLayer)]


def row_lora_supported(peft_model, adapters: list[str]) -> bool:
    """Can `row_lora` run these adapters? (Plain LoRA on Linear layers only; see the module docstring.)"""
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    wanted = set(adapters)
    for name in wanted:
        config = peft_model.peft_config.get(name)
        if config is None or getattr(config, "bias", "none") != "none":
            return False
    for module in peft_model.modules():
        if isinstance(module, AuxiliaryTrainingWrapper) and wanted & set(module._adapters):
            return False  # modules_to_save / trainable tokens: whole modules swapped per adapter
        if isinstance(module, LoraLayer) and not all(_plain_lora(module, name) for name in wanted):
            return False
    return True


def _plain_lora(layer, name: str) -> bool:
    """True when `name` is absent from this layer or is plain LoRA on a Linear (x @ Aᵀ @ Bᵀ · s, no bias)."""
    if name in getattr(layer, "lora_embedding_A", {}):
        return False
    if name not in layer.lora_A:
        return True
    a, b = layer.lora_A[name], layer.lora_B[name]
    return (type(a) is nn.Linear and type(b) is nn.Linear and b.bias is None
            and name not in getattr(layer, "lora_variant", {}))


@contextmanager
def row_lora(peft_model, row_adapters: list[str | None]) -> Iterator[None]:
    """For the duration of the block, row i of every batch through `peft_model` gets adapter
    `row_adapters[i]` (None: the base). peft's adapter layers must be disabled (they are, between
    generations, in lab.generate.bank.AdapterBank)."""
    owner = threading.get_ident()
    handles = []
    try:
        for layer in _lora_layers(peft_model):
            rows = []
            for i, name in enumerate(row_adapters):
                if name is None or name not in layer.lora_A:
                    continue  # this adapter does not adapt this layer: its row stays the base's
                a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
                rows.append((i, a.t(), (b * layer.scaling[name]).t()))
            if rows:
                handles.append(layer.register_forward_hook(_row_hook(rows, owner), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def _row_hook(rows: list[tuple[int, torch.Tensor, torch.Tensor]], owner: int):
    dtype = rows[0][1].dtype

    def hook(module, args, kwargs, out):
        if threading.get_ident() != owner:
            return None
        x = args[0] if args else kwargs["x"]
        if out.dim() == 3 and x.dtype == dtype and out.dtype == dtype:  # (batch, tokens, features), one dtype
            for i, a_t, sb_t in rows:
                out[i].addmm_(x[i] @ a_t, sb_t)
        else:  # a 16-bit or quantized base computing in another dtype than the adapter's: peft's casts
            x = x.to(dtype)
            for i, a_t, sb_t in rows:
                out[i] += x[i] @ a_t @ sb_t
        return None

    return hook
