"""The calculator's "Most that fits" tab: the largest batch, sequence length and rank on one GPU, solved off the
script thread. Each answer shows as soon as its knob is solved (a 7B's first after about a third of the search)."""

from __future__ import annotations

import streamlit as st

from lab.estimate.gpus import GPUS, get_gpu
from lab.estimate.inverse import INVERSE_KNOBS, INVERSE_LABELS, InverseAnswer, knobs_for, solve_all
from lab.estimate.training import TrainingSettings
from lab.models.architecture import Architecture
from pages._ui import get_task, poll_task, start_task

INVERSE_TASK, KEPT = "calc_inverse", "calc_inverse_result"


def inverse_tab(arch: Architecture, settings: TrainingSettings) -> None:
    inv_gpu = st.selectbox("Solve for", [g.name for g in GPUS], key="inv_gpu", bind="query-params",
                           help="Each answer: a few simulations, the step replayed from them at every value, "
                           "then one more: the value the replay says fits (the one above too where the replay missed).")
    knobs = knobs_for(settings.method)
    inverse_key = repr((arch.name, settings, inv_gpu))

    def _solving(task) -> None:
        answer_columns(knobs, task.partial or {})
        st.caption(f"Solving on {inv_gpu}: {task.progress[-1].message if task.progress else 'starting'}…")

    def _keep_answers(task) -> None:
        st.session_state[KEPT] = (task.name, task.result if task.status == "done" else task.error)

    kept, task = st.session_state.get(KEPT), get_task(INVERSE_TASK)
    if task is not None and task.running and task.name != inverse_key:
        task.cancel()  # a search for settings no longer on the page: it stops at its next simulated layer
    if kept is not None and kept[0] == inverse_key:
        if isinstance(kept[1], str):
            st.error(kept[1], icon=":material/error:")
            return
        answer_columns(knobs, kept[1])
    elif task is not None and task.running and task.name == inverse_key:
        poll_task(INVERSE_TASK, _solving, _keep_answers)
    elif st.button(f"Solve for {inv_gpu}", icon=":material/search:",
                   help="Runs several simulations in the background (tens of seconds for large models)."):
        start_task(INVERSE_TASK, solve_all, arch, settings, get_gpu(inv_gpu), knobs).name = inverse_key
        st.rerun()


def answer_columns(knobs: list[str], answers: dict[str, InverseAnswer]) -> None:
    """One metric per knob: its answer, or "solving…" for a knob not solved yet."""
    for col, k in zip(st.columns(len(knobs)), knobs, strict=True):
        label = INVERSE_LABELS.get(k, f"max {k.replace('_', ' ')}")
        a = answers.get(k)
        if a is None:
            col.metric(label, "solving…", help=INVERSE_KNOBS[k])
            continue
        col.metric(label, f"{a.value:,}" if a.value else "none fits",
                   help=INVERSE_KNOBS[k] + f" Simulated at {', '.join(str(x) for x, _ in a.points)}; "
                   + ("confirmed by a simulation." if a.checked else "not confirmed."))
        if not a.settled:
            col.caption(a.gap_note())
