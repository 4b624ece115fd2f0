"""Playground: the base model and its LoRA adapters answer side by side, and a measured verdict.

Thin page: widgets in, lab.generate.compare / lab.generate.evaluate calls in background tasks, columns and tables out.
One base model (from the shared registry) serves every column; all columns come out of one batched
generate (each row with its own adapter, lab.generate.mixed_lora), streamed into their columns as tokens arrive.
The model is shared with everyone on the server, the adapters are this session's own, and the work
waits its turn in the device's queue (lab.sharing).
"""

from __future__ import annotations

import streamlit as st

import pages._starting  # noqa: F401  (a fresh server's first visit: paints before the imports below)
from lab import policy
from lab.data.datasets import list_datasets, save_upload
from lab.data.prompts import build_chat_prompt
from lab.errors import LabError
from lab.generate.adapters import choose_adapters, discover_runs, newest_matching, precision_note
from lab.generate.compare import BASE_COLUMN, Comparison, SamplingSettings
from lab.generate.evaluate import METRICS, EvalProgress, EvalSettings, load_examples
from lab.models.loading import load_tokenizer
from lab.models.sources import resolve_source
from lab.sharing.limits import RequestLimits
from lab.vocab import PRECISIONS, describe
from pages._eval_views import show_evaluating, show_evaluation
from pages._ui import (
    friendly_errors,
    get_task,
    model_field,
    poll_task,
    queued_notice,
    room_notice,
    session_owner,
    shared_models,
    start_task,
    upload_limit_mb,
)

GEN_TASK = "playground_generate"
EVAL_TASK = "playground_evaluate"
EVAL_RESULT = "playground_eval_result"  # the last evaluation (EvalResult), or its error (str)
EVAL_PRECISION = "playground_eval_precision"  # the base precision the last evaluation ran at
EVAL_INPUTS = "playground_eval_inputs"  # the inputs the last evaluation answered
CHAT = "playground_chat"  # column -> list of messages (chat mode)
LAST = "playground_last"  # the last finished comparison, or its error (a Comparison)
GEN_INPUTS = "playground_gen_inputs"  # the inputs the running generation answers
# Seconds between redraws of the streaming columns. Each redraw costs the browser 30-100 ms of CPU whatever
# changed (Streamlit re-sends a fragment whole) and the server a script run that holds the GIL between the
# generating thread's decode steps, both taken from generation on a 2-core machine. At 1 s the page streamed
# at 0.87x the CLI's tokens/s (21.4 vs 24.6, quiet machine); at 2 s an answer still grows visibly each redraw.
STREAM_POLL_S = 2.0
SH = SamplingSettings.HELP
EH = EvalSettings.HELP
UPLOAD = "Upload a file…"  # the dataset choice that opens the file box

st.title("Playground")
st.markdown(
    "What did the adapter change? The **base** model and each **adapter** answer the same prompt with the same "
    "settings, side by side, as they are generated. One copy of the base weights serves every column: the adapters "
    "are loaded next to it in one peft model, and every column runs in **one batched generate** — the base row "
    "through the untouched base layers, each adapter row through its own LoRA matrices, added to that row alone."
)
st.latex(r"h_{\text{adapter}} = W_0 x + \tfrac{\alpha}{r} B A x \qquad h_{\text{base}} = W_0 x")

qp = st.query_params
# Looked up here, on the script thread: the workers below never call Streamlit.
shared = shared_models()  # one base model copy, one queue per device, the limits: shared by everyone
limits = shared.limits
owner = session_owner()  # this session's adapters and place in line are its own
gen_task = get_task(GEN_TASK)
eval_task = get_task(EVAL_TASK)
busy = any(t is not None and t.running for t in (gen_task, eval_task))

# --------------------------------------------------------------------------- base and adapters
c1, c2 = st.columns([2, 1])
with c1:
    spec = model_field("Base model", qp.get("model", "embedded"), key="pg_model", disabled=busy,
                       help="'embedded' (SmolLM2-135M-Instruct, offline), a local model folder, or a Hub id "
                            "when online.")
precision = c2.selectbox("Precision", list(PRECISIONS), index=list(PRECISIONS).index(qp.get("precision", "fp32"))
                         if qp.get("precision", "fp32") in PRECISIONS else 0, format_func=lambda n: PRECISIONS[n].label,
                         disabled=busy, help=describe(PRECISIONS, markdown=True))

source = None
with friendly_errors("Resolving the base model"):
    source = resolve_source(spec, weights=True)  # hints name only what this page can load

