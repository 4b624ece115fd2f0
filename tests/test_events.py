"""Following a run's event log cheaply: EventReader reads only appended bytes, RunWatcher says when
there is something new (events, a stop request, a process that died)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lab.training import runs as R
from lab.training.events import EVENTS_FILE, STOP_FILE, EventLog, EventReader, read_events, request_stop
from tests.conftest import wait_for


def test_reader_returns_only_new_events(tmp_path):
    log, reader = EventLog(tmp_path), EventReader(tmp_path)
    assert reader.poll() == [] and reader.version == 0  # no file yet
    log.write("start", pid=1)
    log.write("log", step=1, loss=2.0)
    assert [e["type"] for e in reader.poll()] == ["start", "log"]
    assert reader.poll() == [] and reader.version == 1  # nothing appended: nothing new
    log.write("log", step=2, loss=1.5)
    new = reader.poll()
    assert [(e["type"], e["step"]) for e in new] == [("log", 2)]
    assert [e["type"] for e in reader.events] == ["start", "log", "log"] and reader.version == 2
    assert reader.events == read_events(tmp_path)


def test_reader_reads_appended_bytes_only(tmp_path):
    """Bytes before the consumed offset are not read again: an in-place edit there goes unseen."""
    log, reader = EventLog(tmp_path), EventReader(tmp_path)
    log.write("log", step=1, loss=2.0)
    reader.poll()
    path = tmp_path / EVENTS_FILE
    path.write_text(path.read_text().replace('"loss": 2.0', '"loss": 9.0'))  # same length, already consumed
    log.write("log", step=2, loss=1.0)
    assert [e["loss"] for e in reader.poll()] == [1.0]
    assert [e["loss"] for e in reader.events] == [2.0, 1.0]
    assert [e["loss"] for e in read_events(tmp_path)] == [9.0, 1.0]  # a fresh full read sees the edit


def test_half_written_line_waits_for_its_newline(tmp_path):
    reader = EventReader(tmp_path)
    path = tmp_path / EVENTS_FILE
    line = json.dumps({"type": "log", "step": 1}) + "\n"
    path.write_text(line[:10])
    assert reader.poll() == [] and read_events(tmp_path) == []
    with path.open("a") as f:
        f.write(line[10:])
    assert reader.poll() == [{"type": "log", "step": 1}]


def test_truncated_or_replaced_log_is_read_again(tmp_path):
    log, reader = EventLog(tmp_path), EventReader(tmp_path)
    for step in range(3):
        log.write("log", step=step)
    reader.poll()
    path = tmp_path / EVENTS_FILE
    path.unlink()
    EventLog(tmp_path).write("start", pid=7)  # a new run in the same folder
    assert [e["type"] for e in reader.poll()] == ["start"]
    assert [e["type"] for e in reader.events] == ["start"]


def test_watcher_reports_changes_only(tmp_path, fake_training):
    log = EventLog(tmp_path)
    log.write("start", pid=fake_training.pid)
    w = R.RunWatcher(tmp_path)
    assert w.poll() and w.status.status == "running" and w.status.pid == fake_training.pid
    assert not w.poll() and w.version == 1  # nothing new
    log.write("log", step=1, max_steps=4, loss=2.0)
    assert w.poll() and w.status.step == 1 and w.status.last_log["loss"] == 2.0
    assert not w.poll()
    request_stop(tmp_path)
    assert w.poll() and w.status.status == "stopping"
    (tmp_path / STOP_FILE).unlink()
    fake_training.kill()
    fake_training.wait()
    assert w.poll() and w.status.status == "failed"  # died without an end event
    assert w.status.status == R.run_status(tmp_path).status


def test_watcher_of_a_finished_run_stops_checking(tmp_path):
    log = EventLog(tmp_path)
    log.write("start", pid=999_999_999)
    log.write("end", status="finished")
    w = R.RunWatcher(tmp_path)
    assert w.poll() and w.status.status == "finished"
    for _ in range(3):
        assert not w.poll()
    assert w.version == 1


def test_poll_interval_follows_the_pace_of_the_run(tmp_path, fake_training):
    log = EventLog(tmp_path)
    log.write("start", pid=fake_training.pid)
    w = R.RunWatcher(tmp_path)
    w.poll()
    assert R.poll_interval(None) == 10.0  # nothing followed: only notice a run started elsewhere
    assert R.poll_interval(w.status) == 2.0  # loading: look often
    log.write("log", step=1, loss=2.0, elapsed=30.0)
    log.write("log", step=2, loss=1.9, elapsed=36.0)
    w.poll()
    assert R.poll_interval(w.status) == 10.0  # 18 s per log on average: capped at the slowest pace
    log.write("log", step=3, loss=1.8, elapsed=37.5)
    log.write("log", step=4, loss=1.7, elapsed=38.0)
    w.poll()
    assert R.poll_interval(w.status) == 9.5  # 38 s / 4 logs
    assert R.poll_interval(w.status, slowest=5.0) == 5.0
    for step in range(5, 40):  # quick steps (0.1 s each): no faster than one look per 5 s
        log.write("log", step=step, loss=1.0, elapsed=38.0 + 0.1 * (step - 4))
    w.poll()
    assert R.poll_interval(w.status) == 5.0
    assert R.poll_interval(w.status, stepping=2.0) == 2.0
    log.write("end", status="finished")
    w.poll()
    assert R.poll_interval(w.status) is None  # ended: nothing left to watch


def test_interval_changes_only_when_worth_a_rerun():
    assert R.interval_changed(2.0, None) and R.interval_changed(None, 2.0) and not R.interval_changed(None, None)
    assert not R.interval_changed(2.0, 2.9) and R.interval_changed(2.0, 3.0) and R.interval_changed(10.0, 2.0)


def test_a_run_launched_a_moment_ago_is_starting_before_its_process_execs(tmp_path):
    """Between fork and exec a new training process still has its parent's command line (a server's, a test
    runner's): a run the queue launched moments ago reads "starting", not "failed"; an old launch is judged
    by its command line again (a reused pid is not our run)."""
    import json
    import time

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # not `lab train`
    try:
        wait_for(lambda: Path(f"/proc/{other.pid}/cmdline").read_bytes())  # its exec has set its arguments
        assert not R.pid_alive(other.pid) and R.pid_alive(other.pid, just_spawned=True)
        (tmp_path / R.LAUNCH_FILE).write_text(json.dumps({"pid": other.pid, "launching_at": time.time()}))
        assert R.run_status(tmp_path).status == "starting"
        (tmp_path / R.LAUNCH_FILE).write_text(json.dumps({"pid": other.pid, "launching_at": time.time() - 3600}))
        assert R.run_status(tmp_path).status == "failed"
    finally:
        other.kill()
        other.wait()


def test_a_process_in_the_middle_of_its_exec_is_alive():
    """Popen returns once the child has begun its exec, which can be before the kernel has set up the new
    program's arguments: /proc/PID/cmdline then reads empty (14 of 600 spawns here). pid_alive took that for a pid
    reused by something else, and a run started a moment ago read as crashed (test_training's stop test failed
    so, and its process was killed). An empty command line is a process mid-exec; only a kernel thread keeps none,
    and a zombie has exited."""
    assert R.is_training_process("R", 0x400000, b"")  # mid-exec: what the failing spawn read
    assert not R.is_training_process("S", R.PF_KTHREAD, b"")  # a kernel thread that took a reused pid
    assert not R.is_training_process("Z", 0, b"")
    assert R.is_training_process("S", 0, b"/venv/bin/python\0-m\0lab\0train\0--model\0embedded\0")
    assert not R.is_training_process("S", 0, b"/usr/bin/python\0-m\0http.server\0")  # a pid reused by another
    assert R.is_training_process("S", 0, b"/usr/bin/python\0-m\0pytest\0", just_spawned=True)  # before its exec


def test_watched_status_follows_a_run_through_its_life_and_a_folder_made_again(tmp_path, fake_training):
    """The server-wide RunWatcher cache answers what run_status answers at every stage: queued, launched
    (starting), running, ended; and a folder deleted and made again under the same name is a new run."""
    import json
    import shutil
    import time

    run = tmp_path / "r"
    run.mkdir()
    (run / R.QUEUE_FILE).write_text("{}")
    assert R.watched_status(run).status == "queued" == R.run_status(run).status
    (run / R.QUEUE_FILE).unlink()
    (run / R.LAUNCH_FILE).write_text(json.dumps({"pid": fake_training.pid, "launching_at": time.time()}))
    assert R.watched_status(run).status == "starting" == R.run_status(run).status
    EventLog(run).write("start", pid=fake_training.pid)
    assert R.watched_status(run).status == "running" == R.run_status(run).status
    EventLog(run).write("end", status="finished")
    assert R.watched_status(run).status == "finished"
    shutil.rmtree(run)
    run.mkdir()
    (run / R.QUEUE_FILE).write_text("{}")
    assert R.watched_status(run).status == "queued"  # not the old run's "finished"


def test_pages_show_run_folders_under_runs_not_server_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_LAB_RUNS", str(tmp_path / "runs"))
    inside = tmp_path / "runs" / "my-run"
    assert R.shown_path(inside) == "runs/my-run"
    assert R.shown_path(inside / "merged") == "runs/my-run/merged"
    assert R.shown_path(tmp_path / "elsewhere") == str(tmp_path / "elsewhere")  # a local --output folder


def test_the_eta_leaves_evaluations_out_of_the_step_pace(tmp_path):
    """Issue 20, papercut 1: elapsed / steps counted each evaluation as step time, so the estimate grew after
    every one (91 s -> 207 s). The estimate is the steps left at the recent steps' pace plus the evaluations due."""
    from types import SimpleNamespace

    from lab.training.callback import StopAndLogCallback

    cb = StopAndLogCallback(None, tmp_path)
    args = SimpleNamespace(eval_strategy="steps", eval_steps=5)
    assert cb.eta(args, 0, 10) is None  # no step timed yet
    cb.step_seconds = [30.0, 2.0, 2.0, 2.0]  # the first step is slow (warm-up): left out once others exist
    cb.eval_seconds = 20.0
    assert cb.eta(args, 4, 10) == 6 * 2.0 + 2 * 20.0  # steps 5..10 left, evaluations at 5 and 10
    assert cb.eta(args, 5, 10) == 5 * 2.0 + 1 * 20.0  # the estimate shrinks across an evaluation
    assert cb.eta(SimpleNamespace(eval_strategy="no", eval_steps=None), 4, 10) == 12.0


