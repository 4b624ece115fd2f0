"""Who may stop or delete a run: the session that started it.

A session (a browser tab of the app) gets a random owner token when it starts; a run it queues
records the token's SHA-256 in the run folder (`.owner`), never the token itself, and the token
is never shown to anyone. Stop and Delete compare in constant time.

- Public mode: only the owner (or the instructor, `admin=True`) may stop, cancel or delete a run;
  everyone sees every run's history and curves.
- Local mode (one person on a laptop): the check is relaxed. Whoever runs the lab owns every run,
  those from before a refresh, a restart or the CLI included; the owner is still recorded, so
  the page can still say "your run".

This module holds identity only (the token, its hash, `owns`, `can_control`); stopping and deleting
a run, which also take it out of the queue, live in `lab.training.queue` (`stop_run`, `delete_run`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from lab import policy

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