runs = discover_runs()
run_names = {str(r.path): r.name for r in runs}  # chips show the run's name; what it is, below the picker
a1, a2 = st.columns([3, 1])
newest = newest_matching(runs, source)
# A shared link's adapters, else the newest finished run trained on this base: the adapter just trained is ready.
preselect = [p for p in qp.get_all("adapter") if p in run_names] if qp.get_all("adapter") else \
    ([str(newest.path)] if newest is not None else [])
picked = a1.multiselect("Adapters from runs/", list(run_names), format_func=run_names.get, disabled=busy,
                        default=preselect[:limits.max_adapters], max_selections=limits.max_adapters,
                        help="LoRA adapters saved by the Training page (newest first; the newest finished run "
                             "trained on this base is preselected). Each becomes a column, seen by you only. "
                             + RequestLimits.help("max_adapters"))
for r in runs:
    if str(r.path) in picked:
        a1.caption(f"**{r.name}**: {r.describe()}")
typed = "\n".join(p for p in qp.get_all("adapter") if p not in run_names)  # a shared link's adapters, checked below
if not policy.public_mode() or policy.limits().hub_allow:  # public mode: runs of this server, or allow-listed Hub ids
    typed = a2.text_area("Other adapters (one per line)", value=typed, height=68, disabled=busy,
                         help="Any folder holding adapter_config.json and adapter_model.safetensors, or a Hub id when "
                         "online." if not policy.public_mode() else
                         "Hub ids of adapters the instructor allow-listed (QLORA_LAB_HUB_ALLOW).")

choice = choose_adapters([*picked, *[line.strip() for line in typed.splitlines() if line.strip()]], source)
for error in choice.errors:  # that adapter is left out; the rest of the page works on
    st.error(f"{error} (left out)", icon=":material/error:")
for warning in choice.warnings:
    st.warning(warning, icon=":material/warning:")
adapters = choice.infos
if not runs and not typed.strip():
    st.info("No trained adapters in runs/ yet: train one on the Training page, or give an adapter folder. "
            "The base column works on its own meanwhile.", icon=":material/info:")
columns = [BASE_COLUMN, *[a.name for a in adapters]]
notes = {a.name: precision_note(a, precision) for a in adapters}  # e.g. trained on an NF4 base, run here on FP32
# What a result or an error answers: once these change, an error about the old ones is no longer shown.
inputs = (spec, precision, tuple(a.source for a in adapters))
if any(a.use_dora for a in adapters):
    st.caption(":material/info: DoRA adapters cannot join the batch: they run one after another, "
               "after the batched columns (slower, same answers).")


@st.cache_resource(show_spinner=False, max_entries=4)
def cached_tokenizer(pretrained_id: str):
    return load_tokenizer(resolve_source(pretrained_id))


def shareable() -> None:
    st.query_params.update({"model": spec, "precision": precision})
    st.query_params["adapter"] = [a.source for a in adapters]


tab_gen, tab_eval = st.tabs(["Side by side", "Evaluate on a test set"])

