"""Streamlit helpers shared by every page: the page list, the sidebar, error display,
the shared models (registry, device queues, limits), and polling of background tasks.

Pages import this module; `lab/` never does (it has no Streamlit in it).
"""

from __future__ import annotations

import logging
import secrets
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import streamlit as st

from lab.environment import environment_report
from lab.errors import LabError
from lab.models.registry import ModelRegistry
from lab.sharing.queue import fmt_seconds
from lab.sharing.shared import SharedModels
from lab.tasks import BackgroundTask
from lab.units import fmt_bytes

log = logging.getLogger("qlora_lab.ui")


def _leave_legacy_multipage_mode() -> None:
    """The one workaround for Streamlit's legacy pages mode (nothing else in the app or the tests
    needs to know about it).

    Streamlit treats a `pages/` folder beside the entry script as a legacy (v1) multipage app
    until `st.navigation` runs once. If a fresh server's first request is a deep link such as
    /loading_lab, that page would run on its own (no app.py, no shared sidebar, an automatic menu
    listing every file) for the server's whole life. The folder keeps its name (the project's
    layout names it), so instead: every page imports this module, which switches to app.py's
    navigation and reruns; the same URL then resolves through `st.navigation`."""
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


_leave_legacy_multipage_mode()


@dataclass(frozen=True)
class PageSpec:
    path: str
    title: str
    icon: str
    blurb: str  # the card text on Home


# The lab's pages in menu order; app.py routes to them, Home shows a card for each of the others.
PAGES = [
    PageSpec("pages/home.py", "Home", ":material/home:", "What the lab is for, and the machine it runs on."),
    PageSpec("pages/calculator.py", "Precision & memory", ":material/calculate:",
             "Weights at every precision and what training adds, with a verdict on which GPUs it fits."),
    PageSpec("pages/lora_estimator.py", "LoRA estimator", ":material/tune:",
             "Module-by-module LoRA parameter counts that equal what peft creates."),
    PageSpec("pages/loading_lab.py", "Model loading lab", ":material/memory:",
             "Load a real model at each precision: measured footprint, layer types, load time, quality."),
    PageSpec("pages/training.py", "Training", ":material/model_training:",
             "QLoRA fine-tuning in the background with live curves and a run history."),
    PageSpec("pages/playground.py", "Playground", ":material/compare:",
             "Base vs fine-tuned generation side by side, and a measured evaluation."),
]


@st.cache_resource(show_spinner=False)
def shared_models() -> SharedModels:
    """The server's shared models, device queues and per-request limits: one for every session and page."""
    return SharedModels()


def model_registry() -> ModelRegistry:
    """The one registry of loaded models, shared by every session and page of this server."""
    return shared_models().registry


def session_owner() -> str:
    """Who this browser session is to the shared models (its adapters, its holds, its place in line):
    Streamlit's session id, which tells the reaper whether the tab is still open, plus a random part
    kept in session state (in-process test sessions share one id). Read on the script thread only."""
    if "lab_owner" not in st.session_state:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        ctx = get_script_run_ctx()
        st.session_state["lab_owner"] = f"{ctx.session_id if ctx else 'no-session'}:{secrets.token_hex(4)}"
    return st.session_state["lab_owner"]


def _holders_text(m, owner: str) -> str:
    """'unused', 'in use: yours + 2 other sessions', 'loading…' for one ModelStatus."""
    if m.state == "loading":
        return "loading…"
    if not m.holders:
        return "unused"
    others = len([h for h in m.holders if h != owner])
    parts = (["yours"] if owner in m.holders else []) + ([f"{others} other session{'s' * (others != 1)}"] if others else [])
    return "in use: " + " + ".join(parts)


def _owner_connected(owner: str) -> bool:
    """Is the browser session behind `owner` still connected? (Streamlit's public, thread-safe check.)"""
    from streamlit import runtime

    if not runtime.exists():  # in-process tests: no server, nobody leaves
        return True
    return runtime.get_instance().is_active_session(owner.split(":")[0])


@st.cache_data(ttl=30, show_spinner=False)
def cached_environment() -> dict:
    return environment_report().to_json()


def sidebar() -> None:
    env = cached_environment()
    with st.sidebar:
        st.caption("Machine")
        st.markdown(f"**{env['device'].upper()}** · {env['device_name']}")
        if env["gpus"]:
            g = env["gpus"][0]
            st.progress(1 - g["free_bytes"] / g["total_bytes"], text=f"GPU {fmt_bytes(g['free_bytes'])} free of {fmt_bytes(g['total_bytes'])}")
        st.progress(1 - env["ram_available_bytes"] / env["ram_total_bytes"],
                    text=f"RAM {fmt_bytes(env['ram_available_bytes'])} free of {fmt_bytes(env['ram_total_bytes'])}")
        shared_sidebar()


