"""Run folders: the one-training-at-a-time lock, a run's real status, the history, and starting
`python -m lab train` as its own process.

A run's status comes from its files and its process, never from a UI's memory:
- queued.json and no events -> queued (waiting its turn: lab.training.queue);
- an `end` event in events.jsonl -> finished / stopped / failed (with the error);
- no end event and the process that wrote `start` is alive -> running (or stopping);
- no end event and that process is gone -> failed ("the process exited without an end event").
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import LabError
from lab.paths import REPO_ROOT, runs_dir
from lab.training.events import EVENTS_FILE, PROCESS_LOG, RUN_FILE, STOP_FILE, EventReader, read_events

LOCK_FILE = ".train.lock"
HOLDER_FILE = ".train.json"
QUEUE_FILE = "queued.json"  # in a run folder while it waits in the queue (see lab.training.queue)
LAUNCH_FILE = "launched.json"  # written when the queue starts it: the pid, before its start event
LAUNCH_GRACE = 60.0  # seconds a run being launched reads as "starting" before its process is known


# --------------------------------------------------------------------------- processes
def pid_alive(pid: int | None, just_spawned: bool = False) -> bool:
    """Is `pid` a live process that is a lab training (guards against reused pids)? `just_spawned`: the
    process was started moments ago and may not have exec'd `python -m lab train` yet (between fork and
    exec its command line is its parent's), so any live process with that pid counts."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, session, tty, tpgid, flags
    return is_training_process(fields[0], int(fields[6]), cmdline, just_spawned)


PF_KTHREAD = 0x00200000  # /proc/PID/stat's flags: a kernel thread (linux/sched.h)


def is_training_process(state: str, flags: int, cmdline: bytes, just_spawned: bool = False) -> bool:
    """`pid_alive`'s verdict on a live pid from /proc: its state, flags and command line.

    An empty command line is a process in the middle of exec'ing: Popen returns once the child has begun its
    exec, which can be before the kernel has set up the new program's arguments (14 of 600 spawns here read
    empty, and a run that had just started read as crashed). Only a kernel thread has none for good."""
    if state == "Z":  # a zombie has exited; its parent has not reaped it
        return False
    if not cmdline:
        return not flags & PF_KTHREAD
    text = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return just_spawned or ("lab" in text and "train" in text)


# --------------------------------------------------------------------------- lock
# One training per server. The lock is an flock on runs/.train.lock held by the training process for
# its whole life: the kernel drops it when the process ends, however it ends (a SIGKILL or an OOM kill
# included), so a lock can never go stale. A run started from the queue is handed the lock already
# taken: the starter takes it, and the child inherits the open file (pass_fds) and names it in
# QLORA_LAB_TRAIN_LOCK_FD, so no other run can slip in between the check and the start.
LOCK_FD_ENV = "QLORA_LAB_TRAIN_LOCK_FD"
_held: dict = {}  # this process's lock: {"fd": int}


def lock_path() -> Path:
    return runs_dir() / LOCK_FILE


def holder_path() -> Path:
    return runs_dir() / HOLDER_FILE


def _open_lock() -> int:
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _flock(fd: int, op: int) -> bool:
    """flock without blocking: True when taken, False when someone else holds it."""
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:  # a file system without flock (some network mounts)
        raise LabError(f"Cannot lock {lock_path()}: {e.strerror or e}.",
                       "Put runs/ on a local disk (QLORA_LAB_RUNS).") from e


def take_lock(wait: float = 1.0) -> int | None:
    """Take the training lock: an open file descriptor holding it, or None when a training holds it.
    Retries for `wait` seconds (a reader's brief shared probe must not read as a busy device)."""
    fd = _open_lock()
    deadline = time.monotonic() + wait
    while True:
        if _flock(fd, fcntl.LOCK_EX):
            return fd
        if time.monotonic() >= deadline:
            os.close(fd)
            return None
        time.sleep(0.05)