# --------------------------------------------------------------------------- side by side
with tab_gen:
    s1, s2, s3, s4, s5 = st.columns(5)
    greedy = s1.toggle("Greedy", value=True, help=SH["greedy"], disabled=busy)
    temperature = s2.slider("Temperature", 0.05, 2.0, 0.7, 0.05, help=SH["temperature"], disabled=busy or greedy)
    top_p = s3.slider("Top-p", 0.05, 1.0, 0.95, 0.05, help=SH["top_p"], disabled=busy or greedy)
    max_new = s4.number_input("Max new tokens", 1, limits.max_new_tokens,
                              min(SamplingSettings.max_new_tokens, limits.max_new_tokens), step=16,
                              help=f"{SH['max_new_tokens']} {RequestLimits.help('max_new_tokens')}", disabled=busy)
    seed = s5.number_input("Seed", 0, 2**31 - 1, 0, help=SH["seed"], disabled=busy or greedy)
    t1, t2, t3 = st.columns(3)
    use_template = t1.toggle("Chat template", value=True, help=SH["use_chat_template"], disabled=busy)
    chat_mode = t2.toggle("Chat mode", value=False, disabled=busy,
                          help="Keep the conversation: each column remembers its own earlier answers, so the "
                               "histories drift apart exactly as each model would lead them.")
    show_raw = t3.toggle("Show raw text", value=False,
                         help="Show the exact text each model sees: the prompt after the chat template.")
    settings = SamplingSettings(max_new_tokens=int(max_new), temperature=0.0 if greedy else temperature,
                                top_p=top_p, seed=int(seed), use_chat_template=use_template)
    history: dict[str, list[dict]] = st.session_state.setdefault(CHAT, {})

    with st.form("playground_prompt", border=False):
        prompt = st.text_area("Prompt", value=qp.get("prompt", "What is a LoRA adapter? Answer in two sentences."),
                              help="The user message every column answers (in chat mode: the next turn).")
        b1, b2, b3 = st.columns([1, 1, 4])
        go_clicked = b1.form_submit_button("Generate", type="primary", icon=":material/play_arrow:", disabled=busy,
                                           help="Run the base and every adapter on this prompt, in one batched "
                                                "generate.")
        clear_clicked = b2.form_submit_button("Clear chat", icon=":material/delete:", disabled=busy or not history,
                                              help="Forget every column's conversation.")
    if clear_clicked:
        history.clear()
        st.session_state.pop(LAST, None)
        st.rerun()

    def conversations(text: str) -> dict[str, list[dict]]:
        turn = {"role": "user", "content": text}
        return {n: [*(history.get(n, []) if chat_mode else []), turn] for n in columns}

    if go_clicked:
        try:
            if not prompt.strip():
                raise LabError("The prompt is empty.", "Type a question or an instruction first.")
            if source is None:
                raise LabError("Pick a base model that can be loaded first.")
        except LabError as e:  # shown by the view below, like a failed generation, while its inputs stand
            st.session_state[LAST] = Comparison(error=str(e), inputs=inputs)
            go_clicked = False
    if go_clicked:
        with friendly_errors("Generation"):
            shareable()
            column_notes, asked, chat = dict(notes), inputs, chat_mode  # read here, on the script thread

            def work(who, convs, infos, s, report, cancel):
                turn = next(iter(convs.values()))[-1]["content"]
                report("Waiting for the model…", partial=Comparison(turn=turn))
                result = shared.compare(who, spec, precision, infos, convs, s, report=report, cancel=cancel,
                                        on_update=lambda snap: report("Generating…",
                                                                      partial=Comparison.streaming(snap, turn)))
                return Comparison.finished(result, convs, chat, column_notes, asked)

            start_task(GEN_TASK, work, owner, conversations(prompt), adapters, settings.validate())
            st.session_state[GEN_INPUTS] = inputs
            st.session_state.pop(LAST, None)
            st.rerun()

    def show_columns(data: Comparison, running: bool) -> None:
        names = list(data.columns) or columns
        for col, name in zip(st.columns(len(names)), names, strict=True):
            c = data.columns.get(name)
            with col.container(border=True, key=f"column-{name}"):
                st.markdown(f"**{name}**" + ("" if name != BASE_COLUMN else " · no adapter"))
                note = data.column_notes.get(name) if data.column_notes else notes.get(name)
                if note:
                    st.caption(f":material/info: {note}")
                if chat_mode or data.chat:
                    for m in history.get(name, []):
                        st.chat_message(m["role"]).markdown(m["content"])
                    if running:
                        st.chat_message("user").markdown(data.turn)
                if not data.in_history:
                    box = st.chat_message("assistant") if chat_mode else st.container()
                    if c is not None and c.text.strip():
                        box.markdown(c.text + (" ▌" if running and not c.done else ""))
                    elif c is not None and c.tokens:
                        box.markdown(f"_(only whitespace so far: {c.tokens} tokens)_")
                    else:
                        box.markdown("_waiting…_" if running else "_(no text: the model ended its turn at once)_")
                st.caption(data.figures(name), help="New tokens this column generated (its end-of-turn included); "
                           "wall time from the start of the batched generate until this column finished; "
                           "tokens ÷ seconds.")
                if c is not None and not c.batched:
                    st.caption("DoRA: generated on its own, after the batch.")
                if show_raw and data.prompts.get(name):
                    st.code(data.prompts[name], language=None, wrap_lines=True)

    def show_last() -> None:
        last: Comparison | None = st.session_state.get(LAST)
        if show_raw and source is not None and not (last and last.columns):
            with friendly_errors("Showing the prompt"):
                tok = cached_tokenizer(source.pretrained_id)
                st.caption("The text the base column will see:")
                st.code(build_chat_prompt(tok, conversations(prompt or " ")[BASE_COLUMN], use_template),
                        language=None, wrap_lines=True)
        if last is None or (last.error and last.inputs != inputs):  # its cause was fixed since: no message
            return
        if last.error:
            st.error(last.error, icon=":material/error:")
        elif last.cancelled:
            st.info(last.cancelled, icon=":material/cancel:")
        else:
            for note in last.notes:
                st.info(note, icon=":material/info:")
            show_columns(last, running=False)

    def show_generating(task) -> None:
        if task.queued:
            queued_notice(task)
            return
        st.button("Stop", icon=":material/stop:", on_click=task.cancel, help="Stop generating; keep what is there.")
        st.caption(task.last.message if task.last else "Starting…")
        show_columns(task.partial or Comparison(), running=True)

    def keep_generation(task) -> None:
        """Keep the result and extend the chat histories."""
        asked = st.session_state.get(GEN_INPUTS, inputs)
        if task.status == "failed":
            st.session_state[LAST] = Comparison(error=task.error, inputs=asked)
        elif task.status == "cancelled" and task.result is None:  # left the queue before it ran
            st.session_state[LAST] = Comparison(cancelled=task.error, inputs=asked)
        else:
            data: Comparison = task.result
            st.session_state[LAST] = data.answers_in_history(history) if data.chat else data

    if not (gen_task is not None and gen_task.running):
        room_notice()
        show_last()
    poll_task(GEN_TASK, show_generating, keep_generation, every=STREAM_POLL_S)

