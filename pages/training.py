"""Training: configure a LoRA/QLoRA run, start it as its own process (`python -m lab train`),
watch its event log live, stop it, and compare past runs.

The page never trains in-process: a run survives a closed tab or a restarted server, and its
status is read from its folder (events.jsonl + whether its process is alive).
"""

from __future__ import annotations

import shlex
import time
from dataclasses import replace
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from lab import policy
from lab.data import datasets as ds
from lab.data.prompts import has_chat_template
from lab.environment import device_type
from lab.errors import LabError
from lab.models.sources import resolve_source
from lab.sharing.limits import RequestLimits
from lab.training import owners
from lab.training import queue as Q
from lab.training import runs as R
from lab.training.config import (
    SCHEDULERS,
    TrainConfig,
    default_config,
    page_precision,
    repetition_warning,
    to_cli_args,
)
from lab.training.distributed import launch_command
from lab.units import fmt_bytes
from lab.vocab import LAUNCH_MODES, PRECISIONS, TARGET_PRESETS, optimizers_for
from pages._ui import (
    friendly_errors,
    get_task,
    is_admin,
    model_field,
    owner_token,
    poll,
    poll_task,
    report_activity,
    shared_models,
    start_task,
)

H = TrainConfig.help
DEVICE = device_type()
LIMITS = shared_models().limits  # this server's per-request limits (QLORA_LAB_MAX_STEPS, ...) as widget maxima
DEFAULTS = default_config(DEVICE)
UPLOAD = "Upload a file…"
HUB = "Hub dataset id…"
STATUS_ICONS = {"queued": ":material/schedule:", "starting": ":material/hourglass_top:",
                "running": ":material/play_circle:", "stopping": ":material/pending:",
                "finished": ":material/check_circle:", "stopped": ":material/stop_circle:",
                "failed": ":material/error:"}
STATUS_TEXT = {"queued": "🕒", "starting": "⏳", "running": "▶", "stopping": "…", "finished": "✔", "stopped": "■",
               "failed": "✘"}

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
    from lab.models.loading import load_tokenizer

    return load_tokenizer(resolve_source(spec))


@st.cache_data(show_spinner=False)
def module_names(spec: str) -> list[str]:
    from lab.models.reader import read_architecture

    return read_architecture(spec).decoder_linear_names


# --------------------------------------------------------------------------- live run panel
def loss_figure(statuses: list[R.RunStatus], eval_too: bool = True) -> go.Figure:
    fig = go.Figure()
    for s in statuses:
        logs, evals = s.logs, s.evals
        label = s.name if len(statuses) > 1 else "train"
        fig.add_scatter(
            x=[e["step"] for e in logs],
            y=[e["loss"] for e in logs],
            mode="lines+markers",
            name=f"{label} loss" if len(statuses) > 1 else "train loss",
        )
        if eval_too and evals:
            fig.add_scatter(x=[e["step"] for e in evals], y=[e["eval_loss"] for e in evals], mode="lines+markers",
                            name=f"{label} eval" if len(statuses) > 1 else "eval loss", line={"dash": "dash"})
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 30, "b": 10}, xaxis_title="step", yaxis_title="loss",
                      legend={"orientation": "h", "y": -0.25})
    return fig


def whose(run_dir: Path) -> str:
    return "your run" if owners.owns(run_dir, owner_token()) else "another session's run"


