"""The calculator's Plotly figures (no Streamlit here: the page draws them with st.plotly_chart)."""

from __future__ import annotations

import plotly.graph_objects as go

from lab.estimate import explain
from lab.estimate.simulate import Simulation
from lab.estimate.weights import WeightEstimate
from lab.units import fmt_bytes
from lab.vocab import PRECISIONS

GB = 1e9
COLORS = {
    "quantized Linear weights": "#4C78A8",
    "quantization constants": "#E45756",
    "unquantized Linear weights": "#72B7B2",
    "embeddings": "#F58518",
    "lm_head": "#EECA3B",
    "norms": "#B279A2",
    "biases": "#9D755D",
    "other parameters": "#BAB0AC",
    "buffers (rotary tables)": "#54A24B",
}
CATEGORY_COLORS = {"weights": "#4C78A8", "adapters": "#F58518", "gradients": "#E45756", "optimizer": "#72B7B2",
                   "activations": "#54A24B", "temporaries": "#B279A2", "kv_cache": "#EECA3B"}
PHASE_COLORS = {"before the step": "#888888", "forward": "#4C78A8", "backward": "#E45756", "optimizer step": "#54A24B",
                "prefill": "#4C78A8", "decode": "#F58518"}


def weights_by_precision(rows: list[WeightEstimate]) -> go.Figure:
    """Stacked bars of each component at every precision, with get_memory_footprint() marked."""
    fig = go.Figure()
    labels = [PRECISIONS[r.precision].label for r in rows]
    for comp in dict.fromkeys(c.name for r in rows for c in r.components):
        fig.add_bar(name=comp, x=labels, y=[sum(c.bytes for c in r.components if c.name == comp) / GB for r in rows],
                    marker_color=COLORS.get(comp))
    fig.add_scatter(name="get_memory_footprint()", x=labels, y=[r.hf_footprint_bytes / GB for r in rows],
                    mode="markers", marker=dict(symbol="line-ew-open", size=28, color="black"))
    fig.update_layout(
        barmode="stack", yaxis_title="GB", height=380, margin=dict(t=30, b=0), legend=dict(orientation="h", y=-0.15)
    )
    return fig


def formula_vs_simulated(rows: list[explain.TermRow], sim: Simulation) -> go.Figure:
    """The formula's terms and the simulated categories at the peak, side by side."""
    fig = go.Figure()
    for cat in explain.FORMULA_TERMS:
        f = next((r.formula_bytes for r in rows if r.category == cat), 0)
        fig.add_bar(name=explain.LABELS[cat], x=["formula", "simulated"], y=[f / GB, sim.by_category.get(cat, 0) / GB],
                    marker_color=CATEGORY_COLORS[cat])
    fig.update_layout(
        barmode="stack", yaxis_title="GB", height=340, margin=dict(t=30, b=0), legend=dict(orientation="h", y=-0.2)
    )
    return fig


def timeline(s: Simulation, title: str) -> go.Figure:
    """Live bytes through the step, coloured by phase, with the peak marked."""
    fig = go.Figure()
    for phase in dict.fromkeys(p["phase"] for p in s.timeline):
        pts = [p for p in s.timeline if p["phase"] == phase]
        fig.add_scatter(x=[p["x"] for p in pts], y=[p["bytes"] / GB for p in pts], mode="lines+markers",
                        marker=dict(size=3), line=dict(width=1), name=phase, line_color=PHASE_COLORS.get(phase))
    top = max(s.timeline, key=lambda p: p["bytes"])
    fig.add_scatter(x=[top["x"]], y=[s.peak_bytes / GB], mode="markers+text",
                    marker=dict(size=12, symbol="star", color="black"), text=[f"peak {fmt_bytes(s.peak_bytes)}"],
                    textposition="top center", name="peak")
    fig.update_layout(
        title=title, xaxis_title=f"operations through the step (middle layer repeated to {s.full_layers} layers)",
        yaxis_title="live GB", height=360, margin=dict(t=40, b=0), legend=dict(orientation="h", y=-0.25),
    )
    return fig