# --------------------------------------------------------------------------- evaluation
with tab_eval:
    st.markdown(
        "Run the base and every adapter over a dataset's **test split**, greedy. Labelled sets (every answer a "
        "short label, like *banking-intents*) are scored by **exact match**; every set also gets the reference "
        "answer's loss and perplexity under each model:"
    )
    st.latex(r"\text{accuracy} = \frac{\#\{\text{answer} = \text{label}\}}{N} \qquad "
             r"\text{PPL} = \exp\Big(-\frac{1}{T}\sum_{t=1}^{T} \log p(y_t \mid \text{prompt}, y_{<t})\Big)")
    bundled = list_datasets()
    e1, e2, e3, e4 = st.columns([2, 2, 1, 1])
    ds_choice = e1.selectbox("Dataset", [*bundled, UPLOAD], disabled=busy,
                             index=bundled.index("banking-intents") if "banking-intents" in bundled else 0,
                             help="A bundled dataset's test split, or your own JSONL/CSV file (Alpaca, messages or "
                                  "prompt/completion rows).")
    upload = e2.file_uploader("Test file", type=["jsonl", "json", "csv"], max_upload_size=upload_limit_mb(),
                              disabled=busy or ds_choice != UPLOAD, help="Every row of the file is a test example.")
    limit = e3.number_input("Examples", 1, limits.max_eval_examples, min(EvalSettings.limit or 1,
                            limits.max_eval_examples), help=f"{EH['limit']} {RequestLimits.help('max_eval_examples')}",
                            disabled=busy)
    metric = e4.selectbox("Metric", list(METRICS), help=EH["metric"], disabled=busy)
    run_eval = st.button("Evaluate", type="primary", icon=":material/fact_check:", disabled=busy,
                         help="Score the base and every adapter on the test examples.")

    if run_eval:
        with friendly_errors("Evaluation"):
            if source is None:
                raise LabError("Pick a base model that can be loaded first.")
            if ds_choice == UPLOAD:
                if upload is None:
                    raise LabError("No file uploaded.", "Upload a JSONL or CSV test file, or pick a bundled dataset.")
                dataset, label = str(save_upload(upload.name, upload.getvalue())), upload.name  # used whole
            else:
                dataset, label = ds_choice, ds_choice
            examples = load_examples(dataset, int(limit) or None)
            shareable()

            def eval_work(who, exs, infos, name, s, report, cancel):
                progress = EvalProgress(report, len(exs))  # "Example k of N" on every line, queue turns too
                return shared.evaluate(who, spec, precision, infos, exs, name, s, report=progress.message,
                                       cancel=cancel, on_progress=progress.scored)

            start_task(EVAL_TASK, eval_work, owner, examples, adapters, label,
                       EvalSettings(limit=int(limit) or None, metric=metric))
            st.session_state.pop(EVAL_RESULT, None)
            st.session_state[EVAL_PRECISION] = {a.name: precision_note(a, precision) for a in adapters}
            st.session_state[EVAL_INPUTS] = inputs
            st.rerun()

    def keep_evaluation(task) -> None:
        # An evaluation cancelled while it waited has no result and needs no message.
        st.session_state[EVAL_RESULT] = task.error if task.status == "failed" else task.result

    if not (eval_task is not None and eval_task.running):
        result = st.session_state.get(EVAL_RESULT)
        if isinstance(result, str) and st.session_state.get(EVAL_INPUTS) == inputs:  # its cause still stands
            st.error(result, icon=":material/error:")
        elif result is not None and not isinstance(result, str) and result.rows:
            show_evaluation(result, st.session_state.get(EVAL_PRECISION) or {})
    poll_task(EVAL_TASK, show_evaluating, keep_evaluation)
