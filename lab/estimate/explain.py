"""The simulated peak explained: the formula's terms next to the simulated categories, the difference
between them, and one decoder layer's forward module by module.

The formula (`lab.estimate.training`) is what a person can check by hand; the simulation is what the
step really holds. Where they differ, the simulation is right for this stack (it ran the step), and
the difference says which assumption of the formula did not hold.
"""

from __future__ import annotations

from lab.estimate.simulate import Simulation
from lab.estimate.training import TrainingEstimate

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


def formula_vs_simulation(sim: Simulation, formula: TrainingEstimate) -> list[dict]:
    """One row per category: the formula's bytes, the simulated bytes at the peak, the difference."""
    rows = []
    for cat, terms in FORMULA_TERMS.items():
        f = sum(formula.components.get(t, 0) for t in terms)
        s = sim.by_category.get(cat, 0)
        if f or s:
            rows.append({"category": cat, "label": LABELS[cat], "formula_bytes": f, "simulated_bytes": s,
                         "difference_bytes": s - f, "formula": "; ".join(formula.formulas.get(t, "") for t in terms)})
    total_f = sum(r["formula_bytes"] for r in rows)
    rows.append({"category": "total", "label": "Peak (no CUDA context)", "formula_bytes": total_f,
                 "simulated_bytes": sim.peak_bytes, "difference_bytes": sim.peak_bytes - total_f,
                 "formula": "sum of the terms above (the formula adds every term's maximum, as if all peaked at once)"})
    return rows


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
