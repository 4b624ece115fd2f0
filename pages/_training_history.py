"""The Training page's run history: the table (typed rows, lab.training.history), curves and settings side by side,
merge, push to the Hub, delete."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from lab import policy
from lab.publish.push import push_run
from lab.training import owners
from lab.training import queue as Q
from lab.training import runs as R
from lab.training.config import TrainConfig
from lab.training.history import RunRecord, cell, run_record, settings_table
from lab.units import fmt_bytes
from pages import _speed
from pages._training_run import loss_figure
from pages._ui import friendly_errors, is_admin, owner_token, poll_task, start_task

STATUS_TEXT = {"queued": "🕒", "starting": "⏳", "running": "▶", "stopping": "…", "finished": "✔", "stopped": "■",
               "failed": "✘"}
PUSH_TASK = "training_push"
PUSH_RESULT = "training_push_result"


def history_row(rec: RunRecord) -> dict:
    s = rec.status
    return {"run": rec.name, "status": f"{STATUS_TEXT.get(s.status, '')} {s.status}",
            "owner": "you" if owners.owns(s.run_dir, owner_token()) else "", "steps": s.step,
            "final loss": cell(rec.final_loss, "{:.4f}"), "eval loss": cell(rec.eval_loss, "{:.4f}"),
            "precision": cell(rec.precision), "r": cell(rec.r), "dataset": cell(rec.dataset),
            "tokens/s (predicted)": _speed.predicted_beside_measured(rec.predicted_tokens_per_second,
                                                                     rec.tokens_per_second) or "—",
            "step peak (predicted)": step_peak_cell(rec.memory),
            "seconds": cell(rec.seconds, "{:.0f}")}


def step_peak_cell(m) -> str:
    """The measured step peak with the simulation of that step's shape beside it (tensors against tensors)."""
    if m.measured_bytes is None:
        return f"predicted {fmt_bytes(m.predicted_bytes)}" if m.predicted_bytes else "—"
    beside = f" ({fmt_bytes(m.simulated_bytes)}, {m.error_pct:+.1f}%)" if m.simulated_bytes else ""
    return fmt_bytes(m.measured_bytes) + beside


def push_section(finished: list[R.RunStatus]) -> None:
    """Push a run's adapter (or merged model) to the Hub, off the script thread."""
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


def merge_section(finished: list[R.RunStatus]) -> None:
    target = st.selectbox("Merge & export", [s.name for s in finished],
                          help="Reload the base at 16/32-bit, merge this run's adapter into it and save a standalone "
                               "model in <run>/merged.")
    if st.button("Merge and save", icon=":material/merge:", help=TrainConfig.help("merge")):
        with friendly_errors("Merging"), st.spinner("Merging the adapter into the base model…"):
            # lab.training.runner takes 5.1 s to import (transformers, peft, TRL): only merge_section() needs it
            from lab.training.runner import merge_and_export

            out = merge_and_export(policy.run_folder(target))
            st.success(f"Merged model saved in `{R.shown_path(out)}`.")


def compare_section(records: list[RunRecord]) -> None:
    picked = st.multiselect("Compare runs", [r.name for r in records], default=[r.name for r in records[:2]],
                            help="Overlay their loss curves and show their settings side by side.", key="t_compare")
    chosen = [r for r in records if r.name in picked]
    if not chosen:
        return
    st.plotly_chart(loss_figure([r.status for r in chosen]), key="history-chart")
    st.dataframe(settings_table(chosen), hide_index=True)
    finished = [r.status for r in chosen if owners.can_control(r.status.run_dir, owner_token(), is_admin())
                and r.status.status in ("finished", "stopped")
                and (r.status.run_dir / "adapter_model.safetensors").exists()]
    if finished:
        merge_section(finished)
        push_section(finished)


def delete_section(history: list[R.RunStatus]) -> None:
    deletable = [s for s in history if not s.active and owners.can_control(s.run_dir, owner_token(), is_admin())]
    if not deletable:
        return
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


def history_section() -> None:
    history = R.list_runs()
    if not history:
        st.caption("No runs yet.")
        return
    records = [run_record(s) for s in history]
    st.dataframe([history_row(r) for r in records], hide_index=True)
    compare_section(records)
    delete_section(history)
