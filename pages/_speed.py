"""Display of the time model (lab.estimate.speed / plan): called by the calculator and the Training page.

Functions here take lab results and draw them; the long work (the saving options' simulations) runs in a
background task (lab.tasks), never on the script thread.
"""

from __future__ import annotations

import streamlit as st
import torch

from lab.errors import LabError
from lab.estimate.gpus import GPUS
from lab.estimate.plan import predict_run, saving_options
from lab.estimate.prices import PRICES_DATE, prices_for
from lab.estimate.speed import step_time
from lab.units import fmt_bytes
from pages._ui import get_task, poll_task, start_task, task_running

SAVING_TASK = "calc_savings"
MAX_PREDICTED = 5
HOW = ("Predicted from the simulated step: every op's FLOPs and bytes through a roofline of the GPU's datasheet "
       "peaks with efficiencies from published measurements (lab.estimate.speed; checked against published "
       "throughputs in docs/published-speed.md). A planning figure, not a benchmark.")


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def speed_table(sim, gpus: int, sharding: str, steps: int) -> None:
    """Tokens/s, step time, the planned run's time and its cheapest listed cost, per GPU of the table."""
    rows = []
    for g in GPUS:
        try:
            t = step_time(sim, g.name, gpus, sharding)
        except LabError:
            continue
        run = steps * t.step_seconds
        prices = sorted(prices_for(g.name), key=lambda p: p.usd_per_hour)
        cost = (f"${run / 3600 * gpus * prices[0].usd_per_hour:,.2f} ({prices[0].offer})" if prices else "")
        rows.append({"GPU": f"{gpus} × {g.name}" if gpus > 1 else g.name,
                     "tokens/s per GPU": round(t.tokens_per_second),
                     "step": f"{t.step_seconds * 1000:,.0f} ms", f"{steps:,} steps": duration(run),
                     "cheapest listed cost": cost})
    st.dataframe(rows, hide_index=True, width="stretch")
    st.caption(f"{HOW} Prices per GPU-hour as listed in {PRICES_DATE} (lab/estimate/prices.py, with sources).")


def savings(arch, settings, gpu: str) -> None:
    """Each memory-saving option: memory saved and time cost side by side (simulated in the background)."""
    key = repr((arch.name, settings, gpu))
    kept = st.session_state.get("calc_savings_result")
    if kept is not None and kept[0] == key:
        if isinstance(kept[1], str):
            st.error(kept[1], icon=":material/error:")
            return
        st.dataframe([{"option": r.option, "changes": r.settings, "peak": fmt_bytes(r.peak_bytes) if r.peak_bytes
                       else "", "memory saved": fmt_bytes(r.saved_bytes) if r.peak_bytes else "",
                       "tokens/s": round(r.tokens_per_second),
                       "time per token": f"{100 * r.time_cost:+.0f}%" if r.peak_bytes else r.note}
                      for r in kept[1]], hide_index=True, width="stretch")
        return

    def _keep(task) -> None:
        st.session_state["calc_savings_result"] = (task.name, task.result if task.status == "done" else task.error)

    if task_running(SAVING_TASK) and getattr(get_task(SAVING_TASK), "name", None) == key:
        poll_task(SAVING_TASK, lambda task: st.caption("Simulating each option…"), _keep)
    elif st.button(f"Price each memory saving on {gpu}", icon=":material/timer:",
                   help="One simulation per option, in the background (seconds to a minute)."):
        start_task(SAVING_TASK, saving_options, arch, settings, gpu).name = key
        st.rerun()


def predicted_beside_measured(predicted: float | None, measured: float | None) -> str:
    """'measured (predicted P)' for a run's tokens/s."""
    if measured is None:
        return f"predicted {predicted:,.0f}" if predicted else ""
    return f"{measured:,.0f}" + (f" (predicted {predicted:,.0f})" if predicted else "")


def predicted_run(name: str, config: dict, device: str | None, steps: int | None = None) -> dict | None:
    """The time model's prediction for a run (lab.estimate.plan.predict_run), kept per run in the session;
    None while its background task runs (or when it cannot be predicted)."""
    kept = st.session_state.setdefault("predicted_runs", {})
    if name in kept:
        return kept[name]
    key = f"predict:{name}"
    task = get_task(key)
    started = st.session_state.setdefault("predicted_started", [])
    if task is None and len(started) >= MAX_PREDICTED and name not in started:
        return None  # the newest runs only: each prediction probes this machine for a few seconds
    if task is None:
        started.append(name)
        start_task(key, predict_run, config, device or this_device(), steps)
    elif task.status in ("done", "failed"):
        kept[name] = task.result if task.status == "done" else None
        return kept[name]
    return None


def this_device() -> str:
    """Where this server trains: "cuda" when it has a GPU, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"
