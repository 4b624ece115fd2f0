"""Submitting, stopping and deleting training runs; the line itself is lab.training.dispatch.

`submit()` checks a run as the server would start it (its config, model and dataset, the server's
per-request limits; in public mode, refused inputs fail now rather than in their turn), reserves its
folder under runs/ with its owner and `queued.json`, and dispatches. Stopping and deleting check who
may (lab.training.owners). The line's reading and estimates are re-exported from lab.training.dispatch,
so pages need one module for the queue.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

from lab import policy
from lab.data.datasets import check_dataset
from lab.environment import device_type
from lab.errors import LabError
from lab.files import write_json_atomic
from lab.models.sources import resolve_source
from lab.sharing.limits import RequestLimits
from lab.training import owners
from lab.training import runs as R
from lab.training.config import TrainConfig, planned_steps, run_dir_for, to_cli_args
from lab.training.dispatch import (  # noqa: F401  (re-exported: the queue's whole surface for pages and the CLI)
    QueuedRun,
    QueueWatcher,
    cancel,
    dispatch,
    hand_over,
    queue_state,
    remaining_seconds,
    step_timings,
    timed_runs,
    waiting,
)
from lab.training.events import request_stop


# --------------------------------------------------------------------------- submitting
def submit(cfg: TrainConfig, owner: str | None = None, name: str | None = None) -> R.RunStatus:
    """Queue a run (its folder is created now, with its owner), and start it at once if the device
    is free. `owner`: the submitting session's token (see owners); `name`: a run name, else the
    lab's {base}-{dataset}_SFT_LoRa{r}_{PRECISION}-<timestamp>."""

    cfg.validate(device_type())
    source = resolve_source(
        cfg.model
    )  # a bad model or dataset (or, in public mode, a refused one) fails now, not in its turn
    rows = len(check_dataset(cfg.dataset, "train", "skip" if cfg.skip_bad_rows else "refuse").rows)
    # The server's per-request limits (QLORA_LAB_MAX_STEPS, ...): a queued run is bounded work too.
    RequestLimits.from_env().check_training(planned_steps(cfg, rows), cfg.batch_size, cfg.max_length)
    folder = policy.run_folder(policy.check_run_name(name)) if name else run_dir_for(replace(cfg, output=""), source)
    run_dir = R.make_run_dir(folder)
    if owner:
        owners.record_owner(run_dir, owner)
    entry = {
        "queued_at": time.time(),
        "queued_ns": time.time_ns(),
        "planned_steps": planned_steps(cfg, rows),
        "config": cfg.to_dict(),
        "args": to_cli_args(replace(cfg, output="")),
    }
    write_json_atomic(run_dir / R.QUEUE_FILE, entry)
    dispatch()
    return R.run_status(run_dir)


# --------------------------------------------------------------------------- stop and delete (owners decide who may)
def _check(run_dir: Path, token: str | None, admin: bool, verb: str) -> Path:
    run_dir = policy.run_folder(run_dir)  # a run of runs/, whatever the caller passed
    if not owners.can_control(run_dir, token, admin):
        raise LabError(
            f"Run {run_dir.name} belongs to another session: only the person who started it (or the "
            f"instructor) can {verb} it.",
            "Queue your own run instead; everyone sees every run's history.",
        )
    return run_dir


def stop_run(run_dir: Path, token: str | None, admin: bool = False) -> str:
    """Stop a running run (it finishes its step and saves), or take a queued one out of the line.
    Returns what happened: 'stopping' or 'cancelled'."""
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


