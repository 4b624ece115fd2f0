"""Run folders: the one-training-at-a-time lock, a run's real status, the history, and starting
`python -m lab train` as its own process.

A run's status comes from its files and its process, never from a UI's memory:
- an `end` event in events.jsonl -> finished / stopped / failed (with the error);
- no end event and the process that wrote `start` is alive -> running (or stopping);
- no end event and that process is gone -> failed ("the process exited without an end event").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import LabError
from lab.paths import REPO_ROOT, runs_dir
from lab.training.events import PROCESS_LOG, RUN_FILE, STOP_FILE, read_events

LOCK_FILE = ".train.lock"


# --------------------------------------------------------------------------- processes
def pid_alive(pid: int | None) -> bool:
    """Is `pid` a live process that is a lab training (guards against reused pids)?"""
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
        if stat.rsplit(")", 1)[1].split()[0] == "Z":  # a zombie has exited; its parent has not reaped it
            return False
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    return "lab" in cmdline and "train" in cmdline


# --------------------------------------------------------------------------- lock
def lock_path() -> Path:
    return runs_dir() / LOCK_FILE


def read_lock() -> dict | None:
    """The live lock's content ({pid, run_dir, started}), or None (absent or left by a dead process)."""
    try:
        data = json.loads(lock_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if pid_alive(data.get("pid")) else None


def acquire_lock(run_dir: Path, pid: int | None = None) -> None:
    """Take the server-wide training lock for `run_dir`, or raise a LabError naming the busy run."""
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps({"pid": pid or os.getpid(), "run_dir": str(run_dir), "started": time.time()})
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_lock()
            if holder is not None:
                raise LabError(f"Another training is running: {Path(holder['run_dir']).name} (pid {holder['pid']}).",
                               "One training at a time per server: wait for it to finish, or stop it on the Training page "
                               f"(or `touch {Path(holder['run_dir']) / STOP_FILE}`).") from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(data)
        return
    raise LabError(f"Could not take the training lock {path}.", "Remove it if no training is running.")


def release_lock(pid: int | None = None) -> None:
    try:
        data = json.loads(lock_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return
    if data.get("pid") == (pid or os.getpid()):
        lock_path().unlink(missing_ok=True)


# --------------------------------------------------------------------------- status
@dataclass
class RunStatus:
    """What a run folder says about its run."""

    run_dir: Path
    status: str  # starting | running | stopping | finished | stopped | failed
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
    def end(self) -> dict | None:
        ends = [e for e in self.events if e["type"] == "end"]
        return ends[-1] if ends else None


def run_status(run_dir: Path, pid: int | None = None) -> RunStatus:
    """The real status of the run in `run_dir` (see the module docstring). `pid`: the process a
    caller just spawned, before it has written its start event."""
    run_dir = Path(run_dir)
    events = read_events(run_dir)
    starts = [e for e in events if e["type"] == "start"]
    pid = starts[-1]["pid"] if starts else pid
    s = RunStatus(run_dir, "starting", pid=pid, events=events)
    for e in events:
        if e["type"] == "train_begin":
            s.max_steps = e.get("max_steps") or 0
        elif e["type"] == "log":
            s.step, s.max_steps = e["step"], e.get("max_steps") or s.max_steps
    end = s.end
    if end is not None:
        s.status, s.error, s.hint = end["status"], end.get("error"), end.get("hint")
        return s
    if pid_alive(pid):
        s.status = "stopping" if (run_dir / STOP_FILE).exists() else ("running" if starts else "starting")
        return s
    if not starts and pid is None and not events:
        s.status = "failed"
        s.error = "The run folder has no events: the training process never started."
        return s
    s.status = "failed"
    tail = process_log_tail(run_dir)
    s.error = ("The training process exited without writing an end event (killed, or out of memory?)."
               + (f" Last output: {tail}" if tail else ""))
    s.hint = "Checkpoints saved before the crash are kept in the run folder's checkpoints/."
    return s


def process_log_tail(run_dir: Path, chars: int = 400) -> str:
    try:
        text = (Path(run_dir) / PROCESS_LOG).read_text(errors="replace").strip()
    except FileNotFoundError:
        return ""
    return text[-chars:]


def read_run_info(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / RUN_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def list_runs(root: Path | None = None) -> list[RunStatus]:
    """Every run folder under the runs root (newest first)."""
    root = root or runs_dir()
    if not root.is_dir():
        return []
    dirs = [d for d in root.iterdir() if d.is_dir() and ((d / RUN_FILE).exists() or (d / "events.jsonl").exists())]
    dirs.sort(key=lambda d: d.stat().st_mtime, reverse=True)
    return [run_status(d) for d in dirs]


def active_run() -> RunStatus | None:
    """The run currently holding the lock (the one to re-attach to), if any."""
    lock = read_lock()
    if lock is None:
        return None
    return run_status(Path(lock["run_dir"]), pid=lock["pid"])


# --------------------------------------------------------------------------- starting a run
def start_training(args: list[str], run_dir: Path) -> subprocess.Popen:
    """Start `python -m lab train ARGS --output RUN_DIR` as its own process (own session, so it
    outlives the page and the server), with its output in runs/<name>/process.log."""
    holder = read_lock()
    if holder is not None:
        raise LabError(f"Another training is running: {Path(holder['run_dir']).name} (pid {holder['pid']}).",
                       "One training at a time per server: wait for it, or stop it first.")
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise LabError(f"Run folder {run_dir} already exists.", "Pick another name (names carry a timestamp).") from None
    except OSError as e:
        raise LabError(f"Could not create the run folder {run_dir}: {e.strerror or e}.", "Check disk space and permissions.") from e
    cmd = [sys.executable, "-m", "lab", "train", *args, "--output", str(run_dir)]
    log = (run_dir / PROCESS_LOG).open("w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    log.close()
    (run_dir / "command.txt").write_text(" ".join(cmd) + "\n")
    return proc
