"""The simulated peak explained: the formula's terms next to the simulated categories, the difference
between them, and one decoder layer's forward module by module.

The formula (`lab.estimate.training`) is what a person can check by hand; the simulation is what the
step really holds. Where they differ, the simulation is right for this stack (it ran the step), and
the difference says which assumption of the formula did not hold.
"""

from __future__ import annotations

from dataclasses import dataclass

from lab.estimate.simulate import Simulation
from lab.estimate.training import TrainingEstimate
from lab.units import fmt_bytes

# simulated category -> the formula terms that stand for it
FORMULA_TERMS = {
    "weights": ("weights",),
    "adapters": ("adapter",),
    "gradients": ("gradients",),
    "optimizer": ("optimizer",),
    "activations": ("activations",),
    "temporaries": ("logits",),
}
LABELS = {"weights": "Weights", "adapters": "Trainable (LoRA) params", "gradients": "Gradients",
          "optimizer": "Optimizer states (+ step scratch)", "activations": "Activations",
          "temporaries": "Temporaries / logits + loss",
          "kv_cache": "KV cache", "paged": "Paged optimizer state (outside the allocator)"}


@dataclass(frozen=True)
class TermRow:
    """One line of 'formula vs simulation': a category's bytes by the formula and at the simulated peak."""

    category: str  # a simulated category, or "total"
    label: str
    formula_bytes: int
    simulated_bytes: int
    formula: str  # how the formula counts it

    @property
    def difference_bytes(self) -> int:
        return self.simulated_bytes - self.formula_bytes


def formula_vs_simulation(sim: Simulation, formula: TrainingEstimate) -> list[TermRow]:
    """One row per category: the formula's bytes, the simulated bytes at the peak; the total last."""
    rows = []
    for cat, terms in FORMULA_TERMS.items():
        f = sum(formula.components.get(t, 0) for t in terms)
        s = sim.by_category.get(cat, 0)
        if f or s:
            rows.append(TermRow(cat, LABELS[cat], f, s, "; ".join(formula.formulas.get(t, "") for t in terms)))
    rows.append(TermRow("total", "Peak (no CUDA context)", formula.allocated_bytes, sim.peak_bytes,
                        "sum of the terms above (the formula adds every term's maximum, as if all peaked at once)"))
    return rows


def formula_gap(sim: Simulation, formula: TrainingEstimate) -> str:
    """One sentence on why the formula's total differs from the simulated peak (shown beside the headline)."""
    gap = formula.allocated_bytes - sim.peak_bytes
    if abs(gap) < 0.02 * max(sim.peak_bytes, 1):
        return f"The hand formula agrees within 2% ({fmt_bytes(formula.allocated_bytes)})."
    if gap > 0:
        return (f"The hand formula says {fmt_bytes(formula.allocated_bytes)} ({fmt_bytes(gap)} more): it adds every "
                "term's maximum as if all peaked at the same moment; in the step they peak at different "
                "moments (see the timeline). The simulated figure is the one to plan with.")
    return (f"The hand formula says {fmt_bytes(formula.allocated_bytes)} ({fmt_bytes(-gap)} less): the step holds "
            "temporaries (casts, dequantized weights, workspaces) the formula has no term for. The simulated figure "
            "is the one to plan with.")


def module_rows(sim: Simulation) -> list[dict]:
    """One decoder layer's forward, per module: bytes it allocates and bytes still alive at the backward.
    A LoRA-wrapped layer's base matmul, dropout and adapters are folded into the layer they wrap."""
    merged: dict[str, dict] = {}
    for row in sim.layer_modules:
        name = row["module"]
        for part in (".base_layer", ".lora_A", ".lora_B", ".lora_dropout", ".lora_magnitude_vector"):
            name = name.split(part)[0]
        m = merged.setdefault(name, {"module": name, "allocated_bytes": 0, "kept_for_backward_bytes": 0, "tensors": 0})
        for k in ("allocated_bytes", "kept_for_backward_bytes", "tensors"):
            m[k] += row[k]
    return sorted(merged.values(), key=lambda r: -r["allocated_bytes"])
