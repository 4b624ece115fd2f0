"""The Training page's plan of a run before it starts: the memory of one step (simulated, off the script thread)
and the command that launches it on several GPUs or CPU processes."""

from __future__ import annotations

import streamlit as st

from lab.environment import device_type
from lab.estimate.explain import LABELS
from lab.training.config import TrainConfig
from lab.training.distributed import launch_command
from lab.units import fmt_bytes
from lab.vocab import LAUNCH_MODES
from pages._ui import friendly_errors, get_task, poll_task, start_task

DEVICE = device_type()
MEMORY_TASK = "training_memory"


def memory_section(cfg: TrainConfig) -> None:
    """One step of this run simulated on fake tensors (the calculator's simulation, this device's code paths),
    off the script thread; the formula's total beside it."""
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
    if DEVICE == "cpu":  # the live panel's figure is the process's: say why it reads higher, here where both meet
        st.caption(":material/info: Like for like: this is the tensors' peak. The live panel's *peak memory* is "
                   "the whole training process (Python, torch, the tokenizer on top), so it reads higher.")
    if DEVICE == "cuda":
        st.caption("On a GPU add about 1 GiB outside PyTorch's allocator (CUDA context, kernels) and a few percent of "
                   "fragmentation: the calculator's GPU verdict does.")
    st.caption(f"Peak during {sim.peak_at}. The calculator page shows the timeline and one layer module by module.")


def launch_section(shown: TrainConfig) -> None:
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
