"""Plotly figures shared by pages (no Streamlit here: pages draw them with st.plotly_chart).

One colour table: a colour means one thing in every chart (a precision is always the same colour, a measured
figure never borrows a precision's), instead of Plotly's default cycle handing the first blue to whatever
comes first.
"""

from __future__ import annotations

from collections.abc import Sequence
from os.path import commonprefix

import plotly.graph_objects as go

# A precision (and a quantization scheme of the same name) has one colour everywhere.
PRECISION_COLOURS = {
    "fp32": "#4c78a8", "bf16": "#72b7b2", "fp16": "#54a24b", "int8": "#eeca3b",
    "nf4": "#e45756", "nf4-dq": "#b279a2", "fp4": "#f58518",
}
# What is not a precision: figures about bytes, the weights themselves, and the models of an evaluation.
COLOURS = {
    "measured": "#1b3a5c",  # true bytes
    "predicted": "#8fb1d6",  # the calculator
    "footprint": "#bab0ac",  # transformers' get_memory_footprint()
    "weights": "#9aa5b1",  # a histogram of weight values
    "base": "#6b6b6b",  # the base model, no adapter
}
ADAPTER_COLOURS = ["#17becf", "#9467bd", "#8c564b", "#bcbd22", "#e377c2", "#2ca02c"]  # none a precision's
STATE_COLOURS = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"]  # quantization-state kinds

LABEL_CHARS = 24  # a tick label longer than this is shortened (the full name is in the hover)


def precision_colour(name: str) -> str:
    return PRECISION_COLOURS.get(name, COLOURS["footprint"])


