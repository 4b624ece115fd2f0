"""The Training page's live panel: the run being followed (anyone's), its progress in words, its curves, Stop, and
the queue with this session's place in it. Laid out here; what a run is comes from lab.training."""

from __future__ import annotations

import math
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from lab import policy
from lab.environment import device_type
from lab.errors import LabError
from lab.training import owners
from lab.training import queue as Q
from lab.training import runs as R
from lab.training.history import StepMemory, run_record
from lab.units import fmt_bytes, fmt_seconds
from pages import _speed
from pages._ui import friendly_errors, is_admin, owner_token, report_activity

STATUS_ICONS = {"queued": ":material/schedule:", "starting": ":material/hourglass_top:",
                "running": ":material/play_circle:", "stopping": ":material/pending:",
                "finished": ":material/check_circle:", "stopped": ":material/stop_circle:",
                "failed": ":material/error:"}
MEMORY_HELP = {
    "cuda": "torch.cuda.max_memory_allocated: the tensors' bytes at the peak, what the simulation predicts.",
    "cpu": "The training process's peak resident set size: the tensors (what the simulated step peak counts) plus "
           "the Python interpreter, torch, transformers and the tokenizer, a few hundred MB to 2 GB on their own.",
}


def loss_figure(statuses: list[R.RunStatus], eval_too: bool = True) -> go.Figure:
    fig = go.Figure()
    for s in statuses:
        label = s.name if len(statuses) > 1 else "train"
        fig.add_scatter(x=[e["step"] for e in s.logs], y=[e["loss"] for e in s.logs], mode="lines+markers",
                        name=f"{label} loss" if len(statuses) > 1 else "train loss")
        if eval_too and s.evals:
            fig.add_scatter(x=[e["step"] for e in s.evals], y=[e["eval_loss"] for e in s.evals], mode="lines+markers",
                            name=f"{label} eval" if len(statuses) > 1 else "eval loss", line={"dash": "dash"})
    # steps are whole numbers: ticks on integers only (plotly would put them at 1.2, 1.4 on a short run)
    most = max((s.step for s in statuses), default=1)
    fig.update_xaxes(tickformat="d", tick0=0, dtick=max(1, math.ceil(most / 8)))
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 30, "b": 10}, xaxis_title="step", yaxis_title="loss",
                      legend={"orientation": "h", "y": -0.25})
    return fig


def whose(run_dir: Path) -> str:
    return "your run" if owners.owns(run_dir, owner_token()) else "another session's run"


def progress_line(s: R.RunStatus) -> None:
    """Step k of n, the time left, and what the run does between steps (evaluating, saving) in words."""
    doing = R.doing(s)
    if s.max_steps:
        left = R.eta_seconds(s)
        eta = f", {fmt_seconds(left)} left" if left is not None and s.active and not doing else ""
        st.progress(min(s.step / s.max_steps, 1.0),
                    text=f"step {s.step} / {s.max_steps}{eta}" + (f" — {doing}…" if doing else ""))
    elif s.active:
        st.progress(0.0, text=(doing + "…") if doing else "Starting the training process…")


def metrics(s: R.RunStatus, last: dict) -> None:
    c = st.columns(5)
    c[0].metric("Train loss", f"{last['loss']:.4f}",
                help="Cross-entropy on the answer tokens of the last logged batch (the prompt is masked out).")
    c[1].metric("Eval loss", f"{s.evals[-1]['eval_loss']:.4f}" if s.evals else "–",
                help="Loss on (up to max eval rows of) the test split, every eval steps.")
    c[2].metric("Tokens/s", f"{last['tokens_per_second']:.0f}",
                help="Non-padding tokens processed per second since training began (TRL's num_tokens / elapsed).")
    c[3].metric("Learning rate", f"{last['learning_rate']:.2e}" if last.get("learning_rate") is not None else "–",
                help="Current learning rate from the scheduler.")
    device = "cuda" if device_type() == "cuda" else "cpu"
    c[4].metric("Peak memory", fmt_bytes(last["peak_memory_bytes"]), help=MEMORY_HELP[device])
    step_memory(run_record(s).memory, device)


def step_memory(m: StepMemory, device: str) -> None:
    """The step peak predicted at the run's start beside the one measured in a real step, tensors against tensors
    (lab_run.json; the measured one is recorded when the run ends), said where the eye is (issue 20 papercut 2)."""
    what = "the tensors' bytes" if device == "cpu" else "torch.cuda.max_memory_allocated"
    parts = []
    if m.predicted_bytes:
        parts.append(f"**predicted {fmt_bytes(m.predicted_bytes)}** for batch {m.batch_size} × {m.max_length} tokens "
                     "(the simulation, at the start)")
    if m.measured_bytes:
        parts.append(f"**measured {fmt_bytes(m.measured_bytes)}** in step {m.step} (batch {m.measured_batch} × "
                     f"{m.measured_tokens} tokens, padded to its longest row)")
        if m.simulated_bytes:
            parts.append(f"the simulation of that step's shape: {fmt_bytes(m.simulated_bytes)} ({m.error_pct:+.1f}%)")
    if not parts:
        return
    rss = (" Peak memory above is the whole process (Python and its libraries too), so it reads higher."
           if device == "cpu" else "")
    st.caption(f":material/memory: Step peak, {what}: " + " · ".join(parts) + "." + rss)


