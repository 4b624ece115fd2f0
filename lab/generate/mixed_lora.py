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

Base rows are never touched, so they are bit-for-bit what the base layers computed (for the fused experts of a
mixture-of-experts, see below). With s a power
of two (alpha = 2·r, the lab's default) s·B is exact, and adapter rows follow peft's own arithmetic
(`result + lora_B(lora_A(x)) * s`).

Mixture-of-experts adapters (peft's `ParamWrapper`, `target_parameters` on the fused 3-D expert weights)
cannot be added as a delta on the output: an expert is act(x·W_gate)·(x·W_up) then W_down, so LoRA changes the
weights inside a nonlinearity. peft itself refuses mixed batches on them ("does not support mixed batch
inference"). Here the experts module of each adapted layer runs once per group of rows that share an adapter,
on just those rows' tokens: the base's rows through the plain module, an adapter's rows through a shallow copy
of the module whose expert weights are the adapter's folded ones, `W + s·lhs@rhs` by peft's own
`get_delta_factors` and the same `baddbmm` peft's forward uses (or `W + get_delta_weight` where peft uses
that). The shared module itself is never changed. Every expert computation is per token (the router ran
before, on all rows), so splitting the tokens changes only the grouping: each expert multiplies the tokens
routed to it, and how many there are changes the order of float32 sums, not the result beyond rounding.
(No batched MoE base row is bit-for-bit independent of its neighbours: which tokens share an expert's matmul
depends on the other rows' routing. Split this way, the base rows at least never depend on the adapters
beside them.) The cost: each adapter's folded expert weights once per adapted layer and forward, which is
what peft's own forward pays.

Only public extension points are used: torch's `register_forward_hook` on peft's LoRA layers, peft's
`disable_adapter_layers()`, the per-adapter `lora_A` / `lora_B` / `scaling` attributes every peft
LoRA layer has, `ParamWrapper`'s `parameter_name` / `get_delta_factors` / `get_delta_weight` (plus
`AuxiliaryTrainingWrapper._adapters`, only to detect `modules_to_save`). Checked against peft 0.21.2.
Anything this does not cover — DoRA and other LoRA variants, LoRA on embeddings or convolutions,
`lora_bias`, `modules_to_save`, trainable tokens — makes `row_lora_supported` say no, and the caller uses
peft's own mixed batches instead.

The hooks and the experts' per-row forward act only in the thread that installed them: another session
generating with the same shared model at the same moment sees the plain base model.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from lab.errors import LabError


def _lora_layers(peft_model) -> list[nn.Module]:
    """peft's LoRA layers on Linear-like modules (the expert wrappers are `_expert_chains`')."""
    # peft: 3.1 s to import; imported where used, not with this module
    from peft.tuners.lora import LoraLayer, ParamWrapper

    return [m for m in peft_model.modules() if isinstance(m, LoraLayer) and not isinstance(m, ParamWrapper)]


def _expert_chains(peft_model) -> list[list[nn.Module]]:
    """Each adapted experts module's ParamWrappers, outermost first (peft nests one per targeted parameter)."""
    # peft: 3.8 s to import; imported where used, not with this module
    from peft.tuners.lora import ParamWrapper

    wrappers = [m for m in peft_model.modules() if isinstance(m, ParamWrapper)]
    inner = {id(w.base_layer) for w in wrappers}
    chains = []
    for outer in (w for w in wrappers if id(w) not in inner):
        chain, layer = [], outer
        while isinstance(layer, ParamWrapper):
            chain.append(layer)
            layer = layer.base_layer
        chains.append(chain)
    return chains


def row_lora_supported(peft_model, adapters: list[str]) -> bool:
    """Can `row_lora` run these adapters? (Plain LoRA on Linear layers only; see the module docstring.)"""
    # peft: 4.4 s to import; imported where used, not with this module
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
    """True when `name` is absent from this layer or is plain LoRA on a Linear (x @ Aᵀ @ Bᵀ · s, no bias), or on
    fused expert weights (peft's ParamWrapper refuses dropout, bias, DoRA and other variants itself)."""
    # peft: 3.8 s to import; imported where used, not with this module
    from peft.tuners.lora import ParamWrapper

    if isinstance(layer, ParamWrapper):
        return True
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
    handles, swapped = [], []
    try:
        for chain in _expert_chains(peft_model):
            if any(name in w.lora_A for w in chain for name in row_adapters if name is not None):
                chain[0].forward = _row_experts(chain, row_adapters, owner)
                swapped.append(chain[0])
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
        for m in swapped:
            vars(m).pop("forward", None)  # the class's forward again


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


# --------------------------------------------------------------------------- fused experts (ParamWrapper)
def _row_experts(chain: list[nn.Module], row_adapters: list[str | None], owner: int):
    """A forward for the outermost ParamWrapper of an experts module: each group of rows that share an adapter
    runs the experts on its own tokens (with that adapter's folded weights), and the results go back in place."""
    plain = type(chain[0]).forward.__get__(chain[0])  # adapter layers are off: the plain experts
    groups: dict[str | None, list[int]] = {}
    for i, name in enumerate(row_adapters):
        groups.setdefault(name if any(name in w.lora_A for w in chain) else None, []).append(i)

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if threading.get_ident() != owner:
            return plain(x, *args, **kwargs)
        n = x.shape[0]  # tokens, row after row ((batch·seq, hidden) as the MoE blocks flatten them)
        if n % len(row_adapters):
            raise LabError(f"The experts got {n} tokens for {len(row_adapters)} rows: they cannot be split by row.",
                           "Compare this adapter on its own (one adapter column).")
        per = n // len(row_adapters)
        out = None
        for name, rows in groups.items():
            idx = (torch.tensor(rows, device=x.device)[:, None] * per + torch.arange(per, device=x.device)).reshape(-1)
            take = _taker(idx, n)
            module = plain if name is None else _adapted(chain, name)
            y = module(take(x), *map(take, args), **{k: take(v) for k, v in kwargs.items()})
            if len(groups) == 1:
                return y
            out = y.new_empty((n, *y.shape[1:])) if out is None else out
            out.index_copy_(0, idx, y)
        return out

    return forward


def _taker(idx: torch.Tensor, n: int):
    """Select these tokens from every per-token tensor (first dimension n); anything else passes as it is."""
    def take(t):
        return t.index_select(0, idx) if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == n else t

    return take


def _adapted(chain: list[nn.Module], name: str) -> nn.Module:
    """A shallow copy of the experts module whose adapted parameters are `name`'s folded weights, computed as
    peft's ParamWrapper forward computes them (see the module docstring); the shared module is left alone."""
    base = chain[-1].base_layer
    clone = copy.copy(base)
    clone._parameters = dict(base._parameters)  # the copy's own table: the shared module keeps its weights
    for w in chain:
        if name in w.lora_A:
            clone._parameters[w.parameter_name] = _folded(w, name, getattr(base, w.parameter_name))
    return clone


def _folded(wrapper, name: str, weight: torch.Tensor) -> torch.Tensor:
    """W + s·ΔW the way peft 0.21.2's ParamWrapper._activate_lora folds one adapter."""
    if wrapper.num_experts > 1 and weight.dtype.is_floating_point and weight.element_size() > 1:
        lhs, rhs, scaling = wrapper.get_delta_factors(name)
        with torch.autocast(device_type=weight.device.type, enabled=False):
            return torch.baddbmm(weight, lhs, rhs, alpha=scaling)
    return weight + wrapper.get_delta_weight(name).to(weight.dtype)
