"""The calculator's settings: widgets in, a `CalcInputs` out. Every widget is bound to the URL; defaults, help
texts and choices come from `lab` (TrainingSettings, InferenceSettings, lab.vocab), none are retyped here.

A precision and a method that cannot go together (QLoRA on a 16-bit base, LoRA on a 4-bit one) are made to:
the method follows a precision someone picks, the precision follows a method someone picks, and a URL that
mixes them keeps its precision. The page says what was switched (lab.estimate.training.method_for)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import streamlit as st

from lab.estimate.simulate import InferenceSettings
from lab.estimate.training import TrainingSettings, method_for, precision_for
from lab.estimate.warmup import CALCULATOR_PRECISION
from lab.vocab import (
    ADAPTER_DTYPES,
    ATTENTION,
    DTYPES,
    KBIT_UPCAST,
    LOSSES,
    METHODS,
    PRECISIONS,
    TARGET_PRESETS,
    describe,
)
from pages._fields import field_input, metadata

BIG = 10**9  # widget bounds wide enough that any URL value reaches the lab, which says what is wrong with it
DEFAULT = TrainingSettings()
INFER = InferenceSettings()
HELP = {f.name: f.metadata["help"] for f in fields(TrainingSettings)}
INFER_HELP = {f.name: f.metadata["help"] for f in fields(InferenceSettings)}
DTYPE_HELP = ("dtype of everything bitsandbytes leaves unquantized (embeddings, norms, lm_head, biases) and of the "
              "compute. auto = the config's torch_dtype, what the checkpoint ships in.")
SWITCHED = "calc_switched"  # session key: the sentence saying what was switched, shown once
_FIX = "_calc_method_fix"  # session key: the method a URL's mixed settings switch to on the rerun


@dataclass(frozen=True)
class CalcInputs:
    """Everything the calculator computes from."""

    training: TrainingSettings
    inference: InferenceSettings
    switched: str | None = None  # what was switched to keep precision and method together


def _switch_note(what: str, old: str, new: str, why: str) -> None:
    st.session_state[SWITCHED] = f"{what} switched from {old} to {new}: {why}"


def _switched(precision: str, method: str) -> str | None:
    """The switch note, while the precision and method it led to are still the ones chosen."""
    note = st.session_state.get(SWITCHED)
    if isinstance(note, str):  # first run after the switch: remember what it led to
        note = st.session_state[SWITCHED] = (note, precision, method)
    return note[0] if note is not None and note[1:] == (precision, method) else None


def _on_precision() -> None:
    """A precision someone picked decides the method (QLoRA for a quantized base, LoRA otherwise)."""
    precision, method = st.session_state["precision"], st.session_state.get("method", DEFAULT.method)
    if precision and method_for(precision, method) != method:
        new = method_for(precision, method)
        st.session_state["method"] = new
        _switch_note("Method", method, new, f"a {precision} base trains with {METHODS[new].label}.")


def _on_method() -> None:
    """A method someone picked decides the precision (nf4-dq for QLoRA, bf16 for LoRA / full)."""
    method, precision = st.session_state["method"], st.session_state.get("precision", "nf4-dq")
    if precision and precision_for(method, precision) != precision:
        new = precision_for(method, precision)
        st.session_state["precision"] = new
        why = "QLoRA trains a quantized base." if method == "qlora" else \
            f"{METHODS[method].label} trains an unquantized base."
        _switch_note("Precision", precision, new, why)


def weights_inputs() -> tuple[str, str]:
    """The precision the base is stored at, and the dtype of what stays unquantized."""
    if _FIX in st.session_state:  # applied before the widgets exist (Streamlit forbids it after)
        st.session_state["method"] = st.session_state.pop(_FIX)
    c1, c2 = st.columns([3, 1])
    precision = c1.segmented_control(
        "Precision", list(PRECISIONS), default=CALCULATOR_PRECISION, key="precision", bind="query-params",
        required=True, help=describe(PRECISIONS, markdown=True), on_change=_on_precision,
    )
    dtype = c2.selectbox("Unquantized dtype", ["auto", *DTYPES], key="dtype", bind="query-params",
                         help=DTYPE_HELP, disabled=not PRECISIONS[precision].quantized)
    return precision, dtype


def training_inputs(precision: str, dtype: str) -> CalcInputs:
    """The training step's and generation's settings (the rarely changed ones in an expander)."""
    t1, t2, t3, t4 = st.columns(4)
    methods = list(METHODS)
    method = t1.radio("Method", methods, index=methods.index(DEFAULT.method), key="method", bind="query-params",
                      horizontal=True, on_change=_on_method,
                      help=describe(METHODS, markdown=True) + " · The base is loaded at the precision chosen above.")
    if method_for(precision, method) != method:  # mixed settings from the URL: keep the precision
        st.session_state[_FIX] = method_for(precision, method)
        _switch_note("Method", method, st.session_state[_FIX], f"a {precision} base trains with "
                     f"{METHODS[st.session_state[_FIX]].label}.")
        st.rerun()
    # labels, defaults (the GPU recipe, lab.recipe.GPU), bounds and help from the fields: nothing retyped here
    batch = field_input(t2, TrainingSettings, "batch_size", key="batch", value=DEFAULT.batch_size, bind="query-params")
    seq = field_input(t3, TrainingSettings, "max_length", key="seq", value=DEFAULT.max_length, bind="query-params",
                      extra_help="Checked against the model's max_position_embeddings.")
    optimizer = field_input(t4, TrainingSettings, "optimizer", key="optim", value=DEFAULT.optimizer,
                            bind="query-params")
    u1, u2, u3 = st.columns([1, 1, 2])
    gc = field_input(u1, TrainingSettings, "gradient_checkpointing", key="gc", value=DEFAULT.gradient_checkpointing,
                     bind="query-params")
    # The rank keeps a wide bound on purpose: the calculator asks "what if" past a run's bound (lab.recipe), and a
    # URL's r reaches the lab, which refuses one above the targeted layers' width with the reason.
    r = u2.number_input(metadata(TrainingSettings, "r")["label"], 1, BIG, DEFAULT.r, key="r", bind="query-params",
                        disabled=method == "full",
                        help=HELP["r"] + " Checked against the width of the targeted layers.")
    preset = u3.segmented_control("LoRA targets", list(TARGET_PRESETS), default=DEFAULT.targets, key="targets",
                                  bind="query-params", required=True, disabled=method == "full",
                                  help=describe(TARGET_PRESETS, markdown=True))
    more, infer = _more_inputs(precision, dtype)
    training = TrainingSettings(method=method, precision=precision, dtype=dtype, batch_size=int(batch),
                                max_length=int(seq), gradient_checkpointing=gc, optimizer=optimizer, r=int(r),
                                targets=preset, **more)
    return CalcInputs(training, infer, _switched(precision, method))


def _more_inputs(precision: str, dtype: str) -> tuple[dict, InferenceSettings]:
    """Attention, adapter dtype, fp32 upcast, DoRA, loss, and the generation settings."""
    with st.expander("Attention, adapter dtype, fp32 upcast, DoRA, generation"):
        a1, a2, a3, a4 = st.columns(4)
        attn = a1.selectbox("Attention", ["default", *ATTENTION], key="attn", bind="query-params",
                            help=describe(ATTENTION, markdown=True) + " · **default**: sdpa where the model has it.")
        adapter = a2.selectbox("Adapter dtype", list(ADAPTER_DTYPES), key="adapter_dtype", bind="query-params",
                               help=describe(ADAPTER_DTYPES, markdown=True))
        upcast = a3.selectbox("kbit upcast", list(KBIT_UPCAST), key="upcast", bind="query-params",
                              help=describe(KBIT_UPCAST, markdown=True))
        dora = a4.checkbox("DoRA", DEFAULT.use_dora, key="dora", bind="query-params", help=HELP["use_dora"])
        loss = a4.selectbox("Loss", list(LOSSES), key="loss", bind="query-params", help=describe(LOSSES, markdown=True))
        g1, g2, g3 = st.columns(3)
        batch = g1.number_input("Prompts at once", 1, BIG, INFER.batch_size, key="ibatch", bind="query-params",
                                help=INFER_HELP["batch_size"])
        prompt = g2.number_input("Prompt tokens", 1, BIG, INFER.prompt_tokens, key="prompt", bind="query-params",
                                 help=INFER_HELP["prompt_tokens"])
        new = g3.number_input("New tokens", 1, BIG, INFER.new_tokens, key="new", bind="query-params",
                              help=INFER_HELP["new_tokens"])
    attn_impl = None if attn == "default" else attn
    more = dict(use_dora=dora, upcast_for_kbit=upcast == "on", attn=attn_impl, adapter_dtype=adapter, loss=loss)
    return more, InferenceSettings(precision, dtype, int(batch), int(prompt), int(new), attn_impl)
