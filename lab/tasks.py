"""Run slow work (loading, generating) off the UI thread and hand results back through a queue.

A page starts a BackgroundTask and polls it from an `st.fragment(run_every=...)`; the worker
never touches Streamlit. The worker function receives a `report(message, fraction=None)`
callable for progress, and may yield partial results through `report(..., partial=...)`.

Work on a shared model waits its turn in a device queue first (lab.sharing): while it waits the
worker reports `state="queued"` (the task's status is then "queued", with the queue position in
the message) and `state="running"` once its turn comes. Cancel works in both states; work that
was cancelled before it started raises `Cancelled` and ends as "cancelled", not "failed".
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lab.errors import Cancelled, LabError

T = TypeVar("T")

log = logging.getLogger(__name__)
EXIT_WAIT = 60.0  # seconds a process ending waits, at most, for its tasks to see their cancel
_RUNNING: dict[int, tuple[threading.Event, threading.Thread]] = {}  # tasks of this process not yet returned


@atexit.register
def _cancel_at_exit() -> None:
    """Cancel the tasks still running and wait for them (at most EXIT_WAIT seconds) as the process ends.

    Their threads are daemons, and a daemon thread still inside torch when the interpreter finalizes aborts
    the process ("terminate called without an active exception", exit 134): a server stopped or an AppTest
    ended while the calculator simulated did. atexit runs while those threads still run, so they can finish
    their step and return."""
    running = list(_RUNNING.values())
    for cancel, _ in running:
        cancel.set()
    deadline = time.monotonic() + EXIT_WAIT
    for _, thread in running:
        thread.join(max(0.0, deadline - time.monotonic()))


@dataclass
class Progress:
    message: str
    fraction: float | None = None
    partial: Any = None
    state: str | None = None  # "queued" | "running": the worker's place in a device queue


@dataclass
class BackgroundTask:
    name: str
    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    status: str = "pending"  # pending | queued | running | done | failed | cancelled
    result: Any = None
    error: str | None = None
    progress: list[Progress] = field(default_factory=list)
    partial: Any = None
    started_at: float | None = None
    finished_at: float | None = None

    def __post_init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.cancel_event = threading.Event()

    # ---------------------------------------------------------------- worker side
    def start(self) -> BackgroundTask:
        self.status = "running"
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._work, name=f"lab-task-{self.name}", daemon=True)
        _RUNNING[id(self)] = (self.cancel_event, self._thread)
        self._thread.start()
        return self

    def _report(
        self, message: str, fraction: float | None = None, partial: Any = None, state: str | None = None
    ) -> None:
        self._queue.put(("progress", Progress(message, fraction, partial, state)))

    def _work(self) -> None:
        try:
            result = self.fn(*self.args, report=self._report, cancel=self.cancel_event, **self.kwargs)
            self._queue.put(("done", result))
        except Cancelled as e:
            self._queue.put(("cancelled", str(e)))
        except LabError as e:
            self._queue.put(("failed", str(e)))
        except Exception as e:  # a bug, or a library error we did not anticipate: keep the UI alive
            log.error("task %s failed:\n%s", self.name, traceback.format_exc())
            self._queue.put(("failed", f"{type(e).__name__}: {e}"))
        finally:
            _RUNNING.pop(id(self), None)

    # ---------------------------------------------------------------- UI side
    def poll(self) -> BackgroundTask:
        """Drain the queue into this object's fields. Cheap; call on every rerun."""
        while True:
            try:
                kind, payload = self._queue.get_nowait()
            except queue.Empty:
                return self
            if kind == "progress":
                self.progress.append(payload)
                if payload.partial is not None:
                    self.partial = payload.partial
                if payload.state is not None:
                    self.status = payload.state
            else:
                self.finished_at = time.time()
                if kind == "done":
                    self.status, self.result = ("cancelled" if self.cancel_event.is_set() else "done"), payload
                elif kind == "cancelled":
                    self.status, self.error = "cancelled", payload
                else:
                    self.status, self.error = "failed", payload

    def cancel(self) -> None:
        self.cancel_event.set()

    def wait(self, timeout: float | None = None) -> BackgroundTask:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.poll()

    @property
    def running(self) -> bool:
        """Not finished yet: pending, waiting in a queue, or working."""
        return self.status in ("pending", "queued", "running")

    @property
    def queued(self) -> bool:
        return self.status == "queued"

    @property
    def last(self) -> Progress | None:
        return self.progress[-1] if self.progress else None

    @property
    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.time()) - self.started_at


# --------------------------------------------------------------------------- bounded work
_BOUNDED = threading.BoundedSemaphore(2)


def within(fn: Callable[[], T], seconds: float, late: LabError) -> T:
    """fn() in a daemon thread; its result, or `late` raised once `seconds` have passed. The caller is
    answered on time; work it gave up on finishes (or fails) in the background and holds nothing of
    the lab's, so a check for an input already replaced never delays the next one."""
    box: dict = {}

    def work():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=work, name="lab-within", daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise late
    if "error" in box:
        raise box["error"]
    return box["value"]


def bounded(fn: Callable[[], T], seconds: float, what: str) -> T:
    """fn() in a worker thread, waiting at most `seconds`. At most two run at once, so a stream of
    slow requests cannot pile up threads; the others are told the server is busy."""
    if not _BOUNDED.acquire(timeout=seconds):
        raise LabError(f"{what}: the server is busy reading other configs.", "Try again in a few seconds.")

    def guarded() -> T:
        try:
            return fn()
        finally:
            _BOUNDED.release()

    return within(guarded, seconds, LabError(f"{what} took longer than {seconds:.0f} s: refused.",
                                             "Check the config's sizes."))
