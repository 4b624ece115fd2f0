"""The training queue's line on disk: one run at a time per device, the others wait their turn.

A queued run is a run folder that already exists (its name is reserved, its owner recorded)
holding `queued.json`: the exact `python -m lab train` arguments, when it was queued and how
many steps it plans. The queue is the set of such folders, oldest first, so it survives a server
restart with nothing to rebuild.

Who starts the next run: `dispatch()`, called
- by `submit()` (an idle device starts the new run at once),
- by `python -m lab train` as it ends (`hand_over()`), so the queue moves on with no page open
  and no server involved,
- by every server on start and then every few seconds (`QueueWatcher`), which also covers a
  training that was killed before it could hand over.

`dispatch()` is race-free: it runs under an exclusive flock on runs/.queue.lock, takes the
training lock itself, and hands that lock to the process it starts (see runs.acquire_lock), after
replacing `queued.json` by `launched.json` so a run is never started twice. Any number of
dispatchers (servers, pages, finishing runs) can call it at the same time.

This module imports neither torch nor transformers (a dispatcher may be a fresh process); submitting,
stopping and deleting a run, which check configs, models and datasets, are lab.training.queue.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError
from lab.files import write_json_atomic
from lab.paths import runs_dir
from lab.training import runs as R
from lab.training.events import EventLog

log = logging.getLogger(__name__)
DISPATCH_LOCK = ".queue.lock"
_children: list[subprocess.Popen] = []  # runs this process started: polled so they never linger as zombies


@dataclass
class QueuedRun:
    """A run waiting for the device, with its place in the line."""

    run_dir: Path
    queued_at: float
    planned_steps: int | None
    config: dict
    position: int = 0  # 1 = next to start
    predicted_seconds: float | None = None  # how long it will train, from recent runs' seconds per step
    starts_in: float | None = None  # seconds from now until it starts (None: no timing to go by)

    @property
    def name(self) -> str:
        return self.run_dir.name

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "position": self.position,
            "queued_at": self.queued_at,
            "planned_steps": self.planned_steps,
            "predicted_seconds": self.predicted_seconds,
            "starts_in": self.starts_in,
        }


def _cli_args(entry: dict) -> list[str]:
    """The queued arguments without --output (spawn adds the run folder's own)."""
    args = list(entry.get("args") or [])
    if "--output" in args:
        i = args.index("--output")
        del args[i : i + 2]
    return args



# --------------------------------------------------------------------------- the line
def waiting(root: Path | None = None) -> list[QueuedRun]:
    """Queued runs, oldest first (not yet positioned: see `queue_state`)."""
    root = root or runs_dir()
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        entry = R.read_marker(d, R.QUEUE_FILE) if d.is_dir() and not d.is_symlink() else {}
        if entry:
            out.append(
                (
                    entry.get("queued_ns", 0),
                    QueuedRun(d, entry.get("queued_at", 0.0), entry.get("planned_steps"), entry.get("config") or {}),
                )
            )
    return [q for _, q in sorted(out, key=lambda x: (x[0], x[1].name))]


@contextmanager
def _dispatch_lock(wait: float = 30.0):
    path = runs_dir() / DISPATCH_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(
                        "The training queue is locked by another process for too long.",
                        f"If nothing is starting a run, remove {path}.",
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def dispatch() -> Path | None:
    """Start the oldest queued run if the device is free; return its folder, or None."""
    reap()
    if not runs_dir().is_dir() or not waiting() or R.read_lock() is not None:
        return None  # the cheap answers for the common cases: nothing queued, or a training is running
    with _dispatch_lock():
        lock_fd = R.take_lock(wait=0.5)  # a page probing the lock at this instant must not skip a turn
        if lock_fd is None:
            return None
        try:
            for q in waiting():
                entry = R.read_marker(q.run_dir, R.QUEUE_FILE)
                if not entry:
                    continue  # cancelled meanwhile
                # launched.json first, then queued.json goes: a reader sees "queued" or "starting", never nothing,
                # and the run cannot be taken again (all of this under the queue lock).
                write_json_atomic(q.run_dir / R.LAUNCH_FILE, {**entry, "launching_at": time.time()})
                (q.run_dir / R.QUEUE_FILE).unlink()
                try:
                    proc = R.spawn(_cli_args(entry), q.run_dir, lock_fd)
                except OSError as e:
                    EventLog(q.run_dir).write(
                        "end",
                        status="failed",
                        error=f"Could not start the training process: {e}",
                        hint="Check disk space and the Python environment.",
                    )
                    continue
                _children.append(proc)
                write_json_atomic(q.run_dir / R.LAUNCH_FILE, {**entry, "pid": proc.pid, "launching_at": time.time()})
                return q.run_dir
            return None
        finally:
            os.close(lock_fd)  # the started run holds the lock through its own copy


def hand_over() -> None:
    """Called by `python -m lab train` as it ends, however it ends (bad input before the run began
    included): free the device and start the next queued run. A failure here must never turn a
    finished run into a failed one, so it is only printed (to the run's process.log)."""
    try:
        R.release_lock()
        R.drop_inherited_lock()
        started = dispatch()
        if started is not None:
            print(f"started the next queued run: {started.name}", file=sys.stderr, flush=True)
    except Exception as e:  # noqa: BLE001 - see docstring
        print(f"could not start the next queued run: {type(e).__name__}: {e}", file=sys.stderr, flush=True)


def reap() -> None:
    for p in list(_children):
        if p.poll() is not None:
            _children.remove(p)


def cancel(run_dir: Path) -> bool:
    """Take a queued run out of the line (its folder is removed: nothing ran). False when it has
    already started (stop it instead)."""
    with _dispatch_lock():
        if not (run_dir / R.QUEUE_FILE).is_file():
            return False
        shutil.rmtree(run_dir)
    return True


# --------------------------------------------------------------------------- estimates
def step_timings(history: list[R.RunStatus], like: dict | None = None, recent: int = 5) -> tuple[float | None, float]:
    """(seconds per step, start-up seconds) from the most recent runs that logged steps: those with
    the same model, precision, batch and length as `like` when there are any, else all of them.
    Start-up = from the process's start event to its first step (imports, load, tokenize)."""
    keys = ("model", "precision", "batch_size", "grad_accum", "max_length")
    timed = [s for s in history if s.last_log and s.last_log.get("step")]
    same = [s for s in timed if like and all(_config(s).get(k) == like.get(k) for k in keys)]
    sample = (same or timed)[:recent]
    if not sample:
        return None, 0.0
    per_step = statistics.median(s.last_log["elapsed"] / s.last_log["step"] for s in sample)
    startup = [_startup(s) for s in sample]
    return per_step, statistics.median([x for x in startup if x is not None] or [0.0])


def _config(s: R.RunStatus) -> dict:
    starts = [e for e in s.events if e["type"] == "start"]
    return (starts[-1].get("config") if starts else None) or {}


def _startup(s: R.RunStatus) -> float | None:
    times = {e["type"]: e["time"] for e in reversed(s.events) if e["type"] in ("start", "train_begin")}
    return times["train_begin"] - times["start"] if len(times) == 2 else None


def remaining_seconds(active: R.RunStatus, history: list[R.RunStatus], now: float | None = None) -> float | None:
    """Seconds until the running run ends: its own ETA (from its last logged step) less the time since
    that log; before its first step, its planned steps at recent runs' pace."""
    now = now or time.time()
    last = active.last_log
    if last and last.get("eta_seconds") is not None:
        return max(0.0, last["eta_seconds"] - (now - last["time"]))
    launch = R.read_marker(active.run_dir, R.LAUNCH_FILE)
    per_step, startup = step_timings(history, launch.get("config") or _config(active))
    steps = active.max_steps or launch.get("planned_steps")
    if per_step is None or not steps:
        return None
    begun = next((e["time"] for e in active.events if e["type"] == "start"), now)
    return max(0.0, startup - (now - begun)) + steps * per_step


_timed: dict[str, tuple[float, list[R.RunStatus]]] = {}


def timed_runs(ttl: float = 5.0) -> list[R.RunStatus]:
    """Runs that logged steps (the timings estimates go by), re-read at most every `ttl` seconds: a room
    of pages polling the queue every second or two must not re-read every run's event log each time."""
    key = str(runs_dir())
    hit = _timed.get(key)
    if hit is None or time.monotonic() - hit[0] > ttl:
        hit = (time.monotonic(), [s for s in R.list_runs() if s.logs])
        _timed[key] = hit
    return hit[1]


def queue_state(now: float | None = None) -> tuple[R.RunStatus | None, list[QueuedRun]]:
    """The running run and the queued ones with position, predicted duration and estimated start."""
    now = now or time.time()
    history = timed_runs()
    active = R.active_run()
    line = waiting()
    wait = remaining_seconds(active, history, now) if active is not None else 0.0
    for i, q in enumerate(line, start=1):
        q.position, q.starts_in = i, wait
        per_step, startup = step_timings(history, q.config)
        q.predicted_seconds = startup + q.planned_steps * per_step if per_step is not None and q.planned_steps else None
        wait = wait + q.predicted_seconds if wait is not None and q.predicted_seconds is not None else None
    return active, line


# --------------------------------------------------------------------------- the server's watcher
class QueueWatcher:
    """A daemon thread that calls dispatch() every `interval` seconds, so a queue whose running
    training died without handing over (killed, out of memory) moves on with no page open."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self.started = False
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lab-queue-watcher", daemon=True)

    def start(self) -> QueueWatcher:
        if not self.started:
            self.started = True
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                dispatch()
                self.last_error = None
            except Exception as e:  # noqa: BLE001 - keep watching; the instructor page shows the error
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("queue watcher: %s", self.last_error)
            self._stop.wait(self.interval)
