"""Browser-test harness: a real `streamlit run app.py` server driven by Debian's Chromium.

`playwright install` cannot download browsers here, so Playwright drives Debian's Chromium through
`executable_path`: its headless shell where it is installed (`chromium-headless-shell`, the headless mode
Playwright itself runs: about 12% less CPU than the full browser over the workshop and shared-model tests,
76 -> 67 s), else the full browser. Tests that use these fixtures are skipped, with the reason, only
when Chromium is absent; CI installs both (see .ci/run).
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = (shutil.which("chromium-headless-shell") or shutil.which("chromium")
            or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
requires_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
# One patient timeout for every wait (Playwright's expect() defaults to 5 s, actions to 30 s): on a loaded
# 2-core CI machine a script rerun can take tens of seconds, and a long timeout costs nothing when a test passes.
TIMEOUT_MS = 180_000
MAIN = '[data-testid="stMain"]'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    def __init__(self, port: int, env: dict[str, str] | None = None, extra_args: list[str] | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = Path(os.environ.get("QLORA_LAB_RUNS", "/tmp")) / f"streamlit-{port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
               "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
               *(extra_args or [])]
        self._log = self.log_path.open("w")
        env = {**os.environ, "QLORA_LAB_QUEUE_WATCH": "1", **(env or {})}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_healthy(self, timeout: float = TIMEOUT_MS / 1000) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited early:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"streamlit not healthy after {timeout}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


@pytest.fixture(scope="session")
def app_server(tmp_path_factory) -> Iterator[AppServer]:
    """The one server every browser test shares unless its environment is what it tests (a server costs
    seconds of CPU to start). It knows it is offline (HF_HUB_OFFLINE) and has an empty Hub cache, so what it
    says about Hub ids is the same on any machine."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    server = start_server({"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path_factory.mktemp("hub"))})
    try:
        yield server
    finally:
        server.stop()


def start_server(env: dict[str, str] | None = None, extra_args: list[str] | None = None) -> AppServer:
    """A fresh server of its own (for a test that needs its own environment), healthy when returned."""
    server = AppServer(free_port(), env=env, extra_args=extra_args)
    try:
        server.wait_healthy()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def browser():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def new_page(browser):
    """A page in a browser context of its own (a separate session: its own cookies), with patient timeouts."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    page = context.new_page()
    # the app's own JavaScript failing (Streamlit's frontend crashed to a blank page once: pages/_stop.py)
    page.js_errors = []
    page.on("pageerror", lambda error: page.js_errors.append(str(error)))
    return page


@pytest.fixture
def page(browser):
    p = new_page(browser)
    yield p
    p.context.close()


def main(page):
    """The page's main block: what the app itself wrote. Locators scoped here never match Streamlit's own
    chrome (its header shows a "Stop" button while a script run is long; its sidebar lists the pages)."""
    return page.locator(MAIN)


def open_page(page, server: AppServer, path: str = "", wait_for_text: str | None = None,
              timeout: float = TIMEOUT_MS):
    """Open an app URL and wait until Streamlit has finished running the script."""
    page.goto(f"{server.url}/{path}", wait_until="domcontentloaded", timeout=timeout)
    page.wait_for_selector(MAIN, timeout=timeout)
    if wait_for_text:
        main(page).get_by_text(wait_for_text).first.wait_for(timeout=timeout)
    wait_idle(page, timeout)


def wait_idle(page, timeout: float = TIMEOUT_MS) -> None:
    """Wait until the 'running' indicator is gone (the script run finished)."""
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=timeout,
    )


def assert_no_exception(page) -> None:
    """No Python exception shown by the app, and no JavaScript error of its frontend (a crash leaves a blank page)."""
    assert not getattr(page, "js_errors", []), page.js_errors
    exceptions = page.locator('[data-testid="stException"]')  # anywhere: the sidebar's too
    assert exceptions.count() == 0, exceptions.first.inner_text()


@functools.cache
def _screenshot_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="qlora-lab-test-screenshots-"))


def screenshot(page, name: str) -> Path:
    """Save a screenshot of what a test saw into a temporary folder (to look at when it fails). Tests never
    write into assets/: the README's screenshots are made by `make screenshots` (tools/screenshots.py)."""
    path = _screenshot_dir() / name
    page.screenshot(path=str(path), full_page=False)
    return path