def stop_button(s: R.RunStatus) -> None:
    if not (s.active and owners.can_control(s.run_dir, owner_token(), is_admin())):
        return
    if st.button("Stop", icon=":material/stop:", key=f"stop-{s.name}", disabled=s.status == "stopping",
                 help="Ask the training process to finish its current step, save the adapter and exit (writes a "
                      "STOP file the run watches)."):
        with friendly_errors("Stopping"):
            Q.stop_run(s.run_dir, owner_token(), is_admin())
            # said at once, in this run of the panel (the status reads "stopping" from the next poll on)
            st.info("Stop requested: the run finishes the step it is on, saves its adapter and exits.",
                    icon=":material/pending:")


def show_run(s: R.RunStatus) -> None:
    st.markdown(f"**{STATUS_ICONS.get(s.status, '')} {s.status.upper()}** — `{s.name}` ({whose(s.run_dir)})"
                + (f" (pid {s.pid})" if s.pid and s.active else ""))
    progress_line(s)
    if s.status == "stopping":
        st.info("Stopping: the run finishes the step it is on, saves its adapter and exits (up to one step's time).",
                icon=":material/pending:")
    last = s.last_log
    if last:
        metrics(s, last)
        st.plotly_chart(live_figure(s), key=f"live-{s.name}")
        if last["loss"] < 0.01:
            st.caption(":material/warning: Training loss near 0: the run has memorised its rows. That says nothing "
                       "about other inputs: the eval loss on held-out rows (or the Playground) does.")
    if s.status == "failed":
        st.error(f"Failed: {s.error}" + (f" {s.hint}" if s.hint else ""), icon=":material/error:")
    elif s.status == "stopped":
        st.info(f"Stopped after finishing its step ({R.stop_reason(s) or 'on request'}); the adapter was saved.",
                icon=":material/stop_circle:")
    elif s.status == "finished":
        st.success(f"Finished: adapter saved in `{R.shown_path(s.run_dir)}`.", icon=":material/check_circle:")
    stop_button(s)


def _eta(seconds: float | None) -> str:
    return "at a time not known yet (no finished run to time steps by)" if seconds is None else \
        f"in {fmt_seconds(seconds)}"


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def show_queue(line: list[Q.QueuedRun], mine: str | None) -> None:
    """The queue behind the running run: where this session's run stands, and everyone's places. A run is this
    person's by their owner token too (a cookie), so after a refresh (a new session) they can still cancel it."""
    ours = {str(q.run_dir) for q in line if str(q.run_dir) == mine or owners.owns(q.run_dir, owner_token())}
    for q in line:
        if str(q.run_dir) in ours:
            p = _speed.predicted_run(q.name, q.config, None, q.planned_steps)
            if p and "run_seconds" in p:
                st.caption(f"The time model predicts {p['tokens_per_second']:,.0f} tokens/s here: "
                           f"{_speed.duration(p['run_seconds'])} of training.")
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
        st.caption("Queue: " + " · ".join(f"{q.position}. `{q.name}`" + (" (yours)" if str(q.run_dir) in ours else "")
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


def my_run_ended(mine: R.RunStatus | None, shown: R.RunStatus | None) -> None:
    """This session's run ended while the panel follows another one (the queue started the next run): say how it
    ended here, or the person would only see someone else's run take its place (issue 20, bug 4)."""
    if mine is None or mine.active or mine.queued or (shown is not None and shown.run_dir == mine.run_dir):
        return
    at = f" at step {mine.step} / {mine.max_steps}" if mine.max_steps else ""
    if mine.status == "stopped":
        st.warning(f"Your run `{mine.name}` was stopped{at} ({R.stop_reason(mine) or 'on request'}); its adapter "
                   "was saved. It is in the run history below.", icon=":material/stop_circle:")
    elif mine.status == "failed":
        st.error(f"Your run `{mine.name}` failed{at}: {mine.error}", icon=":material/error:")
    else:
        st.success(f"Your run `{mine.name}` finished{at}. It is in the run history below.",
                   icon=":material/check_circle:")


def live_interval(s: R.RunStatus | None) -> float | None:
    """At an active run's pace (runs.poll_interval): every poll costs the browser a redraw that a training on the
    same cores pays for. Otherwise rarely, so a run started elsewhere (another tab, the CLI) still shows up."""
    return R.poll_interval(s if s is not None and s.active else None)


def live_panel() -> bool:
    """The running run (anyone's), and the queue with this session's place in it. True when a run started
    or ended or the queue moved (the page then refreshes the history and the Train button), or the run's pace
    changed (and with it how often this panel polls, see live_interval)."""
    active, line = Q.queue_state()
    mine = st.session_state.get("train_run_dir")
    mine_status = R.run_status(Path(mine)) if mine else None
    s = current_run(active)
    my_run_ended(mine_status, s)
    if s is None and not line:
        st.caption("No run yet: configure one below and press Train.")
    elif s is not None:
        show_run(s)
    show_queue(line, mine)
    report_activity(doing=f"{'training' if mine_status.active else mine_status.status} {mine_status.name}"
                    if mine_status is not None else None)
    state = (s.name if s else None, s.status if s else None, tuple(q.name for q in line))
    was = st.session_state.get("train_live_state", state)
    st.session_state["train_live_state"] = state
    return was != state or R.interval_changed(st.session_state.get("train_poll_interval"), live_interval(s))
