"""Streamlit helpers shared by every page: the page list, the sidebar, error display,
the shared models (registry, device queues, limits), and polling of background tasks.

Pages import this module; `lab/` never does (it has no Streamlit in it).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import streamlit as st
from streamlit import runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from lab import policy
from lab.environment import environment_report
from lab.errors import LabError
from lab.estimate import warmup
from lab.models.catalog import EMBEDDED, catalog_names
from lab.models.registry import ModelRegistry
from lab.models.sources import embedded_status
from lab.serve.admin import admin_enabled
from lab.serve.preload import Preloader
from lab.serve.sessions import SessionBoard
from lab.sharing.shared import SharedModels
from lab.tasks import BackgroundTask
from lab.training.dispatch import QueueWatcher
from lab.units import fmt_bytes, fmt_count, fmt_seconds
from pages._cookies import is_admin, owner_token, remember_owner  # noqa: F401  (pages import them from here)
from pages._legacy import leave_legacy_multipage_mode

log = logging.getLogger("qlora_lab.ui")


leave_legacy_multipage_mode()  # every page imports this module: see pages/_legacy.py


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


# Routed only when QLORA_LAB_ADMIN_TOKEN is set; never a card on Home.
INSTRUCTOR = PageSpec("pages/instructor.py", "Instructor", ":material/school:",
                      "Who is connected, the queues, loaded models and runs, with controls.")


def menu() -> list[PageSpec]:
    """What app.py routes to: the lab's pages, and the instructor's when QLORA_LAB_ADMIN_TOKEN is set."""
    return [*PAGES, *([INSTRUCTOR] if admin_enabled() else [])]


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
        st.session_state["lab_owner"] = f"{session_id()}:{secrets.token_hex(4)}"
    return st.session_state["lab_owner"]


def _holders_text(m, owner: str) -> str:
    """'unused', 'in use: yours + 2 other sessions', 'loading…' for one ModelStatus."""
    if m.state == "loading":
        return "loading…"
    if not m.holders:
        return "unused"
    others = len([h for h in m.holders if h != owner])
    parts = (["yours"] if owner in m.holders else []) + (
        [f"{others} other session{'s' * (others != 1)}"] if others else []
    )
    return "in use: " + " + ".join(parts)


def _owner_connected(owner: str) -> bool:
    """Is the browser session behind `owner` (see session_owner) still connected?"""
    return session_alive(owner.split(":")[0])


# --------------------------------------------------------------------------- a room full of sessions
@dataclass
class ServerServices:
    """What runs once per server, whoever opens the app first: the queue watcher (starts queued
    runs when the device frees up, even with no Training page open), the preloader
    (QLORA_LAB_PRELOAD), the calculator's warm-up (QLORA_LAB_WARMUP) and the board of connected sessions."""

    board: SessionBoard
    watcher: QueueWatcher
    preloader: Preloader | None
    preload_error: str | None = None
    warmup: BackgroundTask | None = None


@st.cache_resource(show_spinner=False)
def server_services() -> ServerServices:
    preloader, error = None, None
    try:
        preloader = Preloader.from_env(lambda spec, precision: model_registry().get(spec, precision)).start()
    except LabError as e:  # a bad QLORA_LAB_PRELOAD must not take the app down: the instructor's page shows it
        error = str(e)
    watcher = QueueWatcher()
    if os.environ.get("QLORA_LAB_QUEUE_WATCH", "1") != "0":  # tests' in-process apps turn it off (conftest)
        watcher.start()
    warm = warmup.start() if warmup.enabled() else None  # the calculator's first answer, before anyone asks
    return ServerServices(SessionBoard(), watcher, preloader, error, warm)


def session_id() -> str:
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "no-session"


def report_activity(page: str | None = None, doing: str | None = None) -> None:
    """Tell the instructor's page which page this session is on and what it is doing."""
    server_services().board.touch(session_id(), page, doing)


def session_alive(sid: str) -> bool:
    """Is this Streamlit session still connected? (the runtime's public, thread-safe check)"""
    return runtime.get_instance().is_active_session(sid) if runtime.exists() else True


# --------------------------------------------------------------------------- inputs that obey public mode
HUB_CHOICE = "Hub id…"


def model_field(label: str, default: str, key: str, help: str, weights: bool = True, disabled: bool = False,
                bind: str | None = None) -> str:
    """A model input. Local mode: free text (a folder, a config.json, a catalog name or a Hub id), as
    always. Public mode (lab.policy): a picker of what this server allows — 'embedded', the catalog
    when no weights are needed, or a Hub id, which is checked against the parameter cap."""
    if not policy.public_mode():
        return st.text_input(label, default, key=key, help=help, disabled=disabled, bind=bind)

    options = [EMBEDDED, *([] if weights else catalog_names()), HUB_CHOICE]
    index = options.index(default) if default in options else 0
    choice = st.selectbox(label, options, index=index, key=key, disabled=disabled, bind=bind,
                          help=help + " On this public server: no server paths; Hub models up to "
                          f"{fmt_count(policy.limits().max_params)} parameters or on the instructor's allow-list.")
    if choice != HUB_CHOICE:
        return choice
    return st.text_input("Hub id", key=f"{key}_hub", placeholder="owner/name", disabled=disabled, bind=bind,
                         help="Its size is computed from its config.json before anything is downloaded.").strip()


def upload_limit_mb(max_bytes: int | None = None) -> int | None:
    """What an upload box states and lets through, in Streamlit's whole MB (st.file_uploader's max_upload_size):
    on a public server its cap (QLORA_LAB_MAX_UPLOAD_MB, or `max_bytes`), whatever server.maxUploadSize says
    (`streamlit run app.py` leaves Streamlit's 200 MB); None locally (Streamlit's own setting)."""
    if not policy.public_mode():
        return None
    cap = policy.limits().max_upload_bytes if max_bytes is None else max_bytes
    return max(1, math.ceil(cap / 1e6))


@st.cache_data(ttl=30, show_spinner=False)
def cached_environment() -> dict:
    return {**environment_report().to_json(), **embedded_status()}


def sidebar() -> None:
    env = cached_environment()
    with st.sidebar:
        st.caption("Machine")
        name = env["device_name"]  # "CPU (Intel Xeon, 2 cores)" or a GPU's name: say the device once
        st.markdown(f"**{name}**" if name.upper().startswith(env["device"].upper()) else
                    f"**{env['device'].upper()}** · {name}")
        if env["gpus"]:
            g = env["gpus"][0]
            st.progress(
                1 - g["free_bytes"] / g["total_bytes"],
                text=f"GPU {fmt_bytes(g['free_bytes'])} free of {fmt_bytes(g['total_bytes'])}",
            )
        st.progress(1 - env["ram_available_bytes"] / env["ram_total_bytes"],
                    text=f"RAM {fmt_bytes(env['ram_available_bytes'])} free of {fmt_bytes(env['ram_total_bytes'])}")
        shared_sidebar()
        remember_owner()


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
        if st.session_state.pop(key, None) is None:
            return False  # an overlapping run of this page (a fragment tick and a rerun) kept it already
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
