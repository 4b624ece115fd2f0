"""Model loading lab: load a real model at each precision in turn, measure it, look inside, score it.

Thin page: widgets in, lab.inspect.load_report / lab.inspect.quantization calls (in background tasks), charts out.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

import pages._starting  # noqa: F401  (a fresh server's first visit: paints before the imports below)
from lab.environment import device_type
from lab.inspect.load_report import HELP, LoadFailure, LoadReport, mb, read_results
from lab.inspect.quality import DEFAULT_PROMPTS, QualityConfig, describe_tokens
from lab.inspect.quality import HELP as QUALITY_HELP
from lab.models.measure import KINDS, MEMORY_LABELS
from lab.models.precision import get_precision, slow_on
from lab.models.sources import resolve_source
from lab.units import fmt_bytes
from lab.vocab import DTYPE_CHOICES, PRECISIONS, describe
from pages._charts import bytes_bars, precision_bars, state_bars
from pages._nf4 import nf4_up_close
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
)

TASK = "loading_lab_task"
RESULTS = "loading_lab_results"
ERROR = "loading_lab_error"  # a run that failed as a whole (one precision's failure is in its result)
CANCELLED = "loading_lab_cancelled"  # the last run was cancelled: what finished, what did not run
RUN_INPUTS = "loading_lab_inputs"  # the inputs of the last run: its errors go once the inputs change

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
            f"{r.precision} ({'error' if isinstance(r, LoadFailure) else fmt_bytes(r.measured_bytes)})"
            for r in read_results(t.partial)))


def _keep_results(t) -> None:
    st.session_state[RESULTS] = read_results(t.result if t.result is not None else t.partial or [])
    st.session_state[ERROR] = t.error if t.status == "failed" else None
    if t.status == "cancelled":
        planned = (t.args[2] if len(t.args) > 2 else []) or []
        done = [r.precision for r in st.session_state[RESULTS]]
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
NUMBER = st.column_config.NumberColumn
SUMMARY_COLUMNS = {
    "measured MB": NUMBER(format="%.3f", help="True bytes: " + "; ".join(f"{k}: {v}" for k, v in KINDS.items())),
    "predicted MB": NUMBER(format="%.3f", help="lab.estimate.weights.estimate_weights(...).weights_bytes"),
    "error %": NUMBER(format="%+.4f", help="(predicted − measured) / measured; target |error| ≤ 1%"),
    "RSS growth MB": NUMBER(format="%.1f",
                            help=MEMORY_LABELS["rss_bytes"] + " Why it differs between precisions: below the table."),
    "load s": NUMBER(format="%.2f", help="from_pretrained wall time (quantizing happens during the load)."),
    "perplexity": NUMBER(format="%.3f", help=QUALITY_HELP["perplexity_tokens"]),
}
DETAIL_COLUMNS = {
    "get_memory_footprint MB": NUMBER(format="%.3f", help="transformers' figure: parameters + buffers only, so it "
                                      "misses absmax, code tables and SCB."),
    "RSS anon MB": NUMBER(format="%.1f", help=MEMORY_LABELS["rss_anon_bytes"]),
    "RSS file MB": NUMBER(format="%.1f", help=MEMORY_LABELS["rss_file_bytes"]),
    "RSS at release MB": NUMBER(format="%.1f", help="RSS growth from before the load until just before the model was "
                                "freed: forward passes (perplexity, answers) touch memory-mapped weights and allocate "
                                "scratch."),
    "handed back MB": NUMBER(format="%.1f", help="RSS returned to the OS when this model was freed (gc + malloc_trim), "
                             "before the next load."),
}


def _measured(ok: list[LoadReport]) -> None:
    st.header("Measured vs predicted")
    st.markdown(
        "**Measured** = every tensor the loaded model keeps alive — parameters, buffers and bitsandbytes' "
        "quantization state (absmax, nested absmax, code tables, offsets, int8 row scales) — each storage counted "
        "once (a tied lm_head is the embedding). **Predicted** = the calculator "
        "(`lab.estimate.weights.estimate_weights`), computed from the config alone."
    )
    st.latex(r"\text{error} = \frac{\text{predicted} - \text{measured}}{\text{measured}} \times 100\%")
    # The main table fits the page (7 columns); the other figures are one click away, not scrolled out of sight.
    st.dataframe(pd.DataFrame([r.summary_row() for r in ok]), hide_index=True, width="stretch",
                 column_config=SUMMARY_COLUMNS)
    why = [(r.precision, r.explain_rss()) for r in ok if r.explain_rss()]
    if why:
        st.markdown("**Why RSS grew as it did** (RSS counts pages, not tensors):\n"
                    + "\n".join(f"- {p}: {text}" for p, text in why))
    with st.expander("More figures: Linear class, get_memory_footprint(), RSS parts, memory handed back"):
        st.dataframe(pd.DataFrame([r.detail_row() for r in ok]), hide_index=True, width="stretch",
                     column_config=DETAIL_COLUMNS)
    x = [r.precision for r in ok]
    st.plotly_chart(bytes_bars(x, [mb(r.measured_bytes) for r in ok], [mb(r.predicted_bytes) for r in ok],
                               [mb(r.hf_footprint_bytes) for r in ok], [r.error_pct for r in ok]), key="bytes_chart")
    kinds = [k for k in KINDS if any(k in r.breakdown for r in ok)]
    state_kinds = [k for k in kinds if k not in ("parameter", "buffer")]
    if state_kinds:
        st.plotly_chart(state_bars(x, {k: [r.breakdown.get(k, 0) / 1e3 for r in ok] for k in state_kinds}, KINDS),
                        key="breakdown_chart")
    with st.expander("Quantization constants in bytes, and what each memory figure counts"):
        st.dataframe(pd.DataFrame([{"precision": r.precision, **{k: r.breakdown.get(k, 0) for k in kinds}}
                                   for r in ok]), hide_index=True)
        for key, text in MEMORY_LABELS.items():
            st.markdown(f"- `{key}` — {text}")
        st.markdown("- On CPU the fp32/bf16 weights are memory-mapped from the safetensors file, so RSS grows by less "
                    "than the true bytes until every weight has been touched.")
        after = [text for r in ok if (text := r.after_forward_text())]
        if after:
            st.markdown("- After the first forward pass: " + "; ".join(after) + ". On AVX512-BF16 CPUs bitsandbytes "
                        "repacks 4-bit layers for its CPU kernel (absmax → bf16, nested state dropped); int8 keeps "
                        "the last batch's outlier column indices (`state.idx`).")
        cuda = [r for r in ok if r.memory.get("cuda_allocated_bytes") is not None]
        if cuda:
            st.dataframe(pd.DataFrame([{"precision": r.precision, **{k: mb(v) for k, v in r.memory.items()}}
                                       for r in cuda]), hide_index=True)


def _inside(ok: list[LoadReport]) -> None:
    st.header("What changed inside")
    st.markdown("bitsandbytes swaps each decoder `nn.Linear` for its own class; nothing else is touched: "
                "`Linear` → `Linear8bitLt` (int8) → `Linear4bit` (fp4 / nf4).")
    classes = pd.DataFrame([{"precision": r.precision, "decoder Linear class": r.linear_class,
                             **{f"# {k}": v for k, v in r.linear_classes.items()}} for r in ok])
    count_cols = [c for c in classes.columns if c.startswith("# ")]
    classes[count_cols] = classes[count_cols].fillna(0).astype(int)
    st.dataframe(classes, hide_index=True)
    for tab, r in zip(st.tabs([get_precision(r.precision).label for r in ok]), ok, strict=True):
        with tab:
            st.code(r.config_code, language="python")
            if r.unquantized:
                st.markdown("**Stayed unquantized, and why**")
                st.dataframe(pd.DataFrame([{"class": g["class"], "count": g["count"], "params": g["params"],
                                            "dtype": g["dtype"], "why": g["why"], "e.g.": ", ".join(g["examples"])}
                                           for g in r.unquantized]), hide_index=True)
            else:
                st.caption(f"Nothing is quantized at this precision: every weight is stored in {r.dtype}.")
            with st.expander("Architecture tree (print(model))"):
                st.code(r.tree, language="text")


def _quality(ok: list[LoadReport]) -> None:
    if any(r.perplexity is not None or r.answers for r in ok):
        st.header("What it costs in quality")
    scored = [r for r in ok if r.perplexity is not None]
    if scored:
        first = scored[0]
        counted = describe_tokens(first.perplexity_tokens, first.perplexity_tokens_read or 0,
                                  first.perplexity_windows or 0)
        st.markdown(f"Perplexity on the lab's own text (`assets/eval_text.txt`): {counted}; the same windows at "
                    "every precision. N below counts the predicted tokens:")
        st.latex(r"\mathrm{PPL} = \exp\Big(-\frac{1}{N}\sum_{i=1}^{N} \log p(x_i \mid x_{<i})\Big)")
        st.plotly_chart(precision_bars([r.precision for r in scored], [r.perplexity for r in scored]),
                        key="ppl_chart")
    answered = [r for r in ok if r.answers]
    if answered:
        st.subheader("Greedy answers, side by side")
        for i, a in enumerate(answered[0].answers):
            st.markdown(f"**{a['prompt']}**")
            for col, r in zip(st.columns(len(answered)), answered, strict=True):
                col.caption(get_precision(r.precision).label)
                col.markdown((r.answers[i]["answer"] if i < len(r.answers) else "—") or "_(empty)_")


results = st.session_state.get(RESULTS) or []
for failure in [r for r in results if isinstance(r, LoadFailure)]:
    st.error(f"**{get_precision(failure.precision).label}**: {failure.error}", icon=":material/error:")
ok = [r for r in results if isinstance(r, LoadReport)]
if ok:
    _measured(ok)
    _inside(ok)
    _quality(ok)
nf4_up_close(spec, source)