def model_colours(names: Sequence[str]) -> list[str]:
    """The base grey, each adapter its own colour (in order)."""
    adapters = iter(ADAPTER_COLOURS * (len(names) // len(ADAPTER_COLOURS) + 1))
    return [COLOURS["base"] if n == "base" else next(adapters) for n in names]


def _shorten(name: str, width: int) -> str:
    """Keep both ends: run names share their beginning (the base model's name) and differ at the end."""
    if len(name) <= width:
        return name
    head = (width - 1) // 3
    return name[:head] + "…" + name[len(name) - (width - 1 - head):]


def short_labels(names: list[str], width: int = LABEL_CHARS) -> list[str]:
    """Tick labels of at most `width` characters, kept distinct (Plotly merges equal x values). Long names
    that share a beginning (runs of one base model) lose it first, so what tells them apart stays readable."""
    long = [n for n in names if len(n) > width]
    shared = len(commonprefix(long)) if len(long) > 1 else 0
    out: list[str] = []
    for name in names:
        label = _shorten("…" + name[shared:] if name in long and shared > 3 else name, width)
        n = 2
        while label in out:  # still equal: number them
            suffix = f"…{n}"
            label, n = name[: width - len(suffix)] + suffix, n + 1
        out.append(label)
    return out


def score_bars(names: list[str], values: list[float], accuracy: bool, title: str) -> go.Figure:
    """One bar per model. Accuracy runs on a fixed 0–100% axis (all-zero scores still show an axis that
    means something, and a '0.0%' label where each bar would be); perplexity from 0 up."""
    text = [f"{v:.1%}" if accuracy else f"{v:.2f}" for v in values]
    colours = model_colours(names)
    fig = go.Figure(go.Bar(
        x=short_labels(names), y=values, text=text, textposition="outside", cliponaxis=False,
        customdata=names, hovertemplate="%{customdata}<br>%{text}<extra></extra>",
        marker_color=colours, marker_line_width=2, marker_line_color=colours,  # a zero bar still shows as a line
    ))
    top = max([v for v in values if v == v] or [0.0])  # NaN-safe
    fig.update_layout(
        yaxis=dict(range=[0, 1.1], tickformat=".0%", tickvals=[0, 0.25, 0.5, 0.75, 1.0]) if accuracy
        else dict(range=[0, (top or 1.0) * 1.2], rangemode="tozero"),
        xaxis=dict(tickangle=0, automargin=True),
    )
    return _score_axis(fig, "accuracy" if accuracy else "perplexity", title)


def _score_axis(fig: go.Figure, what: str, title: str = "") -> go.Figure:
    """A one-word y title that a short chart cannot clip (which way is better goes in the chart's title), and
    the margin it needs."""
    better = f"{'higher' if what == 'accuracy' else 'lower'} is better"
    fig.update_layout(height=340, margin=dict(t=50, b=10, l=70), yaxis_title=what, yaxis_automargin=True,
                      title=f"{title} · {what}, {better}" if title else f"{what.capitalize()}, {better}")
    return fig


def precision_bars(precisions: list[str], values: list[float], what: str = "perplexity") -> go.Figure:
    """One bar per precision (each in its precision's colour), e.g. perplexity in the loading lab."""
    fig = go.Figure(go.Bar(x=precisions, y=values, text=[f"{v:.2f}" for v in values], textposition="outside",
                           cliponaxis=False, marker_color=[precision_colour(p) for p in precisions]))
    fig.update_layout(yaxis=dict(rangemode="tozero", range=[0, max(values or [1.0]) * 1.2]))
    return _score_axis(fig, what)


def bytes_bars(precisions: list[str], measured: list, predicted: list, footprint: list, errors: list) -> go.Figure:
    """Measured, predicted and transformers' footprint (MB) per precision, grouped."""
    fig = go.Figure()
    fig.add_bar(name="measured (true bytes)", x=precisions, y=measured, marker_color=COLOURS["measured"])
    fig.add_bar(name="predicted (calculator)", x=precisions, y=predicted, marker_color=COLOURS["predicted"],
                text=[None if e is None else f"{e:+.3f}%" for e in errors], textposition="outside")
    fig.add_bar(name="get_memory_footprint()", x=precisions, y=footprint, marker_color=COLOURS["footprint"])
    fig.update_layout(barmode="group", yaxis_title="MB", height=380, margin=dict(t=30, b=10),
                      legend=dict(orientation="h"))
    return fig


def state_bars(precisions: list[str], kb_by_kind: dict[str, list[float]], hover: dict[str, str]) -> go.Figure:
    """Quantization state outside the parameters (KB), stacked by kind."""
    fig = go.Figure()
    for (kind, values), colour in zip(kb_by_kind.items(), STATE_COLOURS * 2, strict=False):
        fig.add_bar(name=kind, x=precisions, y=values, hovertext=hover.get(kind), marker_color=colour)
    fig.update_layout(barmode="stack", yaxis_title="KB", height=340, margin=dict(t=40, b=10),
                      title="Quantization state outside the parameters (what get_memory_footprint() misses)")
    return fig


def level_histogram(hist, raw: bool, name: str) -> go.Figure:
    """One weight matrix's values (block-normalized or raw) with the NF4 and FP4 levels drawn over them."""
    edges, counts = (hist.raw_edges, hist.raw_counts) if raw else (hist.edges, hist.counts)
    scale = hist.median_absmax if raw else 1.0
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    fig = go.Figure(go.Bar(x=centers, y=counts, name="weights", marker_color=COLOURS["weights"],
                           width=(edges[1] - edges[0])))
    top = max(counts) if counts else 1
    for qt, dash in (("nf4", "solid"), ("fp4", "dash")):
        xs, ys = [], []
        for v in hist.levels[qt]:
            xs += [v * scale, v * scale, None]
            ys += [0, top, None]
        fig.add_scatter(x=xs, y=ys, mode="lines", name=f"{qt.upper()} levels",
                        line=dict(color=precision_colour(qt), dash=dash, width=1.5))
    fig.update_layout(height=380, margin=dict(t=30, b=10), bargap=0, legend=dict(orientation="h"),
                      xaxis_title="raw weight value" if raw else "value / block absmax",
                      title=f"{name} {tuple(hist.shape)}")
    return fig


def layer_error_lines(layers: list, by_scheme: dict[str, list[float]]) -> go.Figure:
    """Relative quantization error (%) per decoder layer, one line per scheme in its precision's colour."""
    fig = go.Figure()
    for scheme, values in by_scheme.items():
        fig.add_scatter(x=layers, y=[v * 100 for v in values], mode="lines+markers", name=scheme,
                        line=dict(color=precision_colour(scheme)))
    fig.update_layout(height=340, margin=dict(t=30, b=10, l=70), xaxis_title="decoder layer",
                      xaxis=dict(dtick=max(1, len(layers) // 15)), yaxis_title="relative error %",
                      yaxis_automargin=True, legend=dict(orientation="h"),
                      title="Mean relative error of the layer's Linears")
    return fig
