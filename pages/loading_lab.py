"""Model loading lab: load a real model at each precision in turn, measure it, look inside, score it.

Thin page: widgets in, lab.inspect.load_report / lab.inspect.quantization calls (in background tasks), charts out.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from lab.environment import device_type
from lab.inspect.load_report import HELP, explain_rss
from lab.inspect.quality import DEFAULT_PROMPTS, QualityConfig, describe_tokens
from lab.inspect.quality import HELP as QUALITY_HELP
from lab.inspect.quantization import (
    SCHEMES,
    errors_by_layer,
    layer_errors,
    linear_weight_names,
    load_float_weight,
    summarize_errors,
    weight_histogram,
)
from lab.models.measure import KINDS, MEMORY_LABELS
from lab.models.precision import get_precision, slow_on
from lab.models.sources import resolve_source
from lab.units import fmt_bytes
from lab.vocab import DTYPE_CHOICES, PRECISIONS, describe
from pages._ui import (
    friendly_errors,
    get_task,
    model_field,
    model_registry,
    poll_task,
    progress_bar,
    session_owner,
    shared_models,
    start_task,
    task_running,
)

TASK = "loading_lab_task"
RESULTS = "loading_lab_results"
ERROR = "loading_lab_error"  # a run that failed as a whole (one precision's failure is in its result)
CANCELLED = "loading_lab_cancelled"  # the last run was cancelled: what finished, what did not run
RUN_INPUTS = "loading_lab_inputs"  # the inputs of the last run: its errors go once the inputs change
NF4_TASK = "loading_lab_nf4_task"
NF4_RESULTS = "loading_lab_nf4_results"
NF4_ERROR = "loading_lab_nf4_error"
MB = 1e6

st.title("Model loading lab")
st.markdown(
    "The tutorials load a model at FP32, restart the runtime, load it at 8-bit, restart, load it at 4-bit, and "
    "read `get_memory_footprint()`. Here every precision loads **in turn in one process**: each model is measured, "
    "inspected and scored, then freed before the next, and the calculator's prediction is checked against what "
    "bitsandbytes really stores."
)

device = device_type()
qp = st.query_params
precision_help = describe(PRECISIONS, markdown=True)


def _int_param(key: str, default: int, top: int) -> int:
    """An integer setting from the URL, clamped; the default when absent or not a number."""
    try:
        return min(max(int(qp.get(key, default)), 0), top)
    except ValueError:
        return default


# --------------------------------------------------------------------------- inputs
task = get_task(TASK)
running = task is not None and task.running
c1, c2 = st.columns([1, 2])
with c1:
    spec = model_field("Model", qp.get("model", "embedded"), key="ll_model", help=HELP["model"], disabled=running)
default_precisions = [p for p in qp.get("precisions", "fp32,int8,nf4").split(",") if p in PRECISIONS] or ["fp32"]
precisions = c2.multiselect(
    "Precisions (loaded in this order)", list(PRECISIONS), default=default_precisions,
    format_func=lambda n: PRECISIONS[n].label, help=precision_help, disabled=running,
)
source = None
with c1, friendly_errors("Reading the model"):  # the one message about a bad model, at once, under the field
    source = resolve_source(spec, weights=True)
with st.expander("Options: dtype, perplexity, prompts"):
    o1, o2, o3 = st.columns(3)
    dtype = o1.selectbox("Unquantized dtype (int8/4-bit)", list(DTYPE_CHOICES), help=HELP["dtype"], disabled=running)
    ppl_tokens = o2.number_input(
        "Perplexity tokens",
        0,
        2048,
        _int_param("ppl", QualityConfig.perplexity_tokens, 2048),
        step=128,
        help=QUALITY_HELP["perplexity_tokens"],
        disabled=running,
    )
    max_new = o3.number_input(
        "Answer length (tokens)",
        0,
        256,
        _int_param("answer_tokens", QualityConfig.max_new_tokens, 256),
        step=8,
        help=QUALITY_HELP["max_new_tokens"],
        disabled=running,
    )
    prompts_text = st.text_area("Prompts", "\n".join(DEFAULT_PROMPTS), help=QUALITY_HELP["prompts"], disabled=running)
st.caption(f"Device: **{device}** ({HELP['device']})")
if any(slow_on(p, device) for p in precisions) and ppl_tokens > 256:
    st.info("bf16/fp16 matmuls are ~20× slower than fp32 on this CPU: their perplexity step will take a while.",
            icon=":material/hourglass:")
others = model_registry().loaded()
if others:
    st.info(
        f"{len(others)} model(s) loaded by other pages or people stay in memory and inflate RSS; unused ones are "
        "freed when a load needs their room, or free them in the sidebar for clean figures.",
        icon=":material/info:",
    )

inputs = [spec, list(precisions), dtype, int(ppl_tokens), int(max_new), prompts_text]
if st.session_state.get(RUN_INPUTS) not in (None, inputs):  # new inputs: the last run's errors no longer apply
    st.session_state.pop(ERROR, None)
    st.session_state.pop(CANCELLED, None)
    st.session_state[RESULTS] = [r for r in st.session_state.get(RESULTS) or [] if "error" not in r]

b1, b2, _ = st.columns([1, 1, 3])
if b1.button(
    "Load and measure",
    type="primary",
    icon=":material/play_arrow:",
    disabled=running or source is None,
    help="Load the model at each chosen precision in turn (the previous one is freed first), in the background.",
):
    started = False
    with friendly_errors("Loading"):
        if not precisions:
            st.warning("Choose at least one precision.", icon=":material/warning:")
        else:
            st.query_params.update({"model": spec, "precisions": ",".join(precisions), "ppl": str(int(ppl_tokens)),
                                    "answer_tokens": str(int(max_new))})
            quality = QualityConfig(perplexity_tokens=int(ppl_tokens), max_new_tokens=int(max_new),
                                    prompts=tuple(p.strip() for p in prompts_text.splitlines() if p.strip()))
            for key in (RESULTS, ERROR, CANCELLED):
                st.session_state.pop(key, None)
            st.session_state[RUN_INPUTS] = inputs
            # Each precision waits its turn in the device's queue (and is admitted against free memory).
            start_task(TASK, shared_models().loading_lab, session_owner(), spec, list(precisions), dtype, quality)
            started = True
    if started:
        st.rerun()  # redraw at once with the inputs disabled and the progress poller on
if b2.button(
    "Cancel",
    icon=":material/stop:",
    disabled=not running,
    help="Stop after the current step; the model is still freed.",
):
    task.cancel()


# --------------------------------------------------------------------------- progress (polled, UI never blocks)
def _show_progress(t) -> None:
    if t.queued:  # waiting its turn on the shared device; the Cancel button above takes it out of the line
        st.info(t.last.message if t.last else "Waiting for the device…", icon=":material/hourglass_top:")
    progress_bar(t)
    if t.partial:
        st.caption("Finished so far: " + ", ".join(
            f"{r['precision']} ({'error' if 'error' in r else fmt_bytes(r['measured_bytes'])})" for r in t.partial))


def _keep_results(t) -> None:
    st.session_state[RESULTS] = t.result if t.result is not None else t.partial or []
    st.session_state[ERROR] = t.error if t.status == "failed" else None
    if t.status == "cancelled":
        planned = (t.args[2] if len(t.args) > 2 else []) or []
        done = [r["precision"] for r in st.session_state[RESULTS]]
        st.session_state[CANCELLED] = {"done": done, "skipped": [p for p in planned if p not in done],
                                       "seconds": round(t.elapsed)}


poll_task(TASK, _show_progress, _keep_results)
if st.session_state.get(ERROR):
    st.error(st.session_state[ERROR], icon=":material/error:")
if st.session_state.get(CANCELLED):
    c = st.session_state[CANCELLED]
    st.warning(f"**Cancelled** after {c['seconds']} s. "
               + (f"Finished: {', '.join(c['done'])} (the last one may lack perplexity or answers if it was "
                  "cancelled while scoring). " if c["done"] else "Nothing finished. ")
               + (f"Not run: {', '.join(c['skipped'])}." if c["skipped"] else ""), icon=":material/cancel:")


# --------------------------------------------------------------------------- results
def _mb(n) -> float | None:
    return None if n is None else n / MB


results: list[dict] = st.session_state.get(RESULTS) or []
for r in results:
    if "error" in r:
        st.error(f"**{get_precision(r['precision']).label}**: {r['error']}", icon=":material/error:")
ok = [r for r in results if "error" not in r]

if ok:
    st.header("Measured vs predicted")
    st.markdown(
        "**Measured** = every tensor the loaded model keeps alive — parameters, buffers and bitsandbytes' "
        "quantization state (absmax, nested absmax, code tables, offsets, int8 row scales) — each storage counted "
        "once (a tied lm_head is the embedding). **Predicted** = the calculator "
        "(`lab.estimate.weights.estimate_weights`), "
        "computed from the config alone."
    )
    st.latex(r"\text{error} = \frac{\text{predicted} - \text{measured}}{\text{measured}} \times 100\%")
    # The main table fits the page (7 columns); the other figures are one click away, not scrolled out of sight.
    table = pd.DataFrame([{
        "precision": r["precision"],
        "measured MB": _mb(r["measured_bytes"]),
        "predicted MB": _mb(r["predicted_bytes"]),
        "error %": r["error_pct"],
        "RSS growth MB": _mb(r["memory"].get("rss_bytes")),
        "load s": r["load_seconds"],
        "perplexity": r["perplexity"],
    } for r in ok])
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            "measured MB": st.column_config.NumberColumn(
                format="%.3f", help="True bytes: " + "; ".join(f"{k}: {v}" for k, v in KINDS.items())
            ),
            "predicted MB": st.column_config.NumberColumn(
                format="%.3f", help="lab.estimate.weights.estimate_weights(...).weights_bytes"
            ),
            "error %": st.column_config.NumberColumn(
                format="%+.4f", help="(predicted − measured) / measured; target |error| ≤ 1%"
            ),
            "RSS growth MB": st.column_config.NumberColumn(
                format="%.1f", help=MEMORY_LABELS["rss_bytes"] + " Why it differs between precisions: below the table."
            ),
            "load s": st.column_config.NumberColumn(
                format="%.2f", help="from_pretrained wall time (quantizing happens during the load)."
            ),
            "perplexity": st.column_config.NumberColumn(format="%.3f", help=QUALITY_HELP["perplexity_tokens"]),
        },
    )
    why = [(r["precision"], explain_rss(r)) for r in ok if explain_rss(r)]
    if why:
        st.markdown("**Why RSS grew as it did** (RSS counts pages, not tensors):\n"
                    + "\n".join(f"- {p}: {text}" for p, text in why))
    with st.expander("More figures: Linear class, get_memory_footprint(), RSS parts, memory handed back"):
        more = pd.DataFrame([{
            "precision": r["precision"],
            "Linear class": r["linear_class"],
            "unquantized dtype": r["dtype"],
            "get_memory_footprint MB": _mb(r["hf_footprint_bytes"]),
            "RSS anon MB": _mb(r["memory"].get("rss_anon_bytes")),
            "RSS file MB": _mb(r["memory"].get("rss_file_bytes")),
            "RSS at release MB": _mb(r.get("rss_at_release_bytes")),
            "handed back MB": _mb(r["freed"].get("rss_bytes")),
        } for r in ok])
        st.dataframe(more, hide_index=True, width="stretch", column_config={
            "get_memory_footprint MB": st.column_config.NumberColumn(
                format="%.3f", help="transformers' figure: parameters + buffers only, so it misses absmax, code tables "
                "and SCB."),
            "RSS anon MB": st.column_config.NumberColumn(format="%.1f", help=MEMORY_LABELS["rss_anon_bytes"]),
            "RSS file MB": st.column_config.NumberColumn(format="%.1f", help=MEMORY_LABELS["rss_file_bytes"]),
            "RSS at release MB": st.column_config.NumberColumn(
                format="%.1f", help="RSS growth from before the load until just before the model was freed: forward "
                "passes (perplexity, answers) touch memory-mapped weights and allocate scratch."),
            "handed back MB": st.column_config.NumberColumn(
                format="%.1f", help="RSS returned to the OS when this model was freed (gc + malloc_trim), before the "
                "next load."),
        })

    fig = go.Figure()
    x = [r["precision"] for r in ok]
    fig.add_bar(name="measured (true bytes)", x=x, y=[_mb(r["measured_bytes"]) for r in ok])
    fig.add_bar(
        name="predicted (calculator)",
        x=x,
        y=[_mb(r["predicted_bytes"]) for r in ok],
        text=[None if r["error_pct"] is None else f"{r['error_pct']:+.3f}%" for r in ok],
        textposition="outside",
    )
    fig.add_bar(name="get_memory_footprint()", x=x, y=[_mb(r["hf_footprint_bytes"]) for r in ok])
    fig.update_layout(
        barmode="group", yaxis_title="MB", height=380, margin=dict(t=30, b=10), legend=dict(orientation="h")
    )
    st.plotly_chart(fig, key="bytes_chart")

    kinds = [k for k in KINDS if any(k in r["breakdown"] for r in ok)]
    state_kinds = [k for k in kinds if k not in ("parameter", "buffer")]
    if state_kinds:
        fig = go.Figure()
        for k in state_kinds:
            fig.add_bar(name=k, x=x, y=[r["breakdown"].get(k, 0) / 1e3 for r in ok], hovertext=KINDS[k])
        fig.update_layout(barmode="stack", yaxis_title="KB", height=340, margin=dict(t=40, b=10),
                          title="Quantization state outside the parameters (what get_memory_footprint() misses)")
        st.plotly_chart(fig, key="breakdown_chart")
    with st.expander("Quantization constants in bytes, and what each memory figure counts"):
        st.dataframe(
            pd.DataFrame([{"precision": r["precision"], **{k: r["breakdown"].get(k, 0) for k in kinds}} for r in ok]),
            hide_index=True,
        )
        for key, text in MEMORY_LABELS.items():
            st.markdown(f"- `{key}` — {text}")
        st.markdown("- On CPU the fp32/bf16 weights are memory-mapped from the safetensors file, so RSS grows by less "
                    "than the true bytes until every weight has been touched.")
        after = [
            r
            for r in ok
            if r.get("measured_after_forward_bytes") and r["measured_after_forward_bytes"] != r["measured_bytes"]
        ]
        if after:
            st.markdown(
                "- After the first forward pass: "
                + "; ".join(
                    f"{r['precision']} {fmt_bytes(r['measured_bytes'])} → "
                    f"{fmt_bytes(r['measured_after_forward_bytes'])}"
                    + (
                        f" (predicted {fmt_bytes(r['predicted_after_forward_bytes'])})"
                        if r.get("predicted_after_forward_bytes")
                        else ""
                    )
                    for r in after
                )
                + ". On AVX512-BF16 CPUs bitsandbytes repacks 4-bit layers for its CPU kernel (absmax → bf16, nested "
                "state dropped); int8 keeps the last batch's outlier column indices (`state.idx`)."
            )
        cuda = [r for r in ok if r["memory"].get("cuda_allocated_bytes") is not None]
        if cuda:
            st.dataframe(
                pd.DataFrame(
                    [{"precision": r["precision"], **{k: _mb(v) for k, v in r["memory"].items()}} for r in cuda]
                ),
                hide_index=True,
            )

    st.header("What changed inside")
    st.markdown("bitsandbytes swaps each decoder `nn.Linear` for its own class; nothing else is touched: "
                "`Linear` → `Linear8bitLt` (int8) → `Linear4bit` (fp4 / nf4).")
    classes = pd.DataFrame([{"precision": r["precision"], "decoder Linear class": r["linear_class"],
                             **{f"# {k}": v for k, v in r["linear_classes"].items()}} for r in ok])
    count_cols = [c for c in classes.columns if c.startswith("# ")]
    classes[count_cols] = classes[count_cols].fillna(0).astype(int)
    st.dataframe(classes, hide_index=True)
    tabs = st.tabs([get_precision(r["precision"]).label for r in ok])
    for tab, r in zip(tabs, ok, strict=True):
        with tab:
            st.code(r["config_code"], language="python")
            if r["unquantized"]:
                st.markdown("**Stayed unquantized, and why**")
                st.dataframe(
                    pd.DataFrame(
                        [
                            {
                                "class": g["class"],
                                "count": g["count"],
                                "params": g["params"],
                                "dtype": g["dtype"],
                                "why": g["why"],
                                "e.g.": ", ".join(g["examples"]),
                            }
                            for g in r["unquantized"]
                        ]
                    ),
                    hide_index=True,
                )
            else:
                st.caption("Nothing is quantized at this precision: every weight is stored in "
                           f"{r['dtype']}.")
            with st.expander("Architecture tree (print(model))"):
                st.code(r["tree"], language="text")

    if any(r["perplexity"] is not None or r["answers"] for r in ok):
        st.header("What it costs in quality")
    scored = [r for r in ok if r["perplexity"] is not None]
    if scored:
        first = scored[0]
        counted = describe_tokens(first["perplexity_tokens"], first.get("perplexity_tokens_read") or 0,
                                  first.get("perplexity_windows") or 0)
        st.markdown(f"Perplexity on the lab's own text (`assets/eval_text.txt`): {counted}; the same windows at "
                    "every precision. N below counts the predicted tokens:")
        st.latex(r"\mathrm{PPL} = \exp\Big(-\frac{1}{N}\sum_{i=1}^{N} \log p(x_i \mid x_{<i})\Big)")
        fig = go.Figure(go.Bar(x=[r["precision"] for r in scored], y=[r["perplexity"] for r in scored],
                               text=[f"{r['perplexity']:.2f}" for r in scored], textposition="outside"))
        fig.update_layout(yaxis_title="perplexity (lower is better)", height=320, margin=dict(t=30, b=10))
        st.plotly_chart(fig, key="ppl_chart")
    answered = [r for r in ok if r["answers"]]
    if answered:
        st.subheader("Greedy answers, side by side")
        for i, a in enumerate(answered[0]["answers"]):
            st.markdown(f"**{a['prompt']}**")
            cols = st.columns(len(answered))
            for col, r in zip(cols, answered, strict=True):
                text = r["answers"][i]["answer"] if i < len(r["answers"]) else "—"
                col.caption(get_precision(r["precision"]).label)
                col.markdown(text or "_(empty)_")

# --------------------------------------------------------------------------- NF4 up close
st.header("NF4 up close")
st.markdown(
    "4-bit quantization splits each weight matrix into blocks of 64, divides every block by its largest magnitude "
    "(absmax) and rounds each value to the nearest of 16 levels. NF4 places the levels at quantiles of a normal "
    "distribution; FP4 spreads them like a tiny float. The histogram shows one matrix **as the quantizer sees it** "
    "(each value divided by its block's absmax), with both level sets drawn over it. Read straight from the "
    "checkpoint, so it needs no loaded model."
)
st.latex(r"q_i = \arg\min_{k} \big|\, w_i / \mathrm{absmax}_{\text{block}(i)} - \text{level}_k \big|, \qquad "
         r"\text{relative error} = \frac{\lVert W - \mathrm{dequant}(\mathrm{quant}(W)) \rVert_F}{\lVert W \rVert_F}")


@st.cache_data(show_spinner=False, max_entries=16)
def _histogram(spec: str, name: str):
    return weight_histogram(load_float_weight(spec, name), name)


if source is None:
    st.caption("Pick a model with weights above to look at its matrices.")
with friendly_errors("Reading the checkpoint"):
    names = linear_weight_names(source) if source is not None else []
    if names:
        n1, n2 = st.columns([3, 1])
        name = n1.selectbox(
            "Weight matrix",
            names,  # in model order: the first layer's first Linear first
            help="Any Linear weight bitsandbytes would quantize (embeddings and lm_head stay unquantized).",
        )
        raw = n2.toggle(
            "Raw values",
            help="Show raw weight values instead of block-normalized ones; the levels are then "
            "scaled by the median block absmax, so they only approximate where each block's levels fall.",
        )
        hist = _histogram(spec, name)
        edges, counts = (hist.raw_edges, hist.raw_counts) if raw else (hist.edges, hist.counts)
        scale = hist.median_absmax if raw else 1.0
        centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
        fig = go.Figure(
            go.Bar(x=centers, y=counts, name="weights", marker_color="#9aa5b1", width=(edges[1] - edges[0]))
        )
        top = max(counts) if counts else 1
        for qt, color, dash in (("nf4", "#d62728", "solid"), ("fp4", "#1f77b4", "dash")):
            xs, ys = [], []
            for v in hist.levels[qt]:
                xs += [v * scale, v * scale, None]
                ys += [0, top, None]
            fig.add_scatter(
                x=xs, y=ys, mode="lines", name=f"{qt.upper()} levels", line=dict(color=color, dash=dash, width=1.5)
            )
        fig.update_layout(height=380, margin=dict(t=30, b=10), bargap=0, legend=dict(orientation="h"),
                          xaxis_title="raw weight value" if raw else "value / block absmax",
                          title=f"{name} {tuple(hist.shape)}")
        st.plotly_chart(fig, key="nf4_hist")
        share = pd.DataFrame({"NF4 level": hist.levels["nf4"], "NF4 share": hist.level_share["nf4"],
                              "FP4 level": hist.levels["fp4"], "FP4 share": hist.level_share["fp4"]})
        with st.expander("How often each level is used in this matrix"):
            st.caption(
                "NF4 uses its 16 levels far more evenly than FP4 on bell-shaped weights — that is the point of NF4."
            )
            st.dataframe(
                share,
                hide_index=True,
                column_config={c: st.column_config.NumberColumn(format="%.4f") for c in share.columns},
            )

        if st.button(
            "Quantization error of every layer",
            icon=":material/analytics:",
            disabled=task_running(NF4_TASK),
            help="Quantize and dequantize every Linear weight with bitsandbytes (" + "; ".join(SCHEMES.values()) + ")",
        ):
            st.session_state.pop(NF4_RESULTS, None)
            start_task(NF4_TASK, layer_errors, spec)
            st.rerun()

        def _keep_layer_errors(t) -> None:
            st.session_state[NF4_RESULTS] = t.result
            st.session_state[NF4_ERROR] = (t.args[0], t.error) if t.error else None  # the model it is about

        poll_task(NF4_TASK, progress_bar, _keep_layer_errors)
        nf4_error = st.session_state.get(NF4_ERROR)
        if nf4_error and nf4_error[0] == spec:  # another model typed since: that error no longer applies
            st.error(nf4_error[1], icon=":material/error:")
        rows = st.session_state.get(NF4_RESULTS)
        if rows:
            df = pd.DataFrame(rows)
            summary = summarize_errors(rows)
            cols = st.columns(len(summary))
            for col, (s, v) in zip(cols, summary.items(), strict=True):
                col.metric(f"{s} mean relative error", f"{v:.2%}", help=SCHEMES[s])
            by_layer = pd.DataFrame(errors_by_layer(rows))
            fig = go.Figure()
            for s in SCHEMES:
                fig.add_scatter(x=by_layer["layer"], y=by_layer[s] * 100, mode="lines+markers", name=s)
            fig.update_layout(
                height=340,
                margin=dict(t=30, b=10),
                xaxis_title="decoder layer",
                xaxis=dict(dtick=max(1, len(by_layer) // 15)),
                yaxis_title="relative error % (mean over the layer's Linears)",
                legend=dict(orientation="h"),
            )
            st.plotly_chart(fig, key="layer_err_chart")
            with st.expander("Every weight matrix"):
                st.dataframe(
                    df[["name", "numel", *SCHEMES]],
                    hide_index=True,
                    column_config={s: st.column_config.NumberColumn(format="%.5f", help=SCHEMES[s]) for s in SCHEMES},
                )
