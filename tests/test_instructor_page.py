"""The instructor's page under AppTest: closed without the token, then the sessions, the training
queue (a queued run taken out of the line), loaded models with their bytes (one freed), the limits."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lab.training import runs as R
from lab.training.config import default_config

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "instructor.py")
TOKEN = "a-long-instructor-token-for-tests"


@pytest.mark.slow
def test_the_instructor_page_opens_with_the_token_and_controls_the_room(fresh_server, tiny_model_dir, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv("QLORA_LAB_RUNS", str(tmp_path))
    monkeypatch.setenv("QLORA_LAB_ADMIN_TOKEN", TOKEN)
    queued = tmp_path / "someones-run"
    queued.mkdir()
    c = replace(default_config("cpu"), model=str(tiny_model_dir), max_steps=3)
    (queued / R.QUEUE_FILE).write_text(
        json.dumps({"queued_at": 1.0, "queued_ns": 1, "planned_steps": 3, "config": c.to_dict(), "args": []})
    )
    from pages._ui import model_registry

    model_registry().get(str(tiny_model_dir), "fp32")

    at = AppTest.from_file(PAGE, default_timeout=180).run()
    assert not at.exception and not at.metric  # nothing shown before the token
    at.text_input[0].set_value("wrong-token")
    at.button[0].click().run()
    assert any("not the instructor's token" in e.value for e in at.error) and not at.metric
    at.text_input[0].set_value(TOKEN)
    at.button[0].click().run()
    assert not at.exception
    assert at.metric[0].label == "Connected sessions"
    frames = [f.value for f in at.dataframe]
    queue = next(f for f in frames if "run" in f.columns)
    assert list(queue["run"]) == ["someones-run"] and list(queue["#"]) == [1]
    models = next(f for f in frames if "model" in f.columns)
    assert list(models["model"]) == [str(tiny_model_dir)] and list(models["precision"]) == ["fp32"]
    limits = next(f for f in frames if "limit" in f.columns)
    assert {"QLORA_LAB_MAX_PARAMS", "QLORA_LAB_MAX_NEW_TOKENS"} <= set(limits["set with"])  # both kinds of limit

    unqueue = next(b for b in at.button if b.label == "Take out of the queue")
    unqueue.click().run()
    assert not queued.exists()  # the instructor may take anyone's run out of the line
    lease = model_registry().acquire(str(tiny_model_dir), "fp32", owner="someone")  # held: Free leaves it
    next(b for b in at.button if b.label == "Free").click().run()
    assert len(model_registry().loaded()) == 1
    # said where the button is, not in a toast lost to the rerun (issue 20, bug 5)
    assert any("is in use (held by 1 session(s)" in w.value for w in at.warning), [w.value for w in at.warning]
    lease.release()
    next(b for b in at.button if b.label == "Free").click().run()
    assert model_registry().loaded() == []
    assert any("Freed" in m.value for m in at.success)
    assert list(limits.loc[limits["limit"] == "max_upload_bytes", "value"]) == ["20.00 MB"]  # not 20000000
    assert list(limits.loc[limits["limit"] == "hub_allow", "value"]) == ["none"]  # not ()
    assert any("No model is loaded" in c.value for c in at.caption)


def test_a_signed_in_instructor_stays_signed_in_after_a_refresh(monkeypatch):
    """Issue 20, papercut 9: the browser keeps a digest of the token (a cookie), not the token, and a new session
    of that browser opens the page without typing it again; a wrong or stale digest does not."""
    import pages._cookies as ui
    from lab.serve.admin import admin_digest

    monkeypatch.setenv("QLORA_LAB_ADMIN_TOKEN", TOKEN)
    digest = admin_digest()
    assert digest and TOKEN not in digest
    monkeypatch.setattr(ui, "read_cookie", lambda name: digest if name == ui.ADMIN_COOKIE else None)
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception and at.metric and at.metric[0].label == "Connected sessions"
    monkeypatch.setattr(ui, "read_cookie", lambda name: "0" * 64 if name == ui.ADMIN_COOKIE else None)
    assert not AppTest.from_file(PAGE, default_timeout=60).run().metric
    monkeypatch.setenv("QLORA_LAB_ADMIN_TOKEN", TOKEN + "-rotated")  # a new token signs the old browser out
    monkeypatch.setattr(ui, "read_cookie", lambda name: digest if name == ui.ADMIN_COOKIE else None)
    assert not AppTest.from_file(PAGE, default_timeout=60).run().metric
