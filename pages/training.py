"""Training: configure a LoRA/QLoRA run, start it as its own process (`python -m lab train`),
watch its event log live, stop it, and compare past runs.

The page never trains in-process: a run survives a closed tab or a restarted server, and its
status is read from its folder (events.jsonl + whether its process is alive).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from lab.data import datasets as ds
from lab.environment import device_type
from lab.generate.prompts import has_chat_template
from lab.models.sources import resolve_source
from lab.paths import runs_dir
from lab.training import runs as R
from lab.training.config import SCHEDULERS, TrainConfig, default_config, run_dir_for, to_cli_args
from lab.training.distributed import launch_command
from lab.training.events import request_stop
from lab.units import fmt_bytes
from lab.vocab import LAUNCH_MODES, PRECISIONS, TARGET_PRESETS, optimizers_for
from pages._ui import friendly_errors, poll, poll_task, start_task

H = TrainConfig.help
DEVICE = device_type()
DEFAULTS = default_config(DEVICE)
UPLOAD = "Upload a file…"
HUB = "Hub dataset id…"
STATUS_ICONS = {"starting": ":material/hourglass_top:", "running": ":material/play_circle:", "stopping": ":material/pending:",
                "finished": ":material/check_circle:", "stopped": ":material/stop_circle:", "failed": ":material/error:"}
STATUS_TEXT = {"starting": "⏳", "running": "▶", "stopping": "…", "finished": "✔", "stopped": "■", "failed": "✘"}

st.title("Training")
st.caption(
    "LoRA / QLoRA fine-tuning with TRL's SFTTrainer and peft. Each run is its own `python -m lab train` process "
    "writing `runs/<name>/events.jsonl`; this page tails that log, so a refresh, a second tab or a server restart "
    "re-attaches to it."
)


# --------------------------------------------------------------------------- cached helpers
@st.cache_resource(show_spinner=False)
def tokenizer_for(spec: str):
    from lab.models.loading import load_tokenizer

    return load_tokenizer(resolve_source(spec))


@st.cache_data(show_spinner=False)
def module_names(spec: str) -> list[str]:
    from lab.models.architecture import read_architecture

    return read_architecture(spec).decoder_linear_names


# --------------------------------------------------------------------------- live run panel
def loss_figure(statuses: list[R.RunStatus], eval_too: bool = True) -> go.Figure:
    fig = go.Figure()
    for s in statuses:
        logs, evals = s.logs, s.evals
        label = s.name if len(statuses) > 1 else "train"
        fig.add_scatter(x=[e["step"] for e in logs], y=[e["loss"] for e in logs], mode="lines+markers", name=f"{label} loss" if len(statuses) > 1 else "train loss")
        if eval_too and evals:
            fig.add_scatter(x=[e["step"] for e in evals], y=[e["eval_loss"] for e in evals], mode="lines+markers",
                            name=f"{label} eval" if len(statuses) > 1 else "eval loss", line={"dash": "dash"})
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 30, "b": 10}, xaxis_title="step", yaxis_title="loss",
                      legend={"orientation": "h", "y": -0.25})
    return fig


def show_run(s: R.RunStatus) -> None:
    icon = STATUS_ICONS.get(s.status, "")
    st.markdown(f"**{icon} {s.status.upper()}** — `{s.name}`" + (f" (pid {s.pid})" if s.pid and s.active else ""))
    last = s.last_log
    if s.max_steps:
        frac = min(s.step / s.max_steps, 1.0)
        eta = f", ETA {last['eta_seconds']:.0f} s" if (last and s.active and last.get("eta_seconds") is not None) else ""
        st.progress(frac, text=f"step {s.step} / {s.max_steps}{eta}")
    elif s.active:
        st.progress(0.0, text="loading the model and tokenizing the data…")
    if last:
        c = st.columns(5)
        c[0].metric("Train loss", f"{last['loss']:.4f}", help="Cross-entropy on the answer tokens of the last logged batch (the prompt is masked out).")
        ev = s.evals
        c[1].metric("Eval loss", f"{ev[-1]['eval_loss']:.4f}" if ev else "–", help="Loss on (up to max eval rows of) the test split, every eval steps.")
        c[2].metric("Tokens/s", f"{last['tokens_per_second']:.0f}", help="Non-padding tokens processed per second since training began (TRL's num_tokens / elapsed).")
        c[3].metric("Learning rate", f"{last['learning_rate']:.2e}" if last.get("learning_rate") is not None else "–", help="Current learning rate from the scheduler.")
        c[4].metric("Peak memory", fmt_bytes(last["peak_memory_bytes"]), help="CUDA: torch.cuda.max_memory_allocated. CPU: the process's peak resident set size (includes the loaded libraries).")
        st.plotly_chart(loss_figure([s]), key=f"live-{s.name}")
    if s.status == "failed":
        st.error(f"Failed: {s.error}" + (f" {s.hint}" if s.hint else ""), icon=":material/error:")
    elif s.status == "stopped":
        st.info("Stopped on request after finishing its step; the adapter was saved.", icon=":material/stop_circle:")
    elif s.status == "finished":
        st.success(f"Finished: adapter saved in `{s.run_dir}`.", icon=":material/check_circle:")
    if s.active:
        if st.button("Stop", icon=":material/stop:", key=f"stop-{s.name}", disabled=s.status == "stopping",
                     help="Ask the training process to finish its current step, save the adapter and exit (writes a STOP file the run watches)."):
            request_stop(s.run_dir)
            st.toast("Stop requested: the run finishes its step, saves and exits.")


def current_run() -> R.RunStatus | None:
    """The run this session follows: the one it started, else whatever holds the lock, else ?run=."""
    run_dir = st.session_state.get("train_run_dir")
    proc = st.session_state.get("train_proc")
    if proc is not None:
        proc.poll()  # reap the child when it exits (no zombie)
    if run_dir:
        return R.run_status(Path(run_dir), pid=proc.pid if proc is not None else None)
    active = R.active_run()
    if active is not None:
        st.session_state["train_run_dir"] = str(active.run_dir)
        return active
    name = st.query_params.get("run")
    if name and (runs_dir() / name).is_dir():
        return R.run_status(runs_dir() / name)
    return None


def live_panel() -> bool:
    """The run this session follows; True when it has just ended (the page then refreshes the history
    and the Train button)."""
    s = current_run()
    if s is None:
        st.caption("No run yet: configure one below and press Train.")
        return False
    show_run(s)
    was_active = st.session_state.get("train_was_active", False)
    st.session_state["train_was_active"] = s.active
    return was_active and not s.active


st.subheader("Current run")
poll(live_panel, every=1.5)  # always: a run started elsewhere (another tab, the CLI) shows up here too


# --------------------------------------------------------------------------- configuration
st.subheader("Configure a run")
left, right = st.columns([3, 2])
with left:
    model = st.text_input("Base model", DEFAULTS.model, help=H("model"), key="t_model")
    names = ds.list_datasets()
    choice = st.selectbox("Dataset", [*names, UPLOAD, HUB], index=names.index(DEFAULTS.dataset), help=H("dataset"), key="t_dataset")
    dataset = choice
    if choice == UPLOAD:
        up = st.file_uploader("JSONL or CSV (Alpaca, chat messages, or prompt/completion rows)", type=["jsonl", "json", "csv"],
                              help="Alpaca: instruction, input (optional), output. Chat: messages [{role, content}…]. Or prompt + completion.")
        dataset = str(ds.save_upload(up.name, up.getvalue())) if up is not None else ""
    elif choice == HUB:
        dataset = st.text_input("Hub dataset id", "", placeholder="owner/name", help="Needs network access at training time.")
    skip_bad = st.checkbox("Skip malformed rows", DEFAULTS.skip_bad_rows, help=H("skip_bad_rows"), key="t_skip")

    check = None
    if dataset:
        with friendly_errors("Reading the dataset"):
            check = ds.check_dataset(dataset, "train", "skip" if skip_bad else "refuse")
            test_rows = ds.local_test_rows(dataset)
            st.caption(f"Train split: {check.summary()}."
                       + (f" Test split: {test_rows} rows." if test_rows is not None else ""))
            if check.problems:
                st.warning(f"{len(check.problems)} malformed row(s) will be skipped: {ds.describe_problems(check.problems)}", icon=":material/warning:")
    if choice in names:
        with st.expander("Dataset card"):
            st.markdown(ds.dataset_card(choice))

with right:
    precision = st.selectbox("Precision of the base", list(PRECISIONS), index=list(PRECISIONS).index(DEFAULTS.precision),
                             format_func=lambda p: PRECISIONS[p].label, help=H("precision"), key="t_precision")
    st.caption(PRECISIONS[precision].help)
    c1, c2, c3 = st.columns(3)
    r = c1.number_input("r", 1, 1024, DEFAULTS.r, help=H("r"), key="t_r")
    alpha = c2.number_input("alpha", 0.0, 4096.0, DEFAULTS.alpha, step=1.0, help=H("alpha"), key="t_alpha")
    dropout = c3.number_input("dropout", 0.0, 0.9, DEFAULTS.dropout, step=0.05, help=H("dropout"), key="t_dropout")
    preset = st.selectbox("Target modules", [*TARGET_PRESETS, "custom"], format_func=lambda k: f"{k}: {TARGET_PRESETS[k].help}" if k in TARGET_PRESETS else "custom (pick modules)",
                          help=H("targets"), key="t_targets")
    targets = preset
    if preset == "custom":
        available = []
        with friendly_errors("Reading the architecture"):
            available = module_names(model)
        picked = st.multiselect("Modules", available, default=available[:2], help="The decoder's Linear layers, read from the model's config (no weights loaded).", key="t_modules")
        targets = ",".join(picked)
    c1, c2, c3 = st.columns(3)
    use_rslora = c1.checkbox("rsLoRA", DEFAULTS.use_rslora, help=H("use_rslora"), key="t_rslora")
    use_dora = c2.checkbox("DoRA", DEFAULTS.use_dora, help=H("use_dora"), key="t_dora")
    loraplus = c3.number_input("LoRA+ ratio", 0.0, 64.0, DEFAULTS.loraplus_ratio, step=1.0, help=H("loraplus_ratio"), key="t_loraplus")

with st.expander("Optimisation", expanded=True):
    c = st.columns(4)
    lr = c[0].number_input("Learning rate", 0.0, 1.0, DEFAULTS.learning_rate, format="%.1e", step=1e-4, help=H("learning_rate"), key="t_lr")
    max_steps = c[1].number_input("Max steps", -1, 100_000, DEFAULTS.max_steps, help=H("max_steps"), key="t_steps")
    epochs = c[2].number_input("Epochs", 0.0, 100.0, DEFAULTS.epochs, step=0.5, help=H("epochs"), key="t_epochs")
    seed = c[3].number_input("Seed", 0, 2**31 - 1, DEFAULTS.seed, help=H("seed"), key="t_seed")
    c = st.columns(4)
    batch = c[0].number_input("Batch size", 1, 1024, DEFAULTS.batch_size, help=H("batch_size"), key="t_batch")
    accum = c[1].number_input("Grad accumulation", 1, 1024, DEFAULTS.grad_accum, help=H("grad_accum"), key="t_accum")
    max_length = c[2].number_input("Max length (tokens)", 8, 32_768, DEFAULTS.max_length, help=H("max_length"), key="t_maxlen")
    gc = c[3].checkbox("Gradient checkpointing", DEFAULTS.gradient_checkpointing, help=H("gradient_checkpointing"), key="t_gc")
    c = st.columns(4)
    optimizers = optimizers_for(DEVICE)
    optimizer = c[0].selectbox("Optimizer", optimizers, index=optimizers.index(DEFAULTS.optimizer), help=H("optimizer"), key="t_optim")
    scheduler = c[1].selectbox("Schedule", SCHEDULERS, index=SCHEDULERS.index(DEFAULTS.scheduler), help=H("scheduler"), key="t_sched")
    warmup = c[2].number_input("Warmup ratio", 0.0, 0.5, DEFAULTS.warmup_ratio, step=0.05, help=H("warmup_ratio"), key="t_warmup")
    wd = c[3].number_input("Weight decay", 0.0, 1.0, DEFAULTS.weight_decay, step=0.01, help=H("weight_decay"), key="t_wd")
    c = st.columns(4)
    eval_steps = c[0].number_input("Eval every (steps)", 0, 100_000, DEFAULTS.eval_steps, help=H("eval_steps"), key="t_eval")
    save_steps = c[1].number_input("Checkpoint every (steps)", 1, 100_000, DEFAULTS.save_steps, help=H("save_steps"), key="t_save")
    logging_steps = c[2].number_input("Log every (steps)", 1, 10_000, DEFAULTS.logging_steps, help=H("logging_steps"), key="t_log")
    merge = c[3].checkbox("Merge & export after training", DEFAULTS.merge, help=H("merge"), key="t_merge")

cfg = replace(
    DEFAULTS, model=model.strip(), dataset=dataset, skip_bad_rows=skip_bad, precision=precision, r=int(r), alpha=float(alpha),
    dropout=float(dropout), targets=targets, use_rslora=use_rslora, use_dora=use_dora, loraplus_ratio=float(loraplus),
    learning_rate=float(lr), max_steps=int(max_steps), epochs=float(epochs), seed=int(seed), batch_size=int(batch),
    grad_accum=int(accum), max_length=int(max_length), gradient_checkpointing=gc, optimizer=optimizer, scheduler=scheduler,
    warmup_ratio=float(warmup), weight_decay=float(wd), eval_steps=int(eval_steps), save_steps=int(save_steps),
    logging_steps=int(logging_steps), merge=merge,
)

if check is not None:
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
            st.caption(f"Token lengths over {stats['rows']} rows: min {stats['min']}, median {stats['median']}, "
                       f"mean {stats['mean']}, max {stats['max']}; {stats['truncated']} longer than max length {cfg.max_length} (truncated).")

with st.expander("Memory estimate (the calculator's formula)", expanded=False):
    with friendly_errors("The memory estimate"):
        est = cfg.memory_estimate(DEVICE)
        st.metric("Estimated peak training memory", fmt_bytes(est.total_bytes),
                  help="weights + adapter + gradients + optimizer states + activations, from the model's config.")
        st.table({"term": list(est.components), "bytes": [fmt_bytes(v) for v in est.components.values()],
                  "formula": [est.formulas.get(k, "") for k in est.components]})

# --------------------------------------------------------------------------- start
busy = R.read_lock()
st.code(".venv/bin/python -m lab train " + " ".join(to_cli_args(cfg)), language="bash")
with st.expander("Launch command for several GPUs (or CPU processes)"):
    c1, c2, c3 = st.columns(3)
    n_proc = c1.number_input("Processes", 1, 64, 2, help="One per GPU. Each trains on its share of every batch: "
                             "the effective batch is batch size x grad accumulation x processes.", key="t_nproc")
    mode = c2.selectbox("Mode", list(LAUNCH_MODES), format_func=lambda m: LAUNCH_MODES[m].label,
                        help=" · ".join(f"**{t.label}**: {t.help}" for t in LAUNCH_MODES.values()), key="t_mode")
    target = c3.selectbox("On", ["cuda", "cpu"], format_func={"cuda": "GPUs", "cpu": "CPU processes"}.get,
                          help="GPUs: one process per GPU. CPU processes: DDP over gloo on this kind of machine.",
                          key="t_target")
    with friendly_errors("The launch command"):
        launch = launch_command(cfg, int(n_proc), mode, target)
        st.code(str(launch), language="bash")
        for note in launch.notes:
            st.caption(note)
if busy is not None:
    st.warning(f"A training is already running: `{Path(busy['run_dir']).name}` (pid {busy['pid']}). "
               "One training at a time per server — stop it above or wait for it.", icon=":material/hourglass_top:")
start = st.button("Train", type="primary", icon=":material/play_arrow:", disabled=busy is not None or not dataset,
                  help="Start `python -m lab train` with these settings as its own process; this page follows its event log.")
if start:
    with friendly_errors("Starting the run"):
        cfg.validate(DEVICE)
        run_dir = run_dir_for(cfg, resolve_source(cfg.model))
        args = to_cli_args(cfg, exclude=("output",))  # start_training adds --output
        proc = R.start_training(args, run_dir)
        st.session_state["train_run_dir"] = str(run_dir)
        st.session_state["train_proc"] = proc
        st.session_state["train_was_active"] = True
        st.query_params["run"] = run_dir.name
        time.sleep(0.2)
        st.rerun()


# --------------------------------------------------------------------------- history
PUSH_TASK = "training_push"
PUSH_RESULT = "training_push_result"


def push_section(finished: list[R.RunStatus]) -> None:
    """Push a run's adapter (or merged model) to the Hub, off the script thread."""
    from lab.share.push import push_run

    with st.expander("Push to the Hub"):
        c1, c2 = st.columns([2, 3])
        name = c1.selectbox("Run", [s.name for s in finished], key="t_push_run", help="A finished or stopped run of the comparison.")
        repo = c2.text_input("Repo (owner/name)", placeholder="alice/smollm2-style-lora", key="t_push_repo",
                             help="Created if needed. The token comes from HF_TOKEN or `hf auth login`.")
        c1, c2, c3 = st.columns(3)
        private = c1.checkbox("Private", key="t_push_private", help="Create the repo as private.")
        merged = c2.checkbox("Merged model", key="t_push_merged", help="Push <run>/merged (base + adapter) instead of the adapter.")
        if c3.button("Push", icon=":material/cloud_upload:", disabled=not repo.strip(), key="t_push"):
            start_task(PUSH_TASK, lambda run, report, cancel: push_run(run, repo, private, merged), runs_dir() / name)

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

    def row(s: R.RunStatus) -> dict:
        info = infos[s.name]
        c, summ = info.get("config", {}), info.get("summary", {})
        return {"run": s.name, "status": f"{STATUS_TEXT.get(s.status, '')} {s.status}", "steps": s.step,
                "final loss": summ.get("final_loss") or (s.last_log or {}).get("loss"), "eval loss": summ.get("final_eval_loss"),
                "precision": info.get("precision"), "r": c.get("r"), "dataset": (info.get("dataset") or {}).get("name"),
                "tokens/s": summ.get("tokens_per_second"), "seconds": (info.get("durations") or {}).get("total_seconds")}

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
            table[s.name] = [str(c.get(k, "")) for k in keys]
        st.dataframe(table, hide_index=True)
        finished = [s for s in chosen if s.status in ("finished", "stopped") and (s.run_dir / "adapter_model.safetensors").exists()]
        if finished:
            target = st.selectbox("Merge & export", [s.name for s in finished],
                                  help="Reload the base at 16/32-bit, merge this run's adapter into it and save a standalone model in <run>/merged.")
            if st.button("Merge and save", icon=":material/merge:", help=H("merge")):
                with friendly_errors("Merging"), st.spinner("Merging the adapter into the base model…"):
                    from lab.training.runner import merge_and_export

                    out = merge_and_export(runs_dir() / target)
                    st.success(f"Merged model saved in `{out}`.")
            push_section(finished)
