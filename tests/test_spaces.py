"""Spaces as they really are: persistent storage (a temporary folder stands in for /data through
QLORA_LAB_DATA), the server's launch arguments (uploads in the iframe), preloading and the board
of connected sessions."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lab import paths
from lab.errors import LabError
from lab.serve.launch import streamlit_args
from lab.serve.preload import Preloader, parse_preload
from lab.serve.sessions import SessionBoard

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("QLORA_LAB_RUNS", "QLORA_LAB_CACHE", "QLORA_LAB_DATA", "SPACE_ID", "QLORA_LAB_PUBLIC", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.mark.slow
def test_runs_and_caches_go_to_persistent_storage_when_it_exists(clean_env, tmp_path):
    assert paths.persistent_dir() is None  # no Space, no QLORA_LAB_DATA: the laptop defaults
    assert paths.runs_dir() == paths.REPO_ROOT / "runs" and paths.cache_dir() == paths.default_cache_dir()
    clean_env.setenv("SPACE_ID", "someone/qlora-lab")  # a Space without persistent storage (no /data here)
    assert paths.persistent_dir() is None and paths.runs_dir() == paths.REPO_ROOT / "runs"

    data = tmp_path / "data"
    data.mkdir()
    clean_env.setenv("QLORA_LAB_DATA", str(data))  # stands in for the Space's /data
    assert paths.runs_dir() == data / "qlora-lab" / "runs"
    assert paths.cache_dir() == data / "qlora-lab" / "cache"
    assert paths.uploads_dir() == data / "qlora-lab" / "runs" / "uploads"
    clean_env.setenv("QLORA_LAB_RUNS", str(tmp_path / "mine"))  # an explicit setting still wins
    assert paths.runs_dir() == tmp_path / "mine"
    # The Hub download cache follows, in a fresh process (huggingface_hub reads HF_HOME at import).
    env = {k: v for k, v in os.environ.items() if k != "HF_HOME"}
    out = subprocess.run(
        [sys.executable, "-c", "import lab, huggingface_hub.constants as c; print(c.HF_HOME)"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == str(data / "qlora-lab" / "huggingface")
    clean_env.setenv("QLORA_LAB_DATA", str(tmp_path / "missing"))
    assert paths.persistent_dir() is None


def test_the_images_embedded_model_is_reused_from_persistent_storage(clean_env, tmp_path, embedded_dir):
    from lab.models.sources import embedded_model_dir, embedded_model_ready

    assert embedded_dir.parent.parent == paths.default_cache_dir()  # prepared where the image builds it
    clean_env.setenv("QLORA_LAB_DATA", str(tmp_path))
    assert embedded_model_ready() and embedded_model_dir() == embedded_dir  # no second conversion into /data


def test_launch_arguments_for_a_space_and_for_a_laptop():
    laptop = streamlit_args({})
    assert not any("enableXsrfProtection" in a or "maxUploadSize" in a for a in laptop)
    space = streamlit_args({"SPACE_ID": "someone/qlora-lab", "QLORA_LAB_MAX_UPLOAD_MB": "50"})
    assert "--server.enableXsrfProtection=false" in space and "--server.maxUploadSize=50" in space
    # the option names are Streamlit's own (1.67): an unknown one would make `streamlit run` refuse to start
    from streamlit import config

    for arg in space[2:]:
        assert arg.removeprefix("--").split("=")[0] in config._config_options_template, arg


def test_preload_parses_and_loads_in_the_background():
    assert [(i.spec, i.precision) for i in parse_preload("embedded@fp32, embedded@NF4,Qwen/Qwen2.5-0.5B")] == [
        ("embedded", "fp32"),
        ("embedded", "nf4"),
        ("Qwen/Qwen2.5-0.5B", "fp32"),
    ]
    with pytest.raises(LabError, match="precision in QLORA_LAB_PRELOAD entry 'embedded@q3'"):
        parse_preload("embedded@q3")
    gate, loaded = threading.Event(), []

    def load(spec, precision):
        gate.wait(300)
        if spec == "broken":
            raise LabError("Model 'broken' is neither an existing folder…")
        loaded.append((spec, precision))

    p = Preloader(parse_preload("a@fp32,broken@nf4,b@int8"), load).start()
    assert p.items[0].status == "loading" or p.items[0].status == "waiting"
    assert not p.done  # the app's first run is not held up: loading goes on in the thread
    gate.set()
    p.wait(180)
    assert p.done and loaded == [("a", "fp32"), ("b", "int8")]
    assert [i.status for i in p.items] == ["ready", "failed", "ready"] and "broken" in p.items[1].error


def test_the_session_board_forgets_closed_sessions():
    board = SessionBoard()
    board.touch("s1", "Training", "queued run x (1st in line)")
    board.touch("s2", "Playground")
    board.touch("s1", "Training")  # a rerun keeps what it was doing
    alive = {"s1"}
    snap = board.snapshot(lambda s: s in alive)
    assert [(a.session, a.page, a.doing) for a in snap] == [("s1", "Training", "queued run x (1st in line)")]
    assert board.snapshot() == snap  # s2 is gone for good


def test_the_admin_token_is_checked_whole():
    from lab.serve.admin import admin_enabled, check_admin_token, weak_token

    env = {"QLORA_LAB_ADMIN_TOKEN": "correct-horse-battery-staple"}
    assert admin_enabled(env) and not admin_enabled({}) and not admin_enabled({"QLORA_LAB_ADMIN_TOKEN": " "})
    assert check_admin_token("correct-horse-battery-staple", env)
    assert (
        not check_admin_token("correct-horse", env)
        and not check_admin_token("", env)
        and not check_admin_token(None, env)
    )
    assert not check_admin_token("anything", {})  # no token set: nobody is the instructor
    assert weak_token({"QLORA_LAB_ADMIN_TOKEN": "1234"}) and not weak_token(env)