def lock_free() -> bool:
    if not lock_path().exists():
        return True
    fd = _open_lock()
    try:
        free = _flock(fd, fcntl.LOCK_SH)
        if free:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return free
    finally:
        os.close(fd)


def read_lock() -> dict | None:
    """Who holds the training lock ({pid, run_dir, started}), or None when no training holds it."""
    if lock_free():
        return None
    for _ in range(3):  # the holder file is replaced atomically; it may not be written yet
        try:
            data = json.loads(holder_path().read_text())
            if isinstance(data, dict):
                return data
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    return {"pid": None, "run_dir": "", "started": None}


def write_holder(run_dir: Path, pid: int) -> None:
    tmp = holder_path().with_name(f"{HOLDER_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": pid, "run_dir": str(run_dir), "started": time.time()}))
    os.replace(tmp, holder_path())


def _inherited_lock() -> int | None:
    """The lock fd a starter handed this process, if it really is the lock and really held."""
    text = os.environ.pop(LOCK_FD_ENV, "")
    if not text.isdigit():
        return None
    fd = int(text)
    try:
        st, lock = os.fstat(fd), os.stat(lock_path())
    except OSError:
        return None
    if (st.st_dev, st.st_ino) != (lock.st_dev, lock.st_ino) or not _flock(fd, fcntl.LOCK_EX):
        return None
    return fd


def drop_inherited_lock() -> None:
    """Close a lock handed over by a starter but never adopted (the run failed before acquire_lock),
    so the device is free for the next queued run."""
    fd = _inherited_lock()
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def check_free() -> None:
    """Refuse at once when another training holds the lock (lab.training.preflight: before the run loads its
    libraries). Only a check: the run takes the lock itself later (acquire_lock), which settles a race. A run
    its starter handed the lock to (LOCK_FD_ENV) holds it already."""
    if LOCK_FD_ENV in os.environ:
        return
    holder = read_lock()
    if holder is not None:
        raise busy_error(holder)


def busy_error(holder: dict) -> LabError:
    name = Path(holder.get("run_dir") or "?").name
    return LabError(f"Another training is running: {name} (pid {holder.get('pid')}).",
                    "One training at a time per server: queue this run from the Training page, wait for that one, or "
                    f"stop it (`touch {Path(holder.get('run_dir') or '.') / STOP_FILE}`).")


def acquire_lock(run_dir: Path, pid: int | None = None) -> None:
    """Take the server-wide training lock for `run_dir` (or adopt the one a starter handed over), or
    raise a LabError naming the busy run."""
    fd = _inherited_lock()
    if fd is None:
        fd = take_lock()
    if fd is None:
        raise busy_error(read_lock() or {})
    _held["fd"] = fd
    write_holder(Path(run_dir), pid or os.getpid())


def release_lock(pid: int | None = None) -> None:
    fd = _held.pop("fd", None)
    if fd is None:
        return
    try:
        holder = json.loads(holder_path().read_text())
        if holder.get("pid") == (pid or os.getpid()):
            holder_path().unlink(missing_ok=True)
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    fcntl.flock(fd, fcntl.LOCK_UN)  # releases it even if a forked child still has the file open
    os.close(fd)


# --------------------------------------------------------------------------- status
@dataclass
class RunStatus:
    """What a run folder says about its run."""

    run_dir: Path
    status: str  # queued | starting | running | stopping | finished | stopped | failed
    pid: int | None = None
    error: str | None = None
    hint: str | None = None
    step: int = 0
    max_steps: int = 0
    events: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def active(self) -> bool:
        return self.status in ("starting", "running", "stopping")

    @property
    def queued(self) -> bool:
        return self.status == "queued"

    @property
    def logs(self) -> list[dict]:
        return [e for e in self.events if e["type"] == "log"]

    @property
    def evals(self) -> list[dict]:
        return [e for e in self.events if e["type"] == "eval"]

    @property
    def last_log(self) -> dict | None:
        logs = self.logs
        return logs[-1] if logs else None

    @property
    def phase(self) -> str | None:
        """What the run is doing before and between its logged steps ("loading the base model…"), from
        its last `phase` event; None once it has ended."""
        if self.end is not None:
            return None
        phases = [e for e in self.events if e["type"] == "phase"]
        return phases[-1]["message"] if phases else None

    @property
    def end(self) -> dict | None:
        ends = [e for e in self.events if e["type"] == "end"]
        return ends[-1] if ends else None


