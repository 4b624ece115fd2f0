"""A room on one server, in real browsers: three sessions (browser contexts) on a public-mode server
share one training device — the second run queues and then runs by itself, and no session can stop
another's run. And uploads inside a Space's iframe, where the browser drops Streamlit's XSRF cookie:
refused with a 403 under Streamlit's defaults, working with the arguments `lab serve` uses in a Space."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from lab.models.catalog import CATALOG_DIR
from lab.serve.launch import streamlit_args
from tests.browser import AppServer, assert_no_exception, free_port, open_page, requires_chromium, wait_idle

pytestmark = [requires_chromium, pytest.mark.browser]


def server(tmp_path, env: dict, extra_args: list[str] | None = None) -> AppServer:
    s = AppServer(free_port(), env={"QLORA_LAB_RUNS": str(tmp_path / "runs"), **env}, extra_args=extra_args)
    s.wait_healthy()
    return s


def set_field(page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Enter")
    wait_idle(page)


def training_page(browser, srv: AppServer):
    p = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    open_page(p, srv, "", wait_for_text="QLoRA Lab")  # through app.py (st.navigation) first
    open_page(p, srv, "training", wait_for_text="Configure a run")
    assert_no_exception(p)
    return p


def configure(page, steps: int) -> None:
    for label, value in (
        ("Max steps", str(steps)),
        ("Batch size", "1"),
        ("Max length (tokens)", "64"),
        ("Eval every (steps)", "0"),
    ):
        set_field(page, label, value)


def main_text(page) -> str:
    return page.locator('[data-testid="stMain"]').inner_text()


def tiny_as_embedded(tmp_path, tiny_model_dir) -> str:
    """A model cache whose 'embedded' model is the tiny random Llama: public mode accepts only 'embedded'
    (no folders), and the tiny model keeps each run to seconds."""
    import shutil

    from lab.models.catalog import EMBEDDED_NAME
    from lab.models.sources import _READY_MARKER

    cache = tmp_path / "cache"
    shutil.copytree(tiny_model_dir, cache / "models" / EMBEDDED_NAME)
    (cache / "models" / EMBEDDED_NAME / _READY_MARKER).write_text('{"name": "tiny stand-in"}')
    return str(cache)


def test_three_sessions_share_the_training_queue(browser, tmp_path, tiny_model_dir):
    srv = server(tmp_path, {"QLORA_LAB_PUBLIC": "1", "QLORA_LAB_CACHE": tiny_as_embedded(tmp_path, tiny_model_dir)})
    try:
        alice, bob, carol = (training_page(browser, srv) for _ in range(3))
        configure(alice, 2000)  # long enough to still be training while the others look
        alice.get_by_role("button", name="Train", exact=True).click()
        expect(alice.get_by_text("(your run)").first).to_be_visible(timeout=60_000)
        expect(alice.get_by_role("button", name="Stop", exact=True)).to_be_visible(timeout=60_000)

        configure(bob, 1)
        expect(bob.get_by_text("(another session's run)").first).to_be_visible(timeout=30_000)
        assert bob.get_by_role("button", name="Stop", exact=True).count() == 0  # not Bob's run: no Stop
        bob.get_by_role("button", name="Queue this run", exact=True).click()
        expect(bob.get_by_text("is queued: 1st in line").first).to_be_visible(timeout=30_000)
        bob_run = json.loads((tmp_path / "runs" / bob_queued_name(tmp_path) / "queued.json").read_text())
        assert bob_run["planned_steps"] == 1

        carol.reload()
        wait_idle(carol)
        expect(carol.get_by_text("(another session's run)").first).to_be_visible(timeout=30_000)
        expect(carol.get_by_text("Queue: 1.").first).to_be_visible(timeout=30_000)
        assert carol.get_by_role("button", name="Stop", exact=True).count() == 0
        assert carol.get_by_role("button", name="Cancel my queued run").count() == 0
        assert "Delete a run" not in main_text(carol)  # nothing of Carol's to delete

        alice.get_by_role("button", name="Stop", exact=True).click()  # the owner can
        # Alice's run stops; the queue starts Bob's by itself (no click anywhere); it trains and finishes.
        expect(bob.get_by_text(re.compile(r"FINISHED — \S+ \(your run\)"))).to_be_visible(timeout=300_000)
        carol.reload()
        wait_idle(carol)
        expect(carol.get_by_text("Run history").first).to_be_visible()
        history = carol.locator('[data-testid="stDataFrame"]').first
        expect(history).to_contain_text("stopped", timeout=30_000)
        expect(history).to_contain_text("finished")
        for p in (alice, bob, carol):
            assert_no_exception(p)
    finally:
        srv.stop()
    from lab.training.runs import run_status

    runs = sorted(
        (run_status(d) for d in (tmp_path / "runs").iterdir() if (d / "events.jsonl").is_file()),
        key=lambda r: r.events[0]["time"],
    )
    assert [r.status for r in runs] == ["stopped", "finished"]  # Alice's, then Bob's
    assert runs[1].events[0]["time"] >= runs[0].end["time"]  # one at a time: Bob's began after Alice's ended


def bob_queued_name(tmp_path) -> str:
    return next(d.name for d in (tmp_path / "runs").iterdir() if (d / "queued.json").is_file())


def upload_config(browser, srv: AppServer, config) -> tuple[list[int], str]:
    """Upload a config.json on the calculator with the XSRF cookie gone, as in a third-party iframe."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    p = context.new_page()
    open_page(p, srv, "", wait_for_text="QLoRA Lab")
    open_page(p, srv, "calculator?model=Upload+a+config.json%E2%80%A6", wait_for_text="Upload a model's config.json")
    # what a browser blocking third-party cookies does to _streamlit_xsrf inside the Space's iframe
    context.clear_cookies()
    responses = []
    p.on("response", lambda r: responses.append(r.status) if "/_stcore/upload_file" in r.url else None)
    p.locator('input[type="file"]').set_input_files(str(config))
    p.wait_for_timeout(500)
    wait_idle(p)
    try:
        p.get_by_text("494,032,768").or_(p.get_by_text("403")).first.wait_for(timeout=30_000)
    finally:
        text = main_text(p)
        context.close()
    return responses, text