def test_status_words_between_steps_and_who_stopped(tmp_path, fake_training):
    """What the page shows next to "step k / n": the run's last phase when no step was logged since it (evaluating,
    saving), nothing once a step logs again; and who stopped a run."""
    log = EventLog(tmp_path)
    log.write("start", pid=fake_training.pid)
    log.write("phase", message="Training: the first step is running")
    assert R.doing(R.run_status(tmp_path)) == "Training: the first step is running"
    log.write("log", step=5, max_steps=10, loss=1.0, eta_seconds=30.0)
    assert R.doing(R.run_status(tmp_path)) is None and R.eta_seconds(R.run_status(tmp_path)) <= 30.0
    log.write("phase", message="Evaluating the eval loss on the test split (after step 5)")
    assert R.doing(R.run_status(tmp_path)).startswith("Evaluating")
    log.write("log", step=6, max_steps=10, loss=0.9, eta_seconds=25.0)
    assert R.doing(R.run_status(tmp_path)) is None
    log.write("stop_requested", step=6, reason="Stopped by the instructor")
    log.write("end", status="stopped")
    s = R.run_status(tmp_path)
    assert s.status == "stopped" and R.stop_reason(s) == "Stopped by the instructor" and R.doing(s) is None


def test_history_rows_are_typed_from_the_run_record(tmp_path):
    from lab.training.history import cell, run_record, settings_table

    log = EventLog(tmp_path)
    log.write("start", pid=1)
    log.write("log", step=2, max_steps=2, loss=0.5)
    rec = run_record(R.run_status(tmp_path))  # no lab_run.json yet: the last logged loss, no other figure
    assert (rec.final_loss, rec.eval_loss, rec.precision, rec.r) == (0.5, None, None, None)
    (tmp_path / R.RUN_FILE).write_text(json.dumps({
        "precision": "nf4", "dataset": {"name": "style"}, "config": {"r": 8, "max_steps": 2},
        "summary": {"final_loss": 0.4, "final_eval_loss": 0.6, "tokens_per_second": 123.4},
        "durations": {"total_seconds": 42.0}}))
    rec = run_record(R.run_status(tmp_path))
    assert (rec.final_loss, rec.eval_loss, rec.precision, rec.dataset, rec.r, rec.seconds) == (
        0.4, 0.6, "nf4", "style", 8, 42.0)
    assert cell(None) == "—" and cell(rec.tokens_per_second, "{:.0f}") == "123"
    table = settings_table([rec])
    assert table["setting"][:2] == ["model", "dataset"] and table[rec.name][table["setting"].index("r")] == "8"


def test_the_record_carries_the_predicted_and_measured_step_peak(tmp_path):
    """lab_run.json's prediction (from the run's start) and measured step peak become typed fields; an older
    record without them has None there, never a recomputation."""
    from lab.training.history import run_record

    EventLog(tmp_path).write("start", pid=1)
    assert run_record(R.run_status(tmp_path)).memory.predicted_bytes is None
    (tmp_path / R.RUN_FILE).write_text(json.dumps({
        "prediction": {"peak_bytes": 3_000, "batch_size": 4, "max_length": 256, "tokens_per_second": 12.5},
        "measured_peak": {"measured_peak_bytes": 2_000, "counts": "live tensor bytes", "step": 2, "batch_size": 4,
                          "tokens": 100, "simulated_peak_bytes": 2_010, "error_pct": 0.5}}))
    rec = run_record(R.run_status(tmp_path))
    m = rec.memory
    assert rec.predicted_tokens_per_second == 12.5
    assert (m.predicted_bytes, m.max_length, m.measured_bytes, m.measured_tokens, m.simulated_bytes, m.error_pct) == (
        3_000, 256, 2_000, 100, 2_010, 0.5)