def doing(s: RunStatus) -> str | None:
    """What an active run does that is not a training step, in words ("Evaluating on the test split", "Saving the
    adapter", "Loading …"): its last phase when nothing was logged since (a phase older than the last logged step
    is over)."""
    if not s.active:
        return None
    for e in reversed(s.events):
        if e["type"] == "log":
            return None
        if e["type"] == "phase":
            return e["message"]
    return None


def eta_seconds(s: RunStatus, now: float | None = None) -> float | None:
    """Seconds left by the last logged step's estimate (lab.training.events), counted down since it was logged."""
    last = s.last_log
    if not last or last.get("eta_seconds") is None:
        return None
    now = now or time.time()
    # an event's time is written rounded to the millisecond: read within that, it can look up to 0.5 ms in the
    # future, and a countdown must not count up (test_status_words_between_steps_and_who_stopped: 30.000005 > 30)
    elapsed = max(0.0, now - last.get("time", now))
    return max(0.0, last["eta_seconds"] - elapsed)


def stop_reason(s: RunStatus) -> str | None:
    """Who or what stopped the run ("Stop pressed", "Stopped by the instructor"), from its stop_requested event."""
    reasons = [e.get("reason") for e in s.events if e["type"] == "stop_requested"]
    return reasons[-1] if reasons else None


def run_status(run_dir: Path, pid: int | None = None) -> RunStatus:
    """The real status of the run in `run_dir` (see the module docstring). `pid`: the process a
    caller just spawned, before it has written its start event."""
    run_dir = Path(run_dir)
    return status_from_events(run_dir, read_events(run_dir), pid)


def status_from_events(run_dir: Path, events: list[dict], pid: int | None = None) -> RunStatus:
    """`run_status` for events already read (by an EventReader)."""
    starts = [e for e in events if e["type"] == "start"]
    if not events and (run_dir / QUEUE_FILE).is_file():
        return RunStatus(run_dir, "queued")
    launch = read_marker(run_dir, LAUNCH_FILE)
    pid = starts[-1]["pid"] if starts else (pid or launch.get("pid"))
    s = RunStatus(run_dir, "starting", pid=pid, events=events)
    if not events and pid is None and time.time() - launch.get("launching_at", 0) < LAUNCH_GRACE:
        return s  # the queue is starting it this instant
    for e in events:
        if e["type"] == "train_begin":
            s.max_steps = e.get("max_steps") or 0
        elif e["type"] == "log":
            s.step, s.max_steps = e["step"], e.get("max_steps") or s.max_steps
    end = s.end
    if end is not None:
        s.status, s.error, s.hint = end["status"], end.get("error"), end.get("hint")
        return s
    just_spawned = not events and time.time() - launch.get("launching_at", 0) < LAUNCH_GRACE
    if pid_alive(pid, just_spawned):
        s.status = "stopping" if (run_dir / STOP_FILE).exists() else ("running" if starts else "starting")
        return s
    if not starts and pid is None and not events:
        s.status = "failed"
        s.error = "The run folder has no events: the training process never started."
        tail = process_log_tail(run_dir)
        s.error += f" Its output: {tail}" if tail else ""
        return s
    s.status = "failed"
    tail = process_log_tail(run_dir)
    s.error = ("The training process exited without writing an end event (killed, or out of memory?)."
               + (f" Last output: {tail}" if tail else ""))
    s.hint = "Checkpoints saved before the crash are kept in the run folder's checkpoints/."
    return s


