"""The loading lab's "NF4 up close" section: one weight matrix as the quantizer sees it, and every layer's
quantization error. Read straight from the checkpoint (no loaded model); laid out here, computed in
lab.inspect.quantization, drawn by pages/_charts.py."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from lab.inspect.quantization import (
    SCHEMES,
    errors_by_layer,
    layer_errors,
    linear_weight_names,
    load_float_weight,
    summarize_errors,
    weight_histogram,
)
from pages._charts import layer_error_lines, level_histogram
from pages._ui import friendly_errors, poll_task, progress_bar, start_task, task_running

NF4_TASK = "loading_lab_nf4_task"
NF4_RESULTS = "loading_lab_nf4_results"
NF4_ERROR = "loading_lab_nf4_error"


@st.cache_data(show_spinner=False, max_entries=16)
def _histogram(spec: str, name: str):
    return weight_histogram(load_float_weight(spec, name), name)


def nf4_up_close(spec: str, source) -> None:
    st.header("NF4 up close")
    st.markdown(
        "4-bit quantization splits each weight matrix into blocks of 64, divides every block by its largest "
        "magnitude (absmax) and rounds each value to the nearest of 16 levels. NF4 places the levels at quantiles "
        "of a normal distribution; FP4 spreads them like a tiny float. The histogram shows one matrix **as the "
        "quantizer sees it** (each value divided by its block's absmax), with both level sets drawn over it. Read "
        "straight from the checkpoint, so it needs no loaded model."
    )
    st.latex(r"q_i = \arg\min_{k} \big|\, w_i / \mathrm{absmax}_{\text{block}(i)} - \text{level}_k \big|, \qquad "
             r"\text{relative error} = \frac{\lVert W - \mathrm{dequant}(\mathrm{quant}(W)) \rVert_F}"
             r"{\lVert W \rVert_F}")
    if source is None:
        st.caption("Pick a model with weights above to look at its matrices.")
    with friendly_errors("Reading the checkpoint"):
        names = linear_weight_names(source) if source is not None else []
        if names:
            _one_matrix(spec, names)
            _every_layer(spec)


def _one_matrix(spec: str, names: list[str]) -> None:
    n1, n2 = st.columns([3, 1])
    name = n1.selectbox("Weight matrix", names,  # in model order: the first layer's first Linear first
                        help="Any Linear weight bitsandbytes would quantize (embeddings and lm_head stay unquantized).")
    raw = n2.toggle("Raw values", help="Show raw weight values instead of block-normalized ones; the levels are then "
                    "scaled by the median block absmax, so they only approximate where each block's levels fall.")
    hist = _histogram(spec, name)
    st.plotly_chart(level_histogram(hist, raw, name), key="nf4_hist")
    share = pd.DataFrame({"NF4 level": hist.levels["nf4"], "NF4 share": hist.level_share["nf4"],
                          "FP4 level": hist.levels["fp4"], "FP4 share": hist.level_share["fp4"]})
    with st.expander("How often each level is used in this matrix"):
        st.caption("NF4 uses its 16 levels far more evenly than FP4 on bell-shaped weights — that is the point of NF4.")
        st.dataframe(share, hide_index=True,
                     column_config={c: st.column_config.NumberColumn(format="%.4f") for c in share.columns})


def _keep_layer_errors(t) -> None:
    st.session_state[NF4_RESULTS] = t.result
    st.session_state[NF4_ERROR] = (t.args[0], t.error) if t.error else None  # the model it is about


def _every_layer(spec: str) -> None:
    if st.button("Quantization error of every layer", icon=":material/analytics:", disabled=task_running(NF4_TASK),
                 help="Quantize and dequantize every Linear weight with bitsandbytes ("
                      + "; ".join(SCHEMES.values()) + ")"):
        st.session_state.pop(NF4_RESULTS, None)
        start_task(NF4_TASK, layer_errors, spec)
        st.rerun()
    poll_task(NF4_TASK, progress_bar, _keep_layer_errors)
    nf4_error = st.session_state.get(NF4_ERROR)
    if nf4_error and nf4_error[0] == spec:  # another model typed since: that error no longer applies
        st.error(nf4_error[1], icon=":material/error:")
    rows = st.session_state.get(NF4_RESULTS)
    if not rows:
        return
    summary = summarize_errors(rows)
    for col, (s, v) in zip(st.columns(len(summary)), summary.items(), strict=True):
        col.metric(f"{s} mean relative error", f"{v:.2%}", help=SCHEMES[s])
    by_layer = pd.DataFrame(errors_by_layer(rows))
    st.plotly_chart(layer_error_lines(list(by_layer["layer"]), {s: list(by_layer[s]) for s in SCHEMES}),
                    key="layer_err_chart")
    with st.expander("Every weight matrix"):
        st.dataframe(pd.DataFrame(rows)[["name", "numel", *SCHEMES]], hide_index=True,
                     column_config={s: st.column_config.NumberColumn(format="%.5f", help=SCHEMES[s]) for s in SCHEMES})
