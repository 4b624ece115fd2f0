"""The Training page under AppTest with the tiny model: configure, start (a real `python -m lab
train` process), follow its events to the end, see it in the history; and the busy state."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lab.errors import LabError
from lab.training import owners
from lab.training import queue as Q
from lab.training import runs as R
from lab.training.config import default_config, page_precision
from lab.units import fmt_bytes
from lab.vocab import PRECISIONS
from tests.conftest import wait_for

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "training.py")


@pytest.mark.training
def test_page_trains_the_tiny_model_and_shows_history(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_LAB_RUNS", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=180).run()
    assert not at.exception
    assert any("No run yet" in c.value for c in at.caption)
    # every widget carries a tooltip
    assert all(w.help for w in [*at.number_input, *at.selectbox, *at.checkbox, *at.text_input])
    assert any("60 rows in Alpaca" in c.value for c in at.caption)  # dataset check of the default 'style'
    assert any("prompt +" in m.value and "answer tokens" in m.value for m in at.markdown)  # preview
    at.text_input(key="t_model").set_value(str(tiny_model_dir))
    at.number_input(key="t_steps").set_value(3)
    at.number_input(key="t_batch").set_value(2)
    at.number_input(key="t_maxlen").set_value(64)
    at.number_input(key="t_eval").set_value(2)
    at.run()
    assert any("--max-steps 3" in c.value for c in at.code)  # the exact command the page starts
    at.button[[b.label for b in at.button].index("Train")].click().run()
    assert not at.exception
    run_dir = Path(at.session_state["train_run_dir"])
    precision = page_precision().upper()  # the page's default here: a QLoRA base wherever bitsandbytes runs
    assert PRECISIONS[page_precision()].quantized
    assert at.button(key="t_train").disabled  # this tab's run is under way: no second click starts another
    phases = []
    assert run_dir.parent == tmp_path
    assert run_dir.name.startswith(f"{tiny_model_dir.name}-style_SFT_LoRa16_{precision}-")
    deadline = time.time() + 600
    while time.time() < deadline and R.run_status(run_dir).status in ("queued", "starting", "running", "stopping"):
        phases.append(R.run_status(run_dir).phase)
        time.sleep(1)
    assert R.run_status(run_dir).status == "finished", (run_dir / "process.log").read_text()
    said = [e["message"] for e in R.read_events(run_dir) if e["type"] == "phase"]  # what the live panel showed
    # between steps the run says what it does: the evals after steps 2 and 3 (the last), then saving
    assert [m.split()[0] for m in said] == ["Loading", "Adding", "Building", "Training:", "Evaluating", "Evaluating",
                                            "Saving", "Saving"], said  # the last checkpoint, then the adapter
    assert set(filter(None, phases)) <= set(said) and R.run_status(run_dir).phase is None  # none once it ended
    at.run()
    assert not at.exception
    assert any("FINISHED" in m.value for m in at.markdown), [m.value for m in at.markdown]
    assert at.button(key="t_train").label == "Train" and not at.button(key="t_train").disabled  # ended: back
    fresh = AppTest.from_file(PAGE, default_timeout=180).run()  # a new tab shows the newest run, not "No run yet"
    assert any("FINISHED" in m.value and run_dir.name in m.value for m in fresh.markdown)
    assert not any("None" in str(v) for v in fresh.dataframe[0].value.to_numpy().ravel())  # '—', never 'None'
    assert {"Train loss", "Eval loss", "Tokens/s", "Learning rate", "Peak memory"} <= {m.label for m in at.metric}
    info = json.loads((run_dir / "lab_run.json").read_text())
    assert info["status"] == "finished" and info["config"]["max_steps"] == 3
    # predicted beside measured, like for like (issue 18.6): the simulation's peak for the run's settings from the
    # start, and step 2 measured as tensor bytes (not RSS) with the simulation of that step's own shape beside it
    predicted, measured = info["prediction"], info["measured_peak"]
    assert predicted["peak_bytes"] > 0 and (predicted["batch_size"], predicted["max_length"]) == (2, 64)
    assert measured["step"] == 2 and measured["batch_size"] == 2 and 0 < measured["tokens"] <= 64
    assert "tensor bytes" in measured["counts"] and measured["measured_peak_bytes"] < info["summary"][
        "peak_memory_bytes"]  # tensors only: the process's RSS holds far more
    assert abs(measured["error_pct"]) <= 3.0, measured
    said = " ".join(c.value for c in at.caption)
    assert f"predicted {fmt_bytes(predicted['peak_bytes'])}" in said
    assert f"measured {fmt_bytes(measured['measured_peak_bytes'])}" in said
    assert "Peak memory above is the whole process" in said
    row = fresh.dataframe[0].value.iloc[0]
    assert row["step peak (predicted)"].startswith(fmt_bytes(measured["measured_peak_bytes"]))
    if "tokens_per_second" in predicted:  # recorded when its CPU probe ended before the run did
        assert f"(predicted {predicted['tokens_per_second']:,.0f})" in row["tokens/s (predicted)"]
    assert (run_dir / "adapter_model.safetensors").is_file()
    history = at.dataframe[0].value
    assert list(history["run"]) == [run_dir.name] and "finished" in history["status"][0]

    # the run folder carries its model card, and the history pushes it (tests are offline: a clear message)
    assert (run_dir / "README.md").is_file() and (run_dir / "loss.png").is_file()
    at.text_input(key="t_push_repo").set_value("me/tiny-style").run()
    at.button(key="t_push").click().run()
    # the push may end within the click's own run (offline: at once) or later: either way the page says so
    wait_for(lambda: at.run() and any("offline mode is on" in e.value for e in at.error), timeout=180)


@pytest.mark.slow
def test_memory_of_the_run_comes_from_the_simulation(tiny_model_dir, tmp_path, monkeypatch):
    """The memory expander simulates this run's step on fake tensors (off the script thread): its peak is the
    library's, labelled for people, and the formula beside it counts no CUDA context on a CPU."""
    from lab.estimate.explain import LABELS

    monkeypatch.setenv("QLORA_LAB_RUNS", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=180).run()
    at.text_input(key="t_model").set_value(str(tiny_model_dir)).run()
    at.button(key="t_simulate").click().run()
    deadline = time.time() + 600
    while "t_memory" not in at.session_state and time.time() < deadline:
        time.sleep(0.5)
        at.run()
    assert not at.exception
    device = at.session_state["t_memory"][1]  # a Simulation
    cfg = default_config(model=str(tiny_model_dir), precision=page_precision())
    sim = cfg.simulate_memory()
    assert device.peak_bytes == sim.peak_bytes
    peak = next(m for m in at.metric if m.label == "Simulated peak of one step")
    assert peak.value == fmt_bytes(sim.peak_bytes)
    shown = set(at.dataframe[0].value["what"])
    assert shown == {LABELS.get(k, k) for k, v in sim.by_category.items() if v} and not any("_" in w for w in shown)
    assert "cuda_context" not in default_config(model=str(tiny_model_dir)).memory_estimate("cpu").components


