"""Plotly figures shared by pages (no Streamlit here: pages draw them with st.plotly_chart)."""

from __future__ import annotations

import plotly.graph_objects as go

LABEL_CHARS = 18  # a tick label longer than this is cut (the full name is in the hover), so long run names
# cannot squash the bars into a corner


def short_labels(names: list[str], width: int = LABEL_CHARS) -> list[str]:
    """Tick labels of at most `width` characters, cut with '…' and kept distinct (Plotly merges equal x values)."""
    out: list[str] = []
    for name in names:
        label = name if len(name) <= width else name[: width - 1] + "…"
        n = 2
        while label in out:  # two runs sharing a long prefix: number them
            suffix = f"…{n}"
            label, n = name[: width - len(suffix)] + suffix, n + 1
        out.append(label)
    return out


def score_bars(names: list[str], values: list[float], accuracy: bool, title: str) -> go.Figure:
    """One bar per model. Accuracy runs on a fixed 0–100% axis (all-zero scores still show an axis that
    means something, and a '0.0%' label where each bar would be); perplexity from 0 up."""
    text = [f"{v:.1%}" if accuracy else f"{v:.2f}" for v in values]
    fig = go.Figure(go.Bar(
        x=short_labels(names), y=values, text=text, textposition="outside", cliponaxis=False,
        customdata=names, hovertemplate="%{customdata}<br>%{text}<extra></extra>",
        marker_line_width=2, marker_line_color="#1f77b4",  # a zero-height bar still shows as a line
    ))
    top = max([v for v in values if v == v] or [0.0])  # NaN-safe
    fig.update_layout(
        height=300, margin=dict(t=40, b=10), title=title,
        yaxis_title="accuracy (higher is better)" if accuracy else "perplexity (lower is better)",
        yaxis=dict(range=[0, 1.1], tickformat=".0%", tickvals=[0, 0.25, 0.5, 0.75, 1.0]) if accuracy
        else dict(range=[0, (top or 1.0) * 1.2], rangemode="tozero"),
        xaxis=dict(tickangle=0, automargin=True),
    )
    return fig