def show_run(s: R.RunStatus) -> None:
    icon = STATUS_ICONS.get(s.status, "")
    st.markdown(f"**{icon} {s.status.upper()}** — `{s.name}` ({whose(s.run_dir)})"
                + (f" (pid {s.pid})" if s.pid and s.active else ""))
    last = s.last_log
    doing = f" — {s.phase}…" if s.active and s.phase and not (last and s.phase.startswith("Training")) else ""
    if s.max_steps:
        frac = min(s.step / s.max_steps, 1.0)
        eta = (
            f", ETA {last['eta_seconds']:.0f} s" if (last and s.active and last.get("eta_seconds") is not None) else ""
        )
        st.progress(frac, text=f"step {s.step} / {s.max_steps}{eta}{doing}")
    elif s.active:
        st.progress(0.0, text=(s.phase + "…") if s.phase else "Starting the training process…")
    if last:
        c = st.columns(5)
        c[0].metric(
            "Train loss",
            f"{last['loss']:.4f}",
            help="Cross-entropy on the answer tokens of the last logged batch (the prompt is masked out).",
        )
        ev = s.evals
        c[1].metric(
            "Eval loss",
            f"{ev[-1]['eval_loss']:.4f}" if ev else "–",
            help="Loss on (up to max eval rows of) the test split, every eval steps.",
        )
        c[2].metric(
            "Tokens/s",
            f"{last['tokens_per_second']:.0f}",
            help="Non-padding tokens processed per second since training began (TRL's num_tokens / elapsed).",
        )
        c[3].metric(
            "Learning rate",
            f"{last['learning_rate']:.2e}" if last.get("learning_rate") is not None else "–",
            help="Current learning rate from the scheduler.",
        )
        c[4].metric(
            "Peak memory",
            fmt_bytes(last["peak_memory_bytes"]),
            help=(
                "CUDA: torch.cuda.max_memory_allocated. CPU: the process's peak resident set size (includes the "
                "loaded libraries)."
            ),
        )
        st.plotly_chart(live_figure(s), key=f"live-{s.name}")
        if last["loss"] < 0.01:
            st.caption(":material/warning: Training loss near 0: the run has memorised its rows. That says nothing "
                       "about other inputs: the eval loss on held-out rows (or the Playground) does.")
    if s.status == "failed":
        st.error(f"Failed: {s.error}" + (f" {s.hint}" if s.hint else ""), icon=":material/error:")
    elif s.status == "stopped":
        st.info("Stopped on request after finishing its step; the adapter was saved.", icon=":material/stop_circle:")
    elif s.status == "finished":
        st.success(f"Finished: adapter saved in `{R.shown_path(s.run_dir)}`.", icon=":material/check_circle:")
    if s.active and owners.can_control(s.run_dir, owner_token(), is_admin()):
        if st.button(
            "Stop",
            icon=":material/stop:",
            key=f"stop-{s.name}",
            disabled=s.status == "stopping",
            help=(
                "Ask the training process to finish its current step, save the adapter and exit (writes a STOP "
                "file the run watches)."
            ),
        ):
            with friendly_errors("Stopping"):
                Q.stop_run(s.run_dir, owner_token(), is_admin())
                st.toast("Stop requested: the run finishes its step, saves and exits.")


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "at a time not known yet (no finished run to time steps by)"
    return f"in about {seconds / 60:.0f} min" if seconds >= 90 else f"in about {seconds:.0f} s"


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def show_queue(line: list[Q.QueuedRun], mine: str | None) -> None:
    """The queue behind the running run: where this session's run stands, and everyone's places."""
    for q in line:
        if str(q.run_dir) == mine:
            st.info(f"Your run `{q.name}` is queued: {_ordinal(q.position)} in line, starts {_eta(q.starts_in)}. "
                    "One training at a time per device; it starts by itself when the runs ahead of it end.",
                    icon=":material/schedule:")
            if st.button("Cancel my queued run", icon=":material/playlist_remove:", key=f"cancel-{q.name}",
                         help="Take it out of the queue (nothing has run yet, so its folder is removed)."):
                with friendly_errors("Cancelling"):
                    Q.stop_run(q.run_dir, owner_token(), is_admin())
                    st.session_state.pop("train_run_dir", None)
                    st.rerun(scope="app")
    if line:
        st.caption("Queue: " + " · ".join(f"{q.position}. `{q.name}`" + (" (yours)" if str(q.run_dir) == mine else "")
                                           + f", starts {_eta(q.starts_in)}" for q in line))


