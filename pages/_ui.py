"""Streamlit helpers shared by every page: the page list, the sidebar, error display,
the shared model registry, and polling of background tasks.

Pages import this module; `lab/` never does (it has no Streamlit in it).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import streamlit as st

from lab.environment import environment_report
from lab.errors import LabError
from lab.models.registry import ModelRegistry
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
def model_registry() -> ModelRegistry:
    """The one registry of loaded models, shared by every session and page of this server."""
    return ModelRegistry()


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
        registry = model_registry()
        loaded = registry.loaded()
        if loaded:
            st.caption("Loaded models")
            for spec, precision, _dtype in loaded:
                st.markdown(f"- `{spec}` @ {precision}")
            if st.button("Free all loaded models", icon=":material/delete_sweep:", help="Drop every loaded model and hand its memory back (gc + CUDA cache)."):
                n = registry.release()
                cached_environment.clear()
                st.toast(f"Freed {n} model(s).")
                st.rerun()


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


def progress_bar(task: BackgroundTask, starting: str = "starting…") -> None:
    """A task's last progress message and fraction, with the seconds it has been running."""
    last = task.last
    fraction = last.fraction if last is not None and last.fraction is not None else 0.0
    st.progress(min(max(fraction, 0.0), 1.0), text=f"{last.message if last else starting} ({task.elapsed:.0f} s)")