def test_uploads_in_a_spaces_iframe_need_xsrf_off(browser, tmp_path):
    config = tmp_path / "config.json"
    config.write_bytes((CATALOG_DIR / "Qwen2.5-0.5B.json").read_bytes())
    default = server(tmp_path, {})
    try:
        refused = upload_config(browser, default, config)
    finally:
        default.stop()
    statuses, text = refused
    assert 403 in statuses and "494,032,768" not in text, (statuses, text[-500:])  # the failure attendees saw
    assert "AxiosError: Request failed with status code 403" in text

    space_env = {"SPACE_ID": "someone/qlora-lab"}
    args = [
        a
        for a in streamlit_args(space_env)[2:]
        if not a.startswith(("--server.port", "--server.address", "--server.headless"))
    ]
    space = server(tmp_path, space_env, extra_args=args)
    try:
        accepted = upload_config(browser, space, config)
    finally:
        space.stop()
    statuses, text = accepted
    assert statuses and 403 not in statuses and all(200 <= c < 300 for c in statuses), statuses
    assert "494,032,768" in text  # the uploaded config's parameters, read by the calculator


def test_an_uploaded_dataset_shows_no_server_path_in_public_mode(browser, tmp_path):
    """The command box names a visitor's upload by its file name, never by where the server keeps it."""
    from urllib.parse import quote

    data = tmp_path / "my-rows.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {i}.", "output": f"{i}"}) + "\n" for i in range(8)))
    srv = server(tmp_path, {"QLORA_LAB_PUBLIC": "1"})
    try:
        p = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        open_page(p, srv, "", wait_for_text="QLoRA Lab")
        open_page(p, srv, "training?t_dataset=" + quote("Upload a file…"), wait_for_text="Configure a run")
        p.locator('input[type="file"]').set_input_files(str(data))
        command = p.locator('[data-testid="stCode"]').filter(has_text="lab train --model").first
        expect(command).to_contain_text("--dataset '<your upload: my-rows.jsonl>'", timeout=30_000)
        assert str(tmp_path) not in main_text(p) and "uploads/" not in command.inner_text()
        assert_no_exception(p)
    finally:
        srv.stop()