def current_run(active: R.RunStatus | None) -> R.RunStatus | None:
    """The run to show: the running one, else the last run this session started, else ?run=<name>."""
    if active is not None:
        return active
    run_dir = st.session_state.get("train_run_dir")
    if run_dir:
        status = R.run_status(Path(run_dir))
        return None if status.queued else status
    name = st.query_params.get("run")
    if name:
        try:
            folder = policy.run_folder(name)  # only runs of runs/, whatever the URL says
        except LabError:
            return None
        return R.run_status(folder) if folder.is_dir() else None
    latest = [h for h in R.list_runs() if not h.queued]  # a fresh tab: the newest run of the history
    return latest[0] if latest else None


def live_figure(s: R.RunStatus) -> go.Figure:
    """The live loss chart, rebuilt only when the run logged something new (same figure, same chart element)."""
    key = (s.name, len(s.events))
    cached = st.session_state.get("train_live_figure")
    if cached is None or cached[0] != key:
        cached = st.session_state["train_live_figure"] = (key, loss_figure([s]))
    return cached[1]


def live_panel() -> bool:
    """The running run (anyone's), and the queue with this session's place in it. True when a run started
    or ended or the queue moved (the page then refreshes the history and the Train button), or the run's pace
    changed (and with it how often this panel polls, see live_interval)."""
    active, line = Q.queue_state()
    mine = st.session_state.get("train_run_dir")
    s = current_run(active)
    if s is None and not line:
        st.caption("No run yet: configure one below and press Train.")
    elif s is not None:
        show_run(s)
    show_queue(line, mine)
    mine_status = R.run_status(Path(mine)) if mine else None
    report_activity(doing=f"{'training' if mine_status.active else mine_status.status} {mine_status.name}"
                    if mine_status is not None else None)
    state = (s.name if s else None, s.status if s else None, tuple(q.name for q in line))
    was = st.session_state.get("train_live_state", state)
    st.session_state["train_live_state"] = state
    return was != state or R.interval_changed(st.session_state.get("train_poll_interval"), live_interval(s))


def live_interval(s: R.RunStatus | None) -> float | None:
    """At an active run's pace (runs.poll_interval): every poll costs the browser a redraw that a training on the
    same cores pays for. Otherwise rarely, so a run started elsewhere (another tab, the CLI) still shows up."""
    return R.poll_interval(s if s is not None and s.active else None)


st.subheader("Current run")
st.session_state["train_poll_interval"] = live_interval(R.active_run())
poll(live_panel, every=st.session_state["train_poll_interval"])  # always: a run started elsewhere shows up too