class RunWatcher:
    """A run followed live: `poll()` answers "anything new?" cheaply, and `status` is the run's
    RunStatus as of the last poll.

    Each poll costs a stat() of the event log (only appended bytes are read, see EventReader), a
    liveness check of the process and a stat() of the STOP file. The status is rebuilt only when one
    of those changed, so a page can redraw only when there is something new to show.
    """

    def __init__(self, run_dir: Path, pid: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.pid = pid
        self.reader = EventReader(self.run_dir)
        self.status: RunStatus | None = None
        self.version = 0  # +1 whenever `status` changed
        self._liveness: tuple | None = None

    def poll(self) -> bool:
        """Refresh; True when there is something new (events, or the process state changed)."""
        new_events = self.reader.poll()
        if self.status is not None and self.status.end is not None and not new_events:
            return False  # finished runs do not change (no process to check)
        if not new_events and self.status is not None and self._liveness_now() == self._liveness:
            return False
        self.status = status_from_events(self.run_dir, list(self.reader.events), self.pid)
        self._liveness = self._liveness_now()
        self.version += 1
        return True

    def _liveness_now(self) -> tuple:
        pid = self.status.pid if self.status is not None else self.pid  # the start event's pid once there is one
        alive = (pid_alive(pid), (self.run_dir / STOP_FILE).exists())
        if self.reader.events:
            return alive
        # Before its first event a run is queued, then launched (its pid in launched.json), then starting for
        # LAUNCH_GRACE seconds: each of those changes the status too.
        launch = read_marker(self.run_dir, LAUNCH_FILE)
        return (*alive, (self.run_dir / QUEUE_FILE).exists(), launch.get("pid"),
                time.time() - launch.get("launching_at", 0) < LAUNCH_GRACE)


_WATCHERS: dict[Path, tuple[threading.Lock, RunWatcher]] = {}
_WATCHERS_LOCK = threading.Lock()


def watched_status(run_dir: Path, pid: int | None = None) -> RunStatus:
    """`run_status`, answered by this process's RunWatcher of the run: a run whose log and process did not
    change since the last look costs a few stat() calls instead of re-reading and parsing its whole log,
    however many pages (sessions, tabs) of this server look at it."""
    run_dir = Path(run_dir)
    with _WATCHERS_LOCK:
        entry = _WATCHERS.get(run_dir)
        if entry is not None and entry[1].reader.events and not (run_dir / EVENTS_FILE).exists():
            entry = None  # the folder was deleted (and maybe made again under the same name): a new run
        if entry is None:
            entry = _WATCHERS[run_dir] = (threading.Lock(), RunWatcher(run_dir, pid))
    lock, watcher = entry
    with lock:  # one poll at a time per run: the reader's offset is shared
        if watcher.pid is None and pid is not None:
            watcher.pid = pid
        watcher.poll()
        return watcher.status


def poll_interval(status: RunStatus | None, fastest: float = 2.0, slowest: float = 10.0,
                  stepping: float = 5.0) -> float | None:
    """Seconds between two looks at a run by a page that follows it.

    Every look that finds a new step costs the browser a redraw of the live panel and its loss chart (about
    150 ms of CPU on a 2-core machine), which a training on the same cores pays for, more than its share:
    a two-thread training step waits for its slower thread. So a page looks every `fastest` seconds while
    the model loads (the phases change), then about as often as the run logs but at most every `stepping`
    seconds (`benchmarks/bench_watching.py`: every 2 s cost a 16-step CPU run 14-25% of its throughput), up
    to every `slowest` seconds for slow steps; `slowest` too when no run is followed (to notice one started
    elsewhere); never for a run that has ended.
    """
    if status is None:
        return slowest
    if not status.active:
        return None
    logs = status.logs
    if not logs or not logs[-1].get("elapsed"):
        return fastest
    per_log = logs[-1]["elapsed"] / len(logs)
    return round(min(max(per_log, stepping), slowest), 1)


def interval_changed(current: float | None, wanted: float | None, factor: float = 1.5) -> bool:
    """Is `wanted` far enough from `current` to be worth switching to? (Switching costs a page rerun.)"""
    if current is None or wanted is None:
        return current != wanted
    return max(current, wanted) / min(current, wanted) >= factor


def shown_path(path: Path) -> str:
    """A run folder (or a file in it) as a page shows it: `runs/<name>/...` inside the runs folder, so a
    public server names no path of its own; the full path only for a folder elsewhere (a local CLI run
    with --output)."""
    try:
        return f"runs/{Path(path).resolve().relative_to(runs_dir().resolve()).as_posix()}"
    except ValueError:
        return str(path)


def process_log_tail(run_dir: Path, chars: int = 400) -> str:
    try:
        text = (Path(run_dir) / PROCESS_LOG).read_text(errors="replace").strip()
    except FileNotFoundError:
        return ""
    return text[-chars:]


def read_marker(run_dir: Path, name: str) -> dict:
    """A small JSON file of the run folder (queued.json, launched.json), or {}."""
    try:
        data = json.loads((Path(run_dir) / name).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def read_run_info(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / RUN_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def list_runs(root: Path | None = None) -> list[RunStatus]:
    """Every training run under the runs root (newest first): a folder that a run queued, launched or logged
    into. A folder with only an adapter and lab_run.json (an adapter pulled from the Hub, or the demo adapter
    an instructor copies in for a workshop) is an adapter for the Playground, not a run: shown here it read
    "failed: the training process never started" to every fresh Training tab."""
    root = root or runs_dir()
    if not root.is_dir():
        return []
    markers = (EVENTS_FILE, QUEUE_FILE, LAUNCH_FILE)
    dirs = [d for d in root.iterdir() if d.is_dir() and not d.is_symlink() and any((d / m).exists() for m in markers)]
    dirs.sort(key=lambda d: d.stat().st_mtime, reverse=True)
    return [watched_status(d) for d in dirs]


def active_run() -> RunStatus | None:
    """The run currently holding the lock (the one to re-attach to), if any."""
    lock = read_lock()
    if lock is None or not lock.get("run_dir"):
        return None
    return watched_status(Path(lock["run_dir"]), pid=lock["pid"])


# --------------------------------------------------------------------------- starting a run
def spawn(args: list[str], run_dir: Path, lock_fd: int) -> subprocess.Popen:
    """Start `python -m lab train ARGS --output RUN_DIR` as its own process (own session, so it
    outlives the page and the server), handing it the training lock `lock_fd` (see acquire_lock),
    with its output in runs/<name>/process.log."""
    run_dir = Path(run_dir)
    cmd = [sys.executable, "-m", "lab", "train", *args, "--output", str(run_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", LOCK_FD_ENV: str(lock_fd)}
    with (run_dir / PROCESS_LOG).open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, pass_fds=(lock_fd,))
    write_holder(run_dir, proc.pid)
    (run_dir / "command.txt").write_text(" ".join(cmd) + "\n")
    return proc


def make_run_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise LabError(
            f"Run folder {run_dir} already exists.", "Pick another name (names carry a timestamp)."
        ) from None
    except OSError as e:
        raise LabError(
            f"Could not create the run folder {run_dir}: {e.strerror or e}.", "Check disk space and permissions."
        ) from e
    return run_dir


def start_training(args: list[str], run_dir: Path) -> subprocess.Popen:
    """Start a run now, or raise a LabError when a training is running (the queue, in
    lab.training.queue, is how pages start runs; this is the immediate path it builds on)."""
    fd = take_lock()
    if fd is None:
        raise busy_error(read_lock() or {})
    try:
        return spawn(args, make_run_dir(run_dir), fd)
    finally:
        os.close(fd)  # the child holds the lock now (or nobody does, if the start failed)
