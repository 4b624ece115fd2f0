"""The run's event log (runs/<name>/events.jsonl): written by the run (lab.training.callback), read by pages.

One JSON object per line, appended and flushed as it happens, so a page (or `tail -f`) can
follow a run from another process and re-attach after a restart. Types:

  start       pid, name, config, command                  (the process is up)
  loaded      model load seconds, trainable parameters    (before the first step)
  train_begin max_steps, epochs
  log         step, epoch, loss, learning_rate, grad_norm, tokens, tokens_per_second,
              elapsed, eta_seconds, peak_memory_bytes
  eval        step, eval_loss
  checkpoint  step, path
  stop_requested  reason                                  (STOP file or SIGTERM/SIGINT seen)
  saved       adapter_dir
  end         status (finished | stopped | failed), error, hint, summary
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lab.errors import LabError
from lab.paths import RUN_FILE  # noqa: F401  (re-exported: the run folder's file names live together here)

EVENTS_FILE = "events.jsonl"
STOP_FILE = "STOP"
PROCESS_LOG = "process.log"


class EventLog:
    """Append-only JSONL writer. A failed write (disk full, folder removed) raises a LabError."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / EVENTS_FILE

    def write(self, type: str, **data) -> dict:
        event = {"type": type, "time": round(time.time(), 3), **data}
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(event, default=str) + "\n")
                f.flush()
        except OSError as e:
            raise LabError(f"Could not write the event log {self.path}: {e.strerror or e}.",
                           "Free disk space or check the runs folder's permissions; saved checkpoints are kept.") from e
        return event


def read_events(run_dir: Path) -> list[dict]:
    """Every complete event of a run. A half-written last line (the writer is mid-flush) is skipped."""
    reader = EventReader(run_dir)
    reader.poll()
    return reader.events


def _parse_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class EventReader:
    """Follows a run's events.jsonl the way `tail -f` does: `poll()` costs one stat() when nothing was
    appended, and otherwise reads and parses only the new bytes. A page polling a run every second or
    two asks it "anything new?" instead of re-reading the whole log.

    A line is taken only once its newline has arrived (the writer may be mid-flush); a file that
    shrank or was replaced (another inode) is read again from the start.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / EVENTS_FILE
        self.events: list[dict] = []
        self.version = 0  # +1 each time poll() finds new events
        self._offset = 0  # bytes consumed, up to the last complete line
        self._stamp: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) at the last read

    def poll(self) -> list[dict]:
        """The events appended since the last poll ([] when nothing changed)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return []
        if self._stamp is not None and (st.st_ino != self._stamp[0] or st.st_size < self._offset):
            self.events, self._offset = [], 0  # replaced or truncated: start over
        self._stamp = stamp
        if st.st_size == self._offset:
            return []
        with self.path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read(st.st_size - self._offset)
        complete = chunk.rfind(b"\n") + 1  # a partial last line waits for its newline
        if complete == 0:
            return []
        self._offset += complete
        new = _parse_lines(chunk[:complete].decode("utf-8", errors="replace"))
        if new:
            self.events.extend(new)
            self.version += 1
        return new


def request_stop(run_dir: Path, reason: str = "Stop pressed") -> None:
    """Ask a running training to finish its step, save and exit (read by lab.training.callback.StopAndLogCallback)."""
    (Path(run_dir) / STOP_FILE).write_text(reason)
