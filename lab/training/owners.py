"""Who may stop or delete a run: the session that started it.

A session (a browser tab of the app) gets a random owner token when it starts; a run it queues
records the token's SHA-256 in the run folder (`.owner`), never the token itself, and the token
is never shown to anyone. Stop and Delete compare in constant time.

- Public mode: only the owner (or the instructor, `admin=True`) may stop, cancel or delete a run;
  everyone sees every run's history and curves.
- Local mode (one person on a laptop): the check is relaxed. Whoever runs the lab owns every run,
  those from before a refresh, a restart or the CLI included; the owner is still recorded, so
  the page can still say "your run".
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shutil
from pathlib import Path

from lab import policy
from lab.errors import LabError
from lab.training import runs as R
from lab.training.events import request_stop

OWNER_FILE = ".owner"


def new_token() -> str:
    return secrets.token_urlsafe(24)


def token_hash(token: str) -> str:
    return hashlib.sha256(f"qlora-lab-owner:{token}".encode()).hexdigest()


def record_owner(run_dir: Path, token: str) -> None:
    path = Path(run_dir) / OWNER_FILE
    path.write_text(token_hash(token))
    os.chmod(path, 0o600)


def owns(run_dir: Path, token: str | None) -> bool:
    """Did the session holding `token` start this run?"""
    if not token:
        return False
    try:
        recorded = (Path(run_dir) / OWNER_FILE).read_text().strip()
    except OSError:
        return False
    return hmac.compare_digest(recorded, token_hash(token))


def can_control(run_dir: Path, token: str | None, admin: bool = False) -> bool:
    return admin or not policy.public_mode() or owns(run_dir, token)


def _check(run_dir: Path, token: str | None, admin: bool, verb: str) -> Path:
    run_dir = policy.run_folder(run_dir)  # a run of runs/, whatever the caller passed
    if not can_control(run_dir, token, admin):
        raise LabError(
            f"Run {run_dir.name} belongs to another session: only the person who started it (or the "
            f"instructor) can {verb} it.",
            "Queue your own run instead; everyone sees every run's history.",
        )
    return run_dir


def stop_run(run_dir: Path, token: str | None, admin: bool = False) -> str:
    """Stop a running run (it finishes its step and saves), or take a queued one out of the line.
    Returns what happened: 'stopping' or 'cancelled'."""
    from lab.training.queue import cancel

    run_dir = _check(run_dir, token, admin, "stop")
    status = R.run_status(run_dir)
    if status.queued and cancel(run_dir):
        return "cancelled"
    if not R.run_status(run_dir).active:
        raise LabError(f"Run {run_dir.name} is not running ({status.status}).")
    request_stop(run_dir, "Stop pressed" if not admin else "Stopped by the instructor")
    return "stopping"


def delete_run(run_dir: Path, token: str | None, admin: bool = False) -> None:
    """Remove a finished, stopped or failed run's folder (a queued one is cancelled)."""
    from lab.training.queue import cancel

    run_dir = _check(run_dir, token, admin, "delete")
    markers = (R.RUN_FILE, R.EVENTS_FILE, R.QUEUE_FILE, R.LAUNCH_FILE)
    if run_dir == policy.run_folder(".") or not any((run_dir / m).exists() for m in markers):
        raise LabError(f"{run_dir.name} is not a run folder.", "Pick a run from the history.")
    status = R.run_status(run_dir)
    if status.queued and cancel(run_dir):
        return
    if status.active:
        raise LabError(f"Run {run_dir.name} is {status.status}: stop it before deleting it.")
    shutil.rmtree(run_dir)
