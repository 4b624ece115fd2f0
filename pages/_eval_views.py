"""The Playground's evaluation views: a finished evaluation, and one going on. Laid out here; the rows and
figures come from lab.generate.evaluate and pages/_charts.py."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from lab.generate.evaluate import EvalResult, example_rows, to_csv, to_markdown
from lab.tasks import BackgroundTask
from pages._charts import score_bars
from pages._ui import progress_bar, queued_notice


def show_evaluation(result: EvalResult, precision_notes: dict[str, str | None]) -> None:
    """The metrics table, the chart, every example (rows where the models disagree highlighted), downloads."""
    m = result.metrics()
    acc = result.metric == "accuracy"
    table = pd.DataFrame([{"model": n, **d} for n, d in m.items()]).set_index("model")
    st.dataframe(table, width="stretch",
                 column_config={"accuracy": st.column_config.NumberColumn(format="percent")})
    key = "accuracy" if acc else "perplexity"
    for name, note in precision_notes.items():
        if note and name in result.models:
            st.caption(f":material/info: **{name}**: {note}")
    fig = score_bars(list(m), [d[key] for d in m.values()], acc,
                     f"{result.dataset}: {len(result.rows)} test examples")
    st.plotly_chart(fig, width="stretch", key="eval_chart")
    df = pd.DataFrame(example_rows(result))
    st.caption(f"{int(df['differs'].sum()) if len(df) else 0} of {len(df)} examples got different answers "
               "from the models (highlighted).")
    if len(df):
        styled = df.style.apply(lambda row: ["background-color: rgba(255, 196, 0, 0.25)" if row["differs"] else ""
                                             for _ in row], axis=1)
        st.dataframe(styled, width="stretch", hide_index=True)
    d1, d2 = st.columns(2)
    d1.download_button("Markdown report", to_markdown(result), file_name="evaluation.md", mime="text/markdown",
                       icon=":material/download:", help="Metrics and every example as a Markdown document.")
    d2.download_button("CSV", to_csv(result), file_name="evaluation.csv", mime="text/csv",
                       icon=":material/download:",
                       help="One line per example: each model's answer, correctness, loss.")

def show_evaluating(task: BackgroundTask) -> None:
    """While it runs: a Stop button, "Example k of N", the answers so far."""
    if task.queued and not task.partial:
        queued_notice(task)
        return
    st.button("Stop evaluation", icon=":material/stop:", on_click=task.cancel,
              help="Stop; keep the scored examples.")
    progress_bar(task, "Starting…")
    if task.partial:
        st.dataframe(pd.DataFrame([{"#": r["index"], "reference": r["reference"], **r["answers"]}
                                   for r in task.partial]), hide_index=True, width="stretch")
