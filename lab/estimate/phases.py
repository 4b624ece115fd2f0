"""What a simulated training step holds in each phase, and where its parameters live: the two things
`lab.estimate.parallel` needs to redistribute the step over several GPUs.

- `phase_peaks`: the peak of the forward, the backward and the optimizer step, each split by category.
  Sharding shrinks some categories (weights, gradients, optimizer state) and not others (activations),
  so the phase that peaks on one GPU need not be the one that peaks on N: FSDP's CPU offload, for
  one, moves the optimizer step off the GPU altogether.
- `param_layout`: parameter bytes at full depth, split as FSDP wraps them (transformers' and peft's
  auto-wrap policy: one unit per decoder layer, the embeddings, final norm and LM head in the root unit).
"""

from __future__ import annotations

from collections import defaultdict

from lab.estimate import compose as comp
from lab.estimate.recipe import decoder_layers

PHASES = ("forward", "backward", "optimizer step")


def phase_peaks(blocks: list[comp.Block]) -> dict[str, dict[str, int]]:
    """{phase: live bytes per category at that phase's peak}, walked as `compose.compose` walks the blocks
    (a repeated block peaks in its first or its last repetition)."""
    totals: dict[str, int] = defaultdict(int)
    live = 0
    best: dict[str, tuple[int, dict[str, int]]] = {}
    for block in blocks:
        phase, _ = comp.phase_of(block.label)
        prefix, top = 0, 0
        cats: dict[str, int] = defaultdict(int)
        top_cats: dict[str, int] = {}
        for delta, cat in block.deltas:
            cats[cat] += delta
            if cat in comp.EXCLUDED:
                continue
            prefix += delta
            if prefix > top:
                top, top_cats = prefix, dict(cats)
        r_star = block.reps - 1 if prefix > 0 else 0
        candidate = live + r_star * prefix + top
        if phase in PHASES and candidate > best.get(phase, (-1, {}))[0]:
            at = {c: totals[c] + r_star * cats[c] + top_cats.get(c, 0) for c in set(totals) | set(cats)}
            best[phase] = (candidate, {c: v for c, v in at.items() if c not in comp.EXCLUDED and v})
        live += block.reps * prefix
        for c, v in cats.items():
            totals[c] += block.reps * v
    return {phase: cats for phase, (_, cats) in best.items()}


def param_layout(model, full: int, layers: int) -> dict[str, int]:
    """Parameter bytes of the full-depth model as stored (4-bit weights packed): all of them, the trainable
    ones, the root unit's (outside the decoder layers), and the largest decoder layer's (all, trainable):
    the unit FSDP all-gathers around each layer's forward and backward."""
    scaled = layers == comp.SIMULATED_LAYERS and full > layers
    reps = full - (layers - 1) if scaled else 1
    owner = {id(p): j for j, layer in enumerate(decoder_layers(model)) for p in layer.parameters()}
    out = dict.fromkeys(("params", "trainable", "root"), 0)
    per_layer: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for p in model.parameters():  # each tied parameter once
        n = p.numel() * p.element_size()
        j = owner.get(id(p))
        k = reps if scaled and j == comp.MIDDLE else 1
        out["params"] += n * k
        out["trainable"] += n * k if p.requires_grad else 0
        if j is None:
            out["root"] += n
        else:
            per_layer[j][0] += n
            per_layer[j][1] += n if p.requires_grad else 0
    out["layer"], out["layer_trainable"] = max(per_layer.values(), default=[0, 0])
    return out