# --------------------------------------------------------------------------- configuration
st.subheader("Configure a run")
left, right = st.columns([3, 2])
with left:
    model = model_field("Base model", DEFAULTS.model, key="t_model", help=H("model"), bind="query-params")
    names = ds.list_datasets()
    hub_datasets = not policy.public_mode() or bool(policy.limits().hub_allow)  # public: allow-listed Hub datasets only
    choice = st.selectbox("Dataset", [*names, UPLOAD, *([HUB] if hub_datasets else [])],
                          index=names.index(DEFAULTS.dataset),
                          help=H("dataset"), key="t_dataset", bind="query-params")
    dataset = choice
    if choice == UPLOAD:
        up = st.file_uploader(
            "JSONL or CSV (Alpaca, chat messages, or prompt/completion rows)",
            type=["jsonl", "json", "csv"],
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
    precision = st.selectbox(
        "Precision of the base",
        list(PRECISIONS),
        index=list(PRECISIONS).index(page_precision(DEVICE)),
        format_func=lambda p: PRECISIONS[p].label,
        help=H("precision"),
        key="t_precision",
        bind="query-params",
    )
    st.caption(PRECISIONS[precision].help)
    if DEVICE == "cpu" and PRECISIONS[precision].quantized:
        st.caption(":material/speed: On this CPU a 4-bit base trains about 3× slower per step than FP32: bitsandbytes "
                   "dequantizes each weight at every matmul. It is what QLoRA means (and what a GPU runs); pick FP32 "
                   "for the quickest demo.")
    c1, c2, c3 = st.columns(3)
    r = c1.number_input("r", 1, 1024, DEFAULTS.r, help=H("r"), key="t_r", bind="query-params")
    alpha = c2.number_input(
        "alpha", 0.0, 4096.0, DEFAULTS.alpha, step=1.0, help=H("alpha"), key="t_alpha", bind="query-params"
    )
    dropout = c3.number_input(
        "dropout", 0.0, 0.9, DEFAULTS.dropout, step=0.05, help=H("dropout"), key="t_dropout", bind="query-params"
    )
    preset = st.selectbox(
        "Target modules",
        [*TARGET_PRESETS, "custom"],
        format_func=lambda k: f"{k}: {TARGET_PRESETS[k].help}" if k in TARGET_PRESETS else "custom (pick modules)",
        help=H("targets"),
        key="t_targets",
        bind="query-params",
    )
    targets = preset
    if preset == "custom":
        available = []
        with friendly_errors("Reading the architecture"):
            available = module_names(model)
        picked = st.multiselect(
            "Modules",
            available,
            default=available[:2],
            help="The decoder's Linear layers, read from the model's config (no weights loaded).",
            key="t_modules",
            bind="query-params",
        )
        targets = ",".join(picked)
    c1, c2, c3 = st.columns(3)
    use_rslora = c1.checkbox("rsLoRA", DEFAULTS.use_rslora, help=H("use_rslora"), key="t_rslora", bind="query-params")
    use_dora = c2.checkbox("DoRA", DEFAULTS.use_dora, help=H("use_dora"), key="t_dora", bind="query-params")
    loraplus = c3.number_input(
        "LoRA+ ratio",
        0.0,
        64.0,
        DEFAULTS.loraplus_ratio,
        step=1.0,
        help=H("loraplus_ratio"),
        key="t_loraplus",
        bind="query-params",
    )

with st.expander("Optimisation", expanded=True):
    c = st.columns(4)
    lr = c[0].number_input(
        "Learning rate",
        0.0,
        1.0,
        DEFAULTS.learning_rate,
        format="%.1e",
        step=1e-4,
        help=H("learning_rate"),
        key="t_lr",
        bind="query-params",
    )
    max_steps = c[1].number_input("Max steps", -1, LIMITS.max_steps, min(DEFAULTS.max_steps, LIMITS.max_steps),
                                  help=f"{H('max_steps')} {RequestLimits.help('max_steps')}", key="t_steps",
                                  bind="query-params")
    epochs = c[2].number_input(
        "Epochs", 0.0, 100.0, DEFAULTS.epochs, step=0.5, help=H("epochs"), key="t_epochs", bind="query-params"
    )
    seed = c[3].number_input("Seed", 0, 2**31 - 1, DEFAULTS.seed, help=H("seed"), key="t_seed", bind="query-params")
    c = st.columns(4)
    batch = c[0].number_input("Batch size", 1, LIMITS.max_batch_size, min(DEFAULTS.batch_size, LIMITS.max_batch_size),
                              help=f"{H('batch_size')} {RequestLimits.help('max_batch_size')}", key="t_batch",
                              bind="query-params")
    accum = c[1].number_input(
        "Grad accumulation", 1, 1024, DEFAULTS.grad_accum, help=H("grad_accum"), key="t_accum", bind="query-params"
    )
    max_length = c[2].number_input(
        "Max length (tokens)",
        8,
        LIMITS.max_seq_len,
        min(DEFAULTS.max_length, LIMITS.max_seq_len),
        help=f"{H('max_length')} {RequestLimits.help('max_seq_len')}",
        key="t_maxlen",
        bind="query-params",
    )
    gc = c[3].checkbox(
        "Gradient checkpointing",
        DEFAULTS.gradient_checkpointing,
        help=H("gradient_checkpointing"),
        key="t_gc",
        bind="query-params",
    )
    c = st.columns(4)
    optimizers = optimizers_for(DEVICE)
    optimizer = c[0].selectbox(
        "Optimizer",
        optimizers,
        index=optimizers.index(DEFAULTS.optimizer),
        help=H("optimizer"),
        key="t_optim",
        bind="query-params",
    )
    scheduler = c[1].selectbox(
        "Schedule",
        SCHEDULERS,
        index=SCHEDULERS.index(DEFAULTS.scheduler),
        help=H("scheduler"),
        key="t_sched",
        bind="query-params",
    )
    warmup = c[2].number_input(
        "Warmup ratio",
        0.0,
        0.5,
        DEFAULTS.warmup_ratio,
        step=0.05,
        help=H("warmup_ratio"),
        key="t_warmup",
        bind="query-params",
    )
    wd = c[3].number_input(
        "Weight decay",
        0.0,
        1.0,
        DEFAULTS.weight_decay,
        step=0.01,
        help=H("weight_decay"),
        key="t_wd",
        bind="query-params",
    )
    c = st.columns(4)
    eval_steps = c[0].number_input(
        "Eval every (steps)", 0, 100_000, DEFAULTS.eval_steps, help=H("eval_steps"), key="t_eval", bind="query-params"
    )
    save_steps = c[1].number_input(
        "Checkpoint every (steps)",
        1,
        100_000,
        DEFAULTS.save_steps,
        help=H("save_steps"),
        key="t_save",
        bind="query-params",
    )
    logging_steps = c[2].number_input(
        "Log every (steps)",
        1,
        10_000,
        DEFAULTS.logging_steps,
        help=H("logging_steps"),
        key="t_log",
        bind="query-params",
    )
    merge = c[3].checkbox(
        "Merge & export after training", DEFAULTS.merge, help=H("merge"), key="t_merge", bind="query-params"
    )

cfg = replace(
    DEFAULTS,
    model=model.strip(),
    dataset=dataset,
    skip_bad_rows=skip_bad,
    precision=precision,
    r=int(r),
    alpha=float(alpha),
    dropout=float(dropout),
    targets=targets,
    use_rslora=use_rslora,
    use_dora=use_dora,
    loraplus_ratio=float(loraplus),
    learning_rate=float(lr),
    max_steps=int(max_steps),
    epochs=float(epochs),
    seed=int(seed),
    batch_size=int(batch),
    grad_accum=int(accum),
    max_length=int(max_length),
    gradient_checkpointing=gc,
    optimizer=optimizer,
    scheduler=scheduler,
    warmup_ratio=float(warmup),
    weight_decay=float(wd),
    eval_steps=int(eval_steps),
    save_steps=int(save_steps),
    logging_steps=int(logging_steps),
    merge=merge,
)

@st.cache_data(show_spinner=False, max_entries=32)
def max_length_check(model: str, dataset: str, skip_bad: bool, max_length: int) -> str | None:
    """lab.data.datasets.check_max_length for this form (a LabError when no row would keep an answer token)."""
    rows = ds.check_dataset(dataset, "train", "skip" if skip_bad else "refuse").rows
    return ds.check_max_length(tokenizer_for(model), rows, max_length)


if check is not None:
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


def memory_section(cfg: TrainConfig) -> None:
    """One step of this run simulated on fake tensors (the calculator's simulation, this device's code paths),
    off the script thread; the formula's total beside it."""
    from lab.estimate.explain import LABELS

    signature = repr(cfg.memory_settings(DEVICE)) + cfg.model
    done = st.session_state.get("t_memory")
    if done is None or done[0] != signature:
        task = get_task(MEMORY_TASK)
        if task is None or task.name != signature:
            if st.button("Simulate one step of this run", icon=":material/memory:", key="t_simulate",
                         help="Runs forward, backward and the optimizer step of this exact run on fake tensors "
                              "(shapes, no data): a second or a few."):
                start_task(MEMORY_TASK, lambda report, cancel: cfg.simulate_memory(DEVICE)).name = signature
                st.rerun()
            return

        def keep(task) -> None:
            st.session_state["t_memory"] = (task.name, task.error if task.status == "failed" else task.result)

        poll_task(MEMORY_TASK, lambda task: st.caption(f"Simulating… {task.elapsed:.0f} s"), keep, every=0.5)
        return
    sim = done[1]
    if isinstance(sim, str):
        st.error(sim, icon=":material/error:")
        return
    formula = cfg.memory_estimate(DEVICE)
    c1, c2 = st.columns(2)
    c1.metric("Simulated peak of one step", fmt_bytes(sim.peak_bytes),
              help="Live bytes at the step's peak (forward, backward, optimizer), counted while the real step ran "
                   "on fake tensors: what torch.cuda.max_memory_allocated would report"
                   + ("." if DEVICE == "cuda" else "; on this CPU, the tensors' bytes (the process's RSS adds the "
                      "loaded libraries on top)."))
    c2.metric("The formula's total", fmt_bytes(formula.total_bytes),
              help="The calculator's hand-checkable formula: every term's maximum added, as if all peaked at once.")
    st.dataframe([{"what": LABELS.get(k, k), "at the peak": fmt_bytes(v)} for k, v in sim.by_category.items() if v],
                 hide_index=True)
    if DEVICE == "cuda":
        st.caption("On a GPU add about 1 GiB outside PyTorch's allocator (CUDA context, kernels) and a few percent of "
                   "fragmentation: the calculator's GPU verdict does.")
    st.caption(f"Peak during {sim.peak_at}. The calculator page shows the timeline and one layer module by module.")


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
    c1, c2, c3 = st.columns(3)
    n_proc = c1.number_input(
        "Processes",
        1,
        64,
        2,
        help="One per GPU. Each trains on its share of every batch: "
        "the effective batch is batch size x grad accumulation x processes.",
        key="t_nproc",
        bind="query-params",
    )
    mode = c2.selectbox(
        "Mode",
        list(LAUNCH_MODES),
        format_func=lambda m: LAUNCH_MODES[m].label,
        help=" · ".join(f"**{t.label}**: {t.help}" for t in LAUNCH_MODES.values()),
        key="t_mode",
        bind="query-params",
    )
    target = c3.selectbox("On", ["cuda", "cpu"], format_func={"cuda": "GPUs", "cpu": "CPU processes"}.get,
                          help="GPUs: one process per GPU. CPU processes: DDP over gloo on this kind of machine.",
                          key="t_target", bind="query-params")
    with friendly_errors("The launch command"):
        launch = launch_command(shown, int(n_proc), mode, target)
        st.code(str(launch), language="bash")
        for note in launch.notes:
            st.caption(note)
own_name = st.text_input("Run name (optional)", "", key="t_name", bind="query-params",
                         placeholder="{base}-{dataset}_SFT_LoRa{r}_{PRECISION}-<time>",
                         help="The run folder's name inside runs/: letters, digits, '.', '_' and '-'. "
                              "Empty: the lab names it.")
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
    disabled=not dataset or busy_mine,
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
PUSH_TASK = "training_push"
PUSH_RESULT = "training_push_result"


def push_section(finished: list[R.RunStatus]) -> None:
    """Push a run's adapter (or merged model) to the Hub, off the script thread."""
    from lab.publish.push import push_run

    with st.expander("Push to the Hub"):
        c1, c2 = st.columns([2, 3])
        name = c1.selectbox(
            "Run", [s.name for s in finished], key="t_push_run", help="A finished or stopped run of the comparison."
        )
        repo = c2.text_input("Repo (owner/name)", placeholder="alice/smollm2-style-lora", key="t_push_repo",
                             help="Created if needed. The token comes from HF_TOKEN or `hf auth login`"
                                  + (", or the field below." if not policy.public_mode() else "."))
        token = None
        if policy.public_mode():  # never push with the server's own token on a visitor's behalf
            token = st.text_input("Your Hugging Face token", type="password", key="t_push_token",
                                  help="A token with write access (huggingface.co/settings/tokens). It is used for "
                                       "this upload only and not stored.")
        c1, c2, c3 = st.columns(3)
        private = c1.checkbox("Private", key="t_push_private", help="Create the repo as private.")
        merged = c2.checkbox("Merged model", key="t_push_merged",
                             help="Push <run>/merged (base + adapter) instead of the adapter.")
        if c3.button("Push", icon=":material/cloud_upload:", disabled=not repo.strip(), key="t_push"):
            start_task(PUSH_TASK, lambda run, report, cancel: push_run(run, repo, private, merged, token),
                       policy.run_folder(name))

        def keep(task) -> None:
            st.session_state[PUSH_RESULT] = (task.status, task.error, task.result)

        poll_task(PUSH_TASK, lambda task: st.caption(f"Uploading… {task.elapsed:.0f} s"), keep)
        status, error, result = st.session_state.get(PUSH_RESULT, (None, None, None))
        if status == "failed":
            st.error(error, icon=":material/error:")
        elif status == "done":
            st.success(f"Pushed {len(result['files'])} files to {result['url']}", icon=":material/check_circle:")


st.subheader("Run history")
history = R.list_runs()
if not history:
    st.caption("No runs yet.")
else:
    infos = {s.name: R.read_run_info(s.run_dir) for s in history}

    def shown(value, fmt: str = "{}") -> str:
        """A table cell: '—' for a value the run has not got (no eval, still running), never 'None'."""
        return "—" if value is None or value == "" else fmt.format(value)

    def row(s: R.RunStatus) -> dict:
        info = infos[s.name]
        c, summ = info.get("config") or {}, info.get("summary") or {}
        return {"run": s.name, "status": f"{STATUS_TEXT.get(s.status, '')} {s.status}",
                "owner": "you" if owners.owns(s.run_dir, owner_token()) else "", "steps": s.step,
                "final loss": shown(summ.get("final_loss") or (s.last_log or {}).get("loss"), "{:.4f}"),
                "eval loss": shown(summ.get("final_eval_loss"), "{:.4f}"),
                "precision": shown(info.get("precision")), "r": shown(c.get("r")),
                "dataset": shown((info.get("dataset") or {}).get("name")),
                "tokens/s": shown(summ.get("tokens_per_second"), "{:.0f}"),
                "seconds": shown((info.get("durations") or {}).get("total_seconds"), "{:.0f}")}

    st.dataframe([row(s) for s in history], hide_index=True)
    picked = st.multiselect("Compare runs", [s.name for s in history], default=[s.name for s in history[:2]],
                            help="Overlay their loss curves and show their settings side by side.", key="t_compare")
    chosen = [s for s in history if s.name in picked]
    if chosen:
        st.plotly_chart(loss_figure(chosen), key="history-chart")
        keys = [k for k in TrainConfig.__dataclass_fields__ if k != "output"]
        table = {"setting": keys}
        for s in chosen:
            c = infos[s.name].get("config", {})
            table[s.name] = [shown(c.get(k)) for k in keys]
        st.dataframe(table, hide_index=True)
        finished = [s for s in chosen if owners.can_control(s.run_dir, owner_token(), is_admin())
                    and s.status in ("finished", "stopped") and (s.run_dir / "adapter_model.safetensors").exists()]
        if finished:
            target = st.selectbox(
                "Merge & export",
                [s.name for s in finished],
                help=(
                    "Reload the base at 16/32-bit, merge this run's adapter into it and save a standalone model "
                    "in <run>/merged."
                ),
            )
            if st.button("Merge and save", icon=":material/merge:", help=H("merge")):
                with friendly_errors("Merging"), st.spinner("Merging the adapter into the base model…"):
                    from lab.training.runner import merge_and_export

                    out = merge_and_export(policy.run_folder(target))
                    st.success(f"Merged model saved in `{R.shown_path(out)}`.")
            push_section(finished)
    deletable = [s for s in history if not s.active and owners.can_control(s.run_dir, owner_token(), is_admin())]
    if deletable:
        d1, d2 = st.columns([3, 1])
        doomed = d1.selectbox("Delete a run", [s.name for s in deletable], key="t_delete",
                              help="Remove the run's folder (adapter, checkpoints, logs). On a public server: only "
                                   "your own runs.")
        if d2.button("Delete", icon=":material/delete:",
                     help="Remove this run's folder for good (a queued run leaves the queue)."):
            with friendly_errors("Deleting"):
                Q.delete_run(policy.run_folder(doomed), owner_token(), is_admin())
                if Path(st.session_state.get("train_run_dir", "")).name == doomed:
                    del st.session_state["train_run_dir"]
                st.toast(f"Deleted {doomed}.")
                st.rerun()
