"""The training queue on disk: one run at a time, the next started by the finishing run itself (no
dispatcher in this process), by a fresh process after a "restart", never twice under racing
dispatchers; positions and estimated starts; and who may stop or delete a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from lab.errors import LabError
from lab.training import owners
from lab.training import queue as Q
from lab.training import runs as R
from lab.training.config import default_config, to_cli_args
from lab.training.events import EventLog, request_stop
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
QUICK = dict(dataset="style", max_steps=2, batch_size=2, max_length=64, eval_steps=0, save_steps=100, logging_steps=1)


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "runs"
    monkeypatch.setenv("QLORA_LAB_RUNS", str(root))
    monkeypatch.delenv("QLORA_LAB_PUBLIC", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    return root


def cfg(tiny_model_dir, **kw):
    return default_config("cpu", model=str(tiny_model_dir), **{**QUICK, **kw})


def queued_by_hand(
    runs: Path, name: str, steps: int = 10, at_ns: int = 0, model: str = "m", args: list | None = None
) -> Path:
    """A queue entry written the way submit() writes it, without starting anything."""
    d = runs / name
    d.mkdir(parents=True)
    c = replace(default_config("cpu"), model=model, max_steps=steps)
    (d / R.QUEUE_FILE).write_text(
        json.dumps(
            {
                "queued_at": at_ns / 1e9,
                "queued_ns": at_ns,
                "planned_steps": steps,
                "config": c.to_dict(),
                "args": args or [],
            }
        )
    )
    return d


# --------------------------------------------------------------------------- the lock
@pytest.mark.slow
def test_the_lock_is_held_for_a_process_life_and_reports_its_holder(runs):
    assert R.read_lock() is None and R.lock_free()
    R.acquire_lock(runs / "mine")
    try:
        holder = R.read_lock()
        assert holder["run_dir"] == str(runs / "mine")
        assert R.take_lock(wait=0) is None  # nobody else gets it, this process included
        with pytest.raises(LabError, match="Another training is running: mine"):
            R.start_training([], runs / "other")
        assert not (runs / "other").exists()
    finally:
        R.release_lock()
    assert R.read_lock() is None
    # a process that dies holding it (no chance to release) leaves it free
    code = (
        "import os; from lab.training import runs as R; from pathlib import Path; "
        "R.acquire_lock(Path(os.environ['QLORA_LAB_RUNS']) / 'doomed'); os._exit(9)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 9
    assert R.read_lock() is None


# --------------------------------------------------------------------------- the queue, for real
@pytest.mark.training
def test_a_second_run_queues_then_starts_when_the_first_ends(tiny_model_dir, runs):
    first = Q.submit(cfg(tiny_model_dir, max_steps=2), owner="alice", name="first")
    second = Q.submit(cfg(tiny_model_dir, max_steps=1), owner="bob", name="second")
    assert first.status in ("starting", "running") and second.status == "queued", (first.status, first.error)
    active, line = Q.queue_state()
    assert active.run_dir == runs / "first" and [q.name for q in line] == ["second"] and line[0].position == 1
    assert line[0].planned_steps == 1
    # Nothing in this process dispatches from here on: the first run's process starts the second as it ends.
    wait_for(lambda: R.run_status(runs / "second").status in ("finished", "failed"))
    assert R.run_status(runs / "first").status == "finished", (runs / "first" / "process.log").read_text()
    s2 = R.run_status(runs / "second")
    assert s2.status == "finished", (runs / "second" / "process.log").read_text()
    assert "started the next queued run: second" in (runs / "first" / "process.log").read_text()
    first_end = R.run_status(runs / "first").end["time"]
    assert s2.events[0]["type"] == "start" and s2.events[0]["time"] >= first_end  # one at a time
    assert Q.waiting() == []
    wait_for(
        lambda: R.read_lock() is None, timeout=300
    )  # the process exits (and frees the device) just after its end event
    assert {s.name for s in R.list_runs()} == {"first", "second"}  # the history, for everyone


@pytest.mark.training
def test_a_restarted_server_picks_the_queue_up(tiny_model_dir, runs):
    fd = R.take_lock()  # "a training is running" while the run is queued
    try:
        assert Q.submit(cfg(tiny_model_dir, max_steps=1), name="after-restart").status == "queued"
        assert Q.dispatch() is None  # busy: nothing starts
    finally:
        os.close(fd)
    # a new process (the next server's watcher) finds the queue on disk and starts it
    p = subprocess.run(
        [sys.executable, "-c", "from lab.training.dispatch import dispatch; print(dispatch())"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0 and p.stdout.strip().endswith("after-restart"), p.stderr
    wait_for(lambda: R.run_status(runs / "after-restart").status in ("finished", "failed"))
    assert R.run_status(runs / "after-restart").status == "finished", (
        runs / "after-restart" / "process.log"
    ).read_text()


@pytest.mark.training
def test_racing_dispatchers_start_one_run_once(tiny_model_dir, runs):
    """Four processes call dispatch() at once over two queued runs: exactly one run starts, once."""
    long = to_cli_args(replace(cfg(tiny_model_dir, max_steps=500), output=""))
    queued_by_hand(runs, "a", at_ns=1, args=long)
    queued_by_hand(runs, "b", at_ns=2, args=long)
    code = "from lab.training.dispatch import dispatch; r = dispatch(); print(r.name if r else '-')"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(4)
    ]
    outs = [p.communicate(timeout=600)[0].strip() for p in procs]
    try:
        assert [o for o in outs if o != "-"] == ["a"], outs
        assert (runs / "a" / R.LAUNCH_FILE).is_file() and not (runs / "a" / R.QUEUE_FILE).exists()
        assert R.run_status(runs / "b").status == "queued"  # still waiting its turn
        assert Q.cancel(runs / "b") and not (runs / "b").exists()
    finally:
        request_stop(runs / "a")
        wait_for(lambda: not R.run_status(runs / "a").active)
    assert R.run_status(runs / "a").status == "stopped"


# --------------------------------------------------------------------------- estimates
def finished_run(runs: Path, name: str, steps: int, seconds_per_step: float, startup: float, model: str = "m") -> None:
    d = runs / name
    d.mkdir(parents=True)
    log = EventLog(d)
    c = replace(default_config("cpu"), model=model).to_dict()
    t0 = 1000.0
    lines = [
        {"type": "start", "time": t0, "pid": 0, "config": c},
        {"type": "train_begin", "time": t0 + startup, "max_steps": steps},
    ]
    lines += [
        {
            "type": "log",
            "time": t0 + startup + s * seconds_per_step,
            "step": s,
            "max_steps": steps,
            "loss": 1.0,
            "elapsed": s * seconds_per_step,
            "eta_seconds": (steps - s) * seconds_per_step,
        }
        for s in range(1, steps + 1)
    ]
    lines.append({"type": "end", "time": t0 + startup + steps * seconds_per_step, "status": "finished"})
    log.path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_positions_and_estimated_starts_from_recent_seconds_per_step(runs):
    finished_run(runs, "old", steps=10, seconds_per_step=2.0, startup=5.0)
    queued_by_hand(runs, "q1", steps=10, at_ns=1)
    queued_by_hand(runs, "q2", steps=4, at_ns=2)
    active, line = Q.queue_state()
    assert active is None and [(q.name, q.position) for q in line] == [("q1", 1), ("q2", 2)]
    assert line[0].starts_in == 0.0 and line[0].predicted_seconds == pytest.approx(5.0 + 10 * 2.0)
    assert line[1].starts_in == pytest.approx(25.0) and line[1].predicted_seconds == pytest.approx(5.0 + 4 * 2.0)
    # runs of the same model and settings are preferred over others
    finished_run(runs, "other-model", steps=10, seconds_per_step=9.0, startup=1.0, model="big")
    per_step, _ = Q.step_timings(
        [s for s in R.list_runs() if s.logs], replace(default_config("cpu"), model="m").to_dict()
    )
    assert per_step == pytest.approx(2.0)
    # a running run's remaining time is its own ETA less the time since that log
    running = R.run_status(runs / "old")
    last = running.last_log
    assert Q.remaining_seconds(running, [], now=last["time"] + 1.0) == pytest.approx(0.0)
    mid = replace(running, events=[e for e in running.events if e["type"] != "end" and e.get("step", 0) <= 4])
    assert Q.remaining_seconds(mid, [], now=mid.last_log["time"] + 3.0) == pytest.approx(6 * 2.0 - 3.0)


def test_a_run_over_the_servers_step_limit_is_refused_before_it_queues(tiny_model_dir, runs, monkeypatch):
    monkeypatch.setenv("QLORA_LAB_MAX_STEPS", "5")
    with pytest.raises(LabError, match=r"Max steps 6 is over this server's limit of 5 \(QLORA_LAB_MAX_STEPS\)"):
        Q.submit(cfg(tiny_model_dir, max_steps=6), name="too-long")
    with pytest.raises(LabError, match="Max steps .* over this server's limit"):  # epochs count as their steps
        Q.submit(cfg(tiny_model_dir, max_steps=-1, epochs=50.0), name="too-many-epochs")
    assert not (runs / "too-long").exists() and not (runs / "too-many-epochs").exists()


def test_a_bad_run_is_refused_before_it_queues(tiny_model_dir, runs, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a"}\n')
    with pytest.raises(LabError, match="No row has the fields of a known form"):
        Q.submit(cfg(tiny_model_dir, dataset=str(bad)), name="never")
    with pytest.raises(LabError, match="Run name 'a/b' is not allowed"):
        Q.submit(cfg(tiny_model_dir), name="a/b")
    assert not runs.exists() or not [p for p in runs.iterdir() if not p.name.startswith(".")]
    assert Q.planned_steps(cfg(tiny_model_dir, max_steps=-1, epochs=2.0, batch_size=4, grad_accum=2), rows=60) == 15


def test_no_history_means_no_estimate(runs):
    queued_by_hand(runs, "q1", at_ns=1)
    _, line = Q.queue_state()
    assert line[0].starts_in == 0.0 and line[0].predicted_seconds is None
    queued_by_hand(runs, "q2", at_ns=2)
    assert Q.queue_state()[1][1].starts_in is None


# --------------------------------------------------------------------------- ownership
def test_only_the_owner_or_the_instructor_controls_a_run_in_public_mode(runs, monkeypatch):
    d = queued_by_hand(runs, "alices-run", at_ns=1)
    owners.record_owner(d, "alice-token")
    assert "alice-token" not in (d / owners.OWNER_FILE).read_text()  # only a hash is stored
    done = runs / "alices-finished"
    finished_run(runs, "alices-finished", steps=2, seconds_per_step=1.0, startup=1.0)
    owners.record_owner(done, "alice-token")

    monkeypatch.setenv("QLORA_LAB_PUBLIC", "1")
    for act in (Q.stop_run, Q.delete_run):
        with pytest.raises(LabError, match="belongs to another session"):
            act(d, "bob-token")
        with pytest.raises(LabError, match="belongs to another session"):
            act(done, None)
    assert d.is_dir() and done.is_dir()
    assert owners.owns(d, "alice-token") and not owners.owns(d, "bob-token")
    assert Q.stop_run(d, "alice-token") == "cancelled" and not d.exists()  # a queued run leaves the line
    Q.delete_run(done, "bob-token", admin=True)  # the instructor may
    assert not done.exists()
    with pytest.raises(LabError, match="contains '..'"):
        Q.delete_run(Path("../outside"), "alice-token", admin=True)

    monkeypatch.setenv("QLORA_LAB_PUBLIC", "0")  # local mode: the single user controls every run
    e = queued_by_hand(runs, "cli-run", at_ns=2)
    assert owners.can_control(e, None)
    Q.delete_run(e, None)
    assert not e.exists()