def shared_sidebar() -> None:
    """Loaded models with who holds them, the device's line, and a Free that frees only unused models."""
    shared = shared_models()
    owner = session_owner()
    shared.reap(_owner_connected, every=10.0)  # closed tabs give back their models and adapters
    models = shared.registry.status()
    if models:
        st.caption("Loaded models (shared by everyone on this server)")
        for m in models:
            st.markdown(f"- `{m.spec}` @ {m.precision}" + (f" · {fmt_bytes(m.bytes)}" if m.bytes else "")
                        + f" · {_holders_text(m, owner)}")
        unused = [m for m in models if not m.in_use]
        if st.button("Free unused models", icon=":material/delete_sweep:", disabled=not unused,
                     help="Free the loaded models nobody is using and hand their memory back. A model someone "
                          "holds (open in their playground, or generating) stays loaded."):
            freed = shared.free_unused()
            cached_environment.clear()
            st.toast(f"Freed {len(freed)} unused model(s); {len(models) - len(freed)} in use stay.")
            st.rerun()
    q = shared.queue().status()
    if q.running or q.waiting:
        wait = shared.queue().wait_for_new()
        st.caption(f"{q.device.upper()} queue: {'1 running' if q.running else 'idle'}, {len(q.waiting)} waiting"
                   + ("" if wait.seconds is None else f" (a new request waits {fmt_seconds(wait.seconds)})"))


@contextmanager
def friendly_errors(what: str = "That") -> Iterator[None]:
    """Show LabErrors as they are, anything else as one line; never a traceback on the page."""
    try:
        yield
    except LabError as e:
        st.error(str(e), icon=":material/error:")
    except Exception as e:  # an unanticipated library error: log it, keep the page alive
        log.error("%s failed:\n%s", what, traceback.format_exc())
        st.error(f"{what} failed: {type(e).__name__}: {e}", icon=":material/error:")


# --------------------------------------------------------------------------- watching work that goes on
def start_task(key: str, fn: Callable, *args, **kwargs) -> BackgroundTask:
    """Start `fn` in a worker thread and remember it in the session under `key` (see `poll_task`)."""
    task = BackgroundTask(key, fn, args, kwargs).start()
    st.session_state[key] = task
    return task


def get_task(key: str) -> BackgroundTask | None:
    """The task this session started under `key`, its progress drained; None when there is none."""
    task = st.session_state.get(key)
    return task.poll() if task is not None else None


def task_running(key: str) -> bool:
    task = get_task(key)
    return task is not None and task.running


def poll(body: Callable[[], bool], every: float | None) -> None:
    """The one way a page watches work that goes on without it (a background task, a training process).

    `body()` draws the live part inside an `st.fragment` that Streamlit reruns every `every` seconds
    (None: only with the page), so the rest of the page is not redrawn while the work goes on.
    It returns True when the work has just ended: the whole page then reruns once, so the inputs
    enable again and the results, drawn outside the fragment from session state, appear."""

    def fragment() -> None:
        if body():
            st.rerun(scope="app")

    st.fragment(fragment, run_every=every)()


def poll_task(key: str, draw: Callable[[BackgroundTask], None], keep: Callable[[BackgroundTask], None],
              every: float = 1.0) -> None:
    """Poll the task started with `start_task(key, ...)`: `draw(task)` while it runs (progress, partial
    results, a Stop button); once it has ended, `keep(task)` stores its result or error in session
    state for the page to draw, the task is forgotten, and the page reruns."""

    def body() -> bool:
        task = get_task(key)
        if task is None:
            return False
        if task.running:
            draw(task)
            return False
        del st.session_state[key]
        keep(task)
        return True

    poll(body, every if task_running(key) else None)


def queued_notice(task: BackgroundTask) -> None:
    """While a task waits its turn on the shared device: where it stands ("2 requests ahead of you,
    about 20 s") and a way out of the line."""
    st.info(task.last.message if task.last else "Waiting for the device…", icon=":material/hourglass_top:")
    st.button("Cancel", icon=":material/cancel:", on_click=task.cancel, key=f"cancel-{task.name}",
              help="Leave the queue: nothing runs, nothing is lost.")


def room_notice() -> None:
    """Before asking: how busy the shared device is (nothing when nobody is in line)."""
    wait = shared_models().queue().wait_for_new()
    if wait.ahead:
        st.caption(f":material/groups: The room is busy: {wait.message()}")


def progress_bar(task: BackgroundTask, starting: str = "starting…") -> None:
    """A task's last progress message and fraction, with the seconds it has been running."""
    last = task.last
    fraction = last.fraction if last is not None and last.fraction is not None else 0.0
    st.progress(min(max(fraction, 0.0), 1.0), text=f"{last.message if last else starting} ({task.elapsed:.0f} s)")