def test_the_page_says_when_max_length_or_repetition_defeats_the_run(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_LAB_RUNS", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=180).run()
    at.text_input(key="t_model").set_value(str(tiny_model_dir))
    at.number_input(key="t_maxlen").set_value(16).run()
    assert any("Max length 16 leaves no answer token" in e.value for e in at.error), [e.value for e in at.error]
    at.number_input(key="t_maxlen").set_value(256)
    at.number_input(key="t_steps").set_value(500).run()
    assert not at.error and any("times: it will memorise them" in w.value for w in at.warning)


def test_an_adapter_copied_into_runs_is_no_failed_run_on_a_fresh_tab(tmp_path, monkeypatch):
    """A workshop's demo adapter (adapter_config.json + lab_run.json, no events) in runs/: a fresh Training tab
    showed it as the current run, "FAILED: the training process never started" (bench_workshop counted it as
    every training's result). It is an adapter for the Playground, not a run of the history."""
    monkeypatch.setenv("QLORA_LAB_RUNS", str(tmp_path))
    demo = tmp_path / "workshop-demo"
    demo.mkdir()
    (demo / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (demo / "lab_run.json").write_text(json.dumps({"name": "workshop-demo", "base_model": {"spec": "embedded"}}))
    at = AppTest.from_file(PAGE, default_timeout=180).run()
    assert not at.exception and not at.error
    assert any("No run yet" in c.value for c in at.caption)
    assert R.list_runs() == []


def test_page_shows_the_launch_command_for_several_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_LAB_RUNS", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=180).run()
    at.number_input(key="t_nproc").set_value(4)
    at.selectbox(key="t_mode").set_value("fsdp")
    at.selectbox(key="t_target").set_value("cuda")
    at.run()
    assert not at.exception
    assert any(c.value.startswith("accelerate launch --use_fsdp --num_processes 4 ") and " -m lab train " in c.value
               for c in at.code), [c.value for c in at.code]
    at.selectbox(key="t_target").set_value("cpu").run()
    assert any("shards the base across CUDA GPUs" in e.value for e in at.error)


@pytest.mark.training
def test_a_second_run_queues_and_another_sessions_run_has_no_stop(tiny_model_dir, tmp_path, monkeypatch):
    """Public mode: while someone else's run trains, this session sees it without a Stop button, queues
    its own run (position and estimated start shown), and can cancel that one."""
    monkeypatch.setenv("QLORA_LAB_RUNS", str(tmp_path))
    monkeypatch.delenv("QLORA_LAB_PUBLIC", raising=False)
    cfg = default_config("cpu", model=str(tiny_model_dir), dataset="style", max_steps=500, batch_size=2, max_length=64,
                      eval_steps=0, save_steps=1000)
    theirs = Q.submit(cfg, owner="another-session", name="someone-elses-run").run_dir
    try:
        deadline = time.time() + 600
        while not R.run_status(theirs).logs and time.time() < deadline:
            time.sleep(0.5)
        monkeypatch.setenv("QLORA_LAB_PUBLIC", "1")
        at = AppTest.from_file(PAGE, default_timeout=180).run()
        assert not at.exception
        assert any("RUNNING" in m.value and "someone-elses-run" in m.value and "another session's run" in m.value
                   for m in at.markdown)
        assert "Stop" not in [b.label for b in at.button]  # not this session's run
        assert any("A training is running (`someone-elses-run`)" in i.value for i in at.info)
        at.number_input(key="t_steps").set_value(1)
        at.text_input(key="t_name").set_value("my-queued-run")
        at.run()
        at.button[[b.label for b in at.button].index("Queue this run")].click().run()
        assert not at.exception
        mine = tmp_path / "my-queued-run"
        assert Path(at.session_state["train_run_dir"]) == mine and R.run_status(mine).status == "queued"
        assert any("Your run `my-queued-run` is queued: 1st in line" in i.value for i in at.info)
        token = at.session_state["lab_owner_token"]
        assert owners.owns(mine, token) and not owners.owns(theirs, token)
        at.button[[b.label for b in at.button].index("Cancel my queued run")].click().run()
        assert not mine.exists() and R.run_status(theirs).status == "running"
        with pytest.raises(LabError, match="belongs to another session"):
            Q.stop_run(theirs, at.session_state["lab_owner_token"])
    finally:
        Q.stop_run(theirs, "another-session")
        deadline = time.time() + 600
        while R.run_status(theirs).active and time.time() < deadline:
            time.sleep(0.5)
    assert R.run_status(theirs).status == "stopped"


def _fake_run(run_dir: Path, pid: int, steps: int, max_steps: int, end: dict | None = None,
              stop_reason: str | None = None) -> Path:
    """A run folder as a training process writes it (events only): no training needed to read it."""
    from lab.training.events import EventLog

    run_dir.mkdir()
    log = EventLog(run_dir)
    log.write("start", pid=pid)
    log.write("train_begin", max_steps=max_steps)
    for step in range(1, steps + 1):
        log.write("log", step=step, max_steps=max_steps, loss=1.0 / step, learning_rate=1e-3, tokens_per_second=10.0,
                  eta_seconds=5.0, peak_memory_bytes=10**8)
    if stop_reason:
        log.write("stop_requested", step=steps, reason=stop_reason)
    if end:
        log.write("end", **end)
    return run_dir


def _running(monkeypatch, run_dir: Path) -> None:
    """The queue and the training lock both name `run_dir` as the running run (no real training needed)."""
    monkeypatch.setattr(Q, "queue_state", lambda now=None: (R.run_status(run_dir), []))
    monkeypatch.setattr(R, "active_run", lambda: R.run_status(run_dir))


def test_an_attendee_whose_run_the_instructor_stopped_is_told(tmp_path, monkeypatch, fake_training):
    """Issue 20, bug 4: the queue started someone else's run after the instructor stopped this session's: the
    panel follows the new run, and says, here, how this session's own run ended."""
    monkeypatch.setenv("QLORA_LAB_RUNS", str(tmp_path))
    mine = _fake_run(tmp_path / "my-run", 999_999_999, 3, 10, {"status": "stopped", "error": None, "hint": None},
                     stop_reason="Stopped by the instructor")
    theirs = _fake_run(tmp_path / "their-run", fake_training.pid, 1, 10)  # a live training: running
    _running(monkeypatch, theirs)
    at = AppTest.from_file(PAGE, default_timeout=90)
    at.session_state["train_run_dir"] = str(mine)
    at.run()
    assert not at.exception
    assert any("RUNNING" in m.value and "their-run" in m.value for m in at.markdown)
    assert any("Your run `my-run` was stopped at step 3 / 10 (Stopped by the instructor)" in w.value
               for w in at.warning), [w.value for w in at.warning]


def test_bad_base_model_and_run_name_are_said_as_typed_and_train_stays_off(tmp_path, monkeypatch):
    """Issue 20, papercut 8: each error next to its field as it is typed, and no Train click that must fail."""
    monkeypatch.setenv("QLORA_LAB_RUNS", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=90).run()
    assert not at.button(key="t_train").disabled and not at.error
    at.text_input(key="t_name").set_value("no/slashes").run()
    assert any("Run name 'no/slashes' is not allowed" in e.value for e in at.error)
    assert at.button(key="t_train").disabled
    at.text_input(key="t_name").set_value("fine-name")
    at.text_input(key="t_model").set_value(str(tmp_path / "no-such-model")).run()
    assert at.button(key="t_train").disabled and len(at.error) == 1, [e.value for e in at.error]
    at.text_input(key="t_model").set_value("embedded").run()
    assert not at.button(key="t_train").disabled and not at.error


def test_after_a_refresh_an_attendee_can_still_stop_their_own_run(tmp_path, monkeypatch, fake_training):
    """Issue 20, papercut 12: in public mode the owner token comes back from the browser's cookie, so a new session
    of the same browser (a refresh) still owns its run and sees its Stop button; another browser does not."""
    import pages._cookies as ui

    monkeypatch.setenv("QLORA_LAB_RUNS", str(tmp_path))
    monkeypatch.setenv("QLORA_LAB_PUBLIC", "1")
    token = owners.new_token()
    running = _fake_run(tmp_path / "my-run", fake_training.pid, 1, 10)
    owners.record_owner(running, token)
    _running(monkeypatch, running)
    monkeypatch.setattr(ui, "read_cookie", lambda name: token if name == ui.OWNER_COOKIE else None)
    at = AppTest.from_file(PAGE, default_timeout=90).run()  # a fresh session: nothing in session state
    assert not at.exception
    assert any("my-run" in m.value and "(your run)" in m.value for m in at.markdown)
    assert "Stop" in [b.label for b in at.button]
    monkeypatch.setattr(ui, "read_cookie", lambda name: None)  # another browser
    other = AppTest.from_file(PAGE, default_timeout=90).run()
    assert "Stop" not in [b.label for b in other.button]


def test_a_live_run_that_holds_no_lock_is_followed_without_rerunning_the_page_forever(tmp_path, monkeypatch,
                                                                                         fake_training):
    """A run whose process is alive but holds no training lock (a CLI run that has not taken it yet, or one started
    elsewhere) is the newest run of the history, so a fresh tab follows it. The page chose its poll interval from
    the lock holder (none: every 10 s) while the panel wanted its run's (every 5 s), found the interval "changed"
    and reran the page, again and again: the rest of the page never appeared (AppTest timed out)."""
    monkeypatch.setenv("QLORA_LAB_RUNS", str(tmp_path))
    _fake_run(tmp_path / "cli-run", fake_training.pid, 3, 10)
    assert R.active_run() is None and R.run_status(tmp_path / "cli-run").active
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert any("RUNNING" in m.value and "cli-run" in m.value for m in at.markdown)
    assert at.button(key="t_train")  # the page below the panel was drawn
