"""Training: configure a LoRA/QLoRA run, start it as its own process (`python -m lab train`),
watch its event log live, stop it, and compare past runs.

The page never trains in-process: a run survives a closed tab or a restarted server, and its
status is read from its folder (events.jsonl + whether its process is alive). The live panel, the plan (memory,
launch command) and the history are laid out in pages/_training_run.py, _training_plan.py, _training_history.py.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import replace
from pathlib import Path

import streamlit as st

import pages._starting  # noqa: F401  (a fresh server's first visit: paints before the imports below)
from lab import policy
from lab.data import datasets as ds
from lab.data.prompts import has_chat_template
from lab.environment import device_type
from lab.errors import LabError
from lab.models.loading import load_tokenizer
from lab.models.reader import read_architecture
from lab.models.sources import resolve_source
from lab.sharing.limits import RequestLimits
from lab.training import queue as Q
from lab.training import runs as R
from lab.training.config import TrainConfig, default_config, page_precision, repetition_warning, to_cli_args
from lab.vocab import PRECISIONS, TARGET_PRESETS, optimizers_for
from pages._fields import field_input
from pages._training_history import history_section
from pages._training_plan import launch_section, memory_section
from pages._training_run import current_run, live_interval, live_panel
from pages._ui import friendly_errors, model_field, owner_token, poll, shared_models, upload_limit_mb

H = TrainConfig.help
DEVICE = device_type()
LIMITS = shared_models().limits  # this server's per-request limits (QLORA_LAB_MAX_STEPS, ...) as widget maxima
DEFAULTS = default_config(DEVICE)
UPLOAD = "Upload a file…"
HUB = "Hub dataset id…"

st.title("Training")
st.caption(
    "LoRA / QLoRA fine-tuning with TRL's SFTTrainer and peft. Each run is its own `python -m lab train` process "
    "writing `runs/<name>/events.jsonl`; this page tails that log, so a refresh, a second tab or a server restart "
    "re-attaches to it. One run trains at a time per device; later runs wait in a queue on disk and start by "
    "themselves."
)


# --------------------------------------------------------------------------- cached helpers
@st.cache_resource(show_spinner=False)
def tokenizer_for(spec: str):
    return load_tokenizer(resolve_source(spec))


@st.cache_data(ttl=60, show_spinner=False)
def source_problem(spec: str) -> str | None:
    """What is wrong with a base model (None: it resolves): the same check Train would meet, done as it is typed."""
    try:
        resolve_source(spec)
    except LabError as e:
        return str(e)
    return None


@st.cache_data(show_spinner=False)
def module_names(spec: str) -> list[str]:
    return read_architecture(spec).decoder_linear_names


st.subheader("Current run")
# the interval of the run the panel will show (the lock holder, else this session's or the newest run): any other
# run here and the panel, finding its own run's interval "changed", would rerun the page forever
st.session_state["train_poll_interval"] = live_interval(current_run(R.active_run()))
poll(live_panel, every=st.session_state["train_poll_interval"])  # always: a run started elsewhere shows up too

# --------------------------------------------------------------------------- configuration
st.subheader("Configure a run")
left, right = st.columns([3, 2])
with left:
    model = model_field("Base model", DEFAULTS.model, key="t_model", help=H("model"), bind="query-params")
    model_problem = source_problem(model.strip())  # checked as typed, said here, and Train stays off until fixed
    if model_problem:
        st.error(model_problem, icon=":material/error:")
    names = ds.list_datasets()
    hub_datasets = not policy.public_mode() or bool(policy.limits().hub_allow)  # public: allow-listed Hub datasets only
    choice = st.selectbox("Dataset", [*names, UPLOAD, *([HUB] if hub_datasets else [])],
                          index=names.index(DEFAULTS.dataset),
                          help=H("dataset"), key="t_dataset", bind="query-params")
    dataset = choice
    if choice == UPLOAD:
        up = st.file_uploader(
            "JSONL or CSV (Alpaca, chat messages, or prompt/completion rows)",
            type=["jsonl", "json", "csv"], max_upload_size=upload_limit_mb(),
            help=(
                "Alpaca: instruction, input (optional), output. Chat: messages [{role, content}…]. Or prompt + "
                "completion."
            ),
        )
        dataset = ""
        if up is not None:
            with friendly_errors("Keeping the upload"):
                dataset = str(ds.save_upload(up.name, up.getvalue()))  # in runs/uploads/, capped in public mode
    elif choice == HUB:
        dataset = st.text_input(
            "Hub dataset id", "", placeholder="owner/name", help="Needs network access at training time."
        )
    skip_bad = st.checkbox(
        "Skip malformed rows", DEFAULTS.skip_bad_rows, help=H("skip_bad_rows"), key="t_skip", bind="query-params"
    )

    check = None
    if dataset:
        with friendly_errors("Reading the dataset"):
            check = ds.check_dataset(dataset, "train", "skip" if skip_bad else "refuse")
            test_rows = ds.local_test_rows(dataset)
            st.caption(f"Train split: {check.summary()}."
                       + (f" Test split: {test_rows} rows." if test_rows is not None else ""))
            if check.problems:
                st.warning(
                    f"{len(check.problems)} malformed row(s) will be skipped: {ds.describe_problems(check.problems)}",
                    icon=":material/warning:",
                )
    if choice in names:
        with st.expander("Dataset card"):
            st.markdown(ds.dataset_card(choice))

with right:
    v = {"model": model.strip(), "dataset": dataset, "skip_bad_rows": skip_bad}  # the run's settings, by field name

    def put(where, name: str, key: str, value=None, **kw) -> None:
        """A widget generated from the TrainConfig field (lab.recipe bounds, help), its value kept under the name."""
        value = getattr(DEFAULTS, name) if value is None else value
        v[name] = field_input(where, TrainConfig, name, key, value, bind="query-params", **kw)

    put(None, "precision", "t_precision", page_precision(DEVICE), format_func=lambda p: PRECISIONS[p].label)
    st.caption(PRECISIONS[v["precision"]].help)
    if DEVICE == "cpu" and PRECISIONS[v["precision"]].quantized:
        st.caption(":material/speed: On this CPU a 4-bit base trains about 3× slower per step than FP32: bitsandbytes "
                   "dequantizes each weight at every matmul. It is what QLoRA means (and what a GPU runs); pick FP32 "
                   "for the quickest demo.")
    c = st.columns(3)
    for col, (name, key) in zip(c, (("r", "t_r"), ("alpha", "t_alpha"), ("dropout", "t_dropout")), strict=True):
        put(col, name, key, label=name)
    preset = st.selectbox(
        "Target modules",
        [*TARGET_PRESETS, "custom"],
        format_func=lambda k: f"{k}: {TARGET_PRESETS[k].help}" if k in TARGET_PRESETS else "custom (pick modules)",
        help=H("targets"),
        key="t_targets",
        bind="query-params",
    )
    v["targets"] = preset
    if preset == "custom":
        available = []
        with friendly_errors("Reading the architecture"):
            available = module_names(model)
        picked = st.multiselect("Modules", available, default=available[:2], key="t_modules", bind="query-params",
                                help="The decoder's Linear layers, read from the model's config (no weights loaded).")
        v["targets"] = ",".join(picked)
    c = st.columns(3)
    put(c[0], "use_rslora", "t_rslora")
    put(c[1], "use_dora", "t_dora")
    put(c[2], "loraplus_ratio", "t_loraplus")

with st.expander("Optimisation", expanded=True):
    c = st.columns(4)
    put(c[0], "learning_rate", "t_lr")
    put(c[1], "max_steps", "t_steps", most=LIMITS.max_steps, extra_help=RequestLimits.help("max_steps"))
    put(c[2], "epochs", "t_epochs")
    put(c[3], "seed", "t_seed")
    c = st.columns(4)
    put(c[0], "batch_size", "t_batch", most=LIMITS.max_batch_size, extra_help=RequestLimits.help("max_batch_size"))
    put(c[1], "grad_accum", "t_accum")
    put(c[2], "max_length", "t_maxlen", most=LIMITS.max_seq_len, extra_help=RequestLimits.help("max_seq_len"))
    put(c[3], "gradient_checkpointing", "t_gc")
    c = st.columns(4)
    put(c[0], "optimizer", "t_optim", options=optimizers_for(DEVICE))
    put(c[1], "scheduler", "t_sched")
    put(c[2], "warmup_ratio", "t_warmup")
    put(c[3], "weight_decay", "t_wd")
    c = st.columns(4)
    put(c[0], "eval_steps", "t_eval")
    put(c[1], "save_steps", "t_save")
    put(c[2], "logging_steps", "t_log")
    put(c[3], "merge", "t_merge")

cfg = replace(DEFAULTS, **v)  # every widget's value by its field name: nothing copied by hand

@st.cache_data(show_spinner=False, max_entries=32)
def max_length_check(model: str, dataset: str, skip_bad: bool, max_length: int) -> str | None:
    """lab.data.datasets.check_max_length for this form (a LabError when no row would keep an answer token)."""
    rows = ds.check_dataset(dataset, "train", "skip" if skip_bad else "refuse").rows
    return ds.check_max_length(tokenizer_for(model), rows, max_length)


if check is not None and not model_problem:
    with friendly_errors("Checking the max length"):
        for warning in (max_length_check(cfg.model, cfg.dataset, cfg.skip_bad_rows, cfg.max_length),
                        repetition_warning(cfg, len(check.rows))):
            if warning:
                st.warning(warning, icon=":material/warning:")
    with st.expander("Preview: the exact training text and token lengths"):
        with friendly_errors("Formatting the preview"):
            tok = tokenizer_for(cfg.model)
            st.caption("Chat template of the tokenizer" if has_chat_template(tok)
                       else "Alpaca template (this tokenizer has no chat template)")
            for p in ds.preview(tok, check.rows, check.lines, n=2):
                st.markdown(f"Line {p.line}: **{p.prompt_tokens}** prompt + **{p.answer_tokens}** answer tokens "
                            "(the loss is computed on the answer only)")
                st.code(p.prompt + p.answer, language=None)
            stats = ds.length_stats(ds.token_lengths(tok, check.rows), cfg.max_length)
            st.caption(
                f"Token lengths over {stats['rows']} rows: min {stats['min']}, median {stats['median']}, "
                f"mean {stats['mean']}, max {stats['max']}; {stats['truncated']} longer than max length "
                f"{cfg.max_length} (truncated)."
            )

MEMORY_TASK = "training_memory"
with st.expander("Memory of one training step (simulated)", expanded=False):
    with friendly_errors("The memory simulation"):
        memory_section(cfg)

# --------------------------------------------------------------------------- start (now, or in the queue)
# What the page starts, as a command. On a public server an upload's place on the server is nobody's business.
shown = (
    replace(cfg, dataset=f"<your upload: {Path(dataset).name}>")
    if policy.public_mode() and choice == UPLOAD and dataset
    else cfg
)
st.code(shlex.join([".venv/bin/python", "-m", "lab", "train", *to_cli_args(shown)]), language="bash")
with st.expander("Launch command for several GPUs (or CPU processes)"):
    launch_section(shown)
own_name = st.text_input("Run name (optional)", "", key="t_name", bind="query-params",
                         placeholder="{base}-{dataset}_SFT_LoRa{r}_{PRECISION}-<time>",
                         help="The run folder's name inside runs/: letters, digits, '.', '_' and '-'. "
                              "Empty: the lab names it.")
name_problem = None
if own_name.strip():
    try:
        policy.check_run_name(own_name)
    except LabError as e:  # said as typed, next to the field, not after pressing Train
        name_problem = str(e)
        st.error(name_problem, icon=":material/error:")
active, waiting_line = Q.queue_state()
if active is not None:
    st.info(f"A training is running (`{active.name}`); a new run joins the queue behind it"
            + (f" and {len(waiting_line)} other(s)" if waiting_line else "") + ". One training at a time per device.",
            icon=":material/hourglass_top:")
mine = st.session_state.get("train_run_dir")
mine_status = R.run_status(Path(mine)) if mine else None
busy_mine = mine_status is not None and (mine_status.active or mine_status.queued)
if busy_mine:
    st.caption(f":material/info: Your run `{mine_status.name}` is {mine_status.status}: Train is off until it ends "
               "(stop or cancel it above to start another).")
start = st.button(
    "Train" if active is None else "Queue this run",
    type="primary",
    icon=":material/play_arrow:",
    key="t_train",
    disabled=not dataset or busy_mine or bool(model_problem or name_problem),
    help="Start `python -m lab train` with these settings as its own process (this page follows its "
    "event log); when a training is running, the run waits in the queue and starts by itself.",
)
if start:
    with friendly_errors("Starting the run"):
        if active is None and not waiting_line:  # it starts now: its predicted memory must fit what is free
            shared_models().admit_training(cfg)
        status = Q.submit(cfg, owner=owner_token(), name=own_name.strip() or None)
        st.session_state["train_run_dir"] = str(status.run_dir)
        st.query_params["run"] = status.name
        time.sleep(0.2)
        st.rerun()


# --------------------------------------------------------------------------- history
st.subheader("Run history")
history_section()
