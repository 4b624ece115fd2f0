"""Retake the README's screenshots (`make screenshots`): the real app on the embedded model, in Chromium.

1. A real demo training run (`python -m lab train`, its CPU defaults: embedded SmolLM2-135M, the
   `style` dataset; `--max-steps` shortens it) into a fresh runs folder, so the Training and
   Playground shots show a real run and a real adapter, not a test's random model.
2. `streamlit run app.py` on that runs folder, driven by Playwright with Debian's Chromium (the test
   harness's server and browser, tests/browser.py), one page after another.
3. One PNG per page into assets/ (or `--out`). Tests never write there: their shots go to a temporary folder.

    .venv/bin/python tools/screenshots.py [--max-steps 20] [--out assets] [--only home,training]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `lab` and the test harness import from the repo

from tests.browser import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    AppServer,
    assert_no_exception,
    free_port,
    open_page,
    wait_idle,
)

VIEWPORT = {"width": 1400, "height": 1150}
LONG = 600_000  # ms: loads and generation on a 2-core CPU
PROMPT = "What is the longest river in Africa?"


def train_demo(max_steps: int, runs: Path) -> Path:
    """The CPU demo run (`python -m lab train` defaults), into `runs`; returns its run folder."""
    cmd = [sys.executable, "-m", "lab", "train", "--json"] + (["--max-steps", str(max_steps)] if max_steps else [])
    print("training:", " ".join(cmd[1:]), flush=True)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "QLORA_LAB_RUNS": str(runs)})
    if out.returncode != 0:
        sys.exit(f"the demo run failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout)
    print(f"trained {result['steps']} steps, final loss {result['final_loss']:.3f}: {result['adapter_dir']}",
          flush=True)
    return Path(result["adapter_dir"])


# --------------------------------------------------------------------------- one function per screenshot
def home(page, server, run: Path) -> None:
    open_page(page, server, "", wait_for_text="This machine")
    page.get_by_text("is ready at").first.wait_for(timeout=60_000)


def calculator(page, server, run: Path) -> None:
    open_page(page, server, "calculator?model=Llama-3.1-8B&precision=nf4-dq&seq=2048&batch=2",
              wait_for_text="Does it fit?")
    # the answers sit on top, in the first tab (issue 20, papercut 3); the simulation runs off the script thread
    page.get_by_text("Simulated training peak").first.wait_for(timeout=LONG)
    wait_idle(page, LONG)


def lora_estimator(page, server, run: Path) -> None:
    query = urlencode({"model": "Llama-3.2-3B", "r": 32, "alpha": 64.0, "preset": "custom",
                       "modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}, doseq=True)
    open_page(page, server, f"lora_estimator?{query}", wait_for_text="Trainable parameters")


def loading_lab(page, server, run: Path) -> None:
    open_page(page, server, "loading_lab?model=embedded&precisions=fp32,int8,nf4&ppl=256&answer_tokens=16",
              wait_for_text="NF4 up close")
    page.get_by_role("button", name="Load and measure").click()
    page.get_by_role("heading", name="Measured vs predicted").wait_for(timeout=LONG)
    wait_idle(page, LONG)
    page.get_by_role("heading", name="Measured vs predicted").scroll_into_view_if_needed()
    page.mouse.wheel(0, 350)  # the table and the measured-vs-predicted chart in one view
    page.wait_for_timeout(1000)


def training(page, server, run: Path) -> None:
    open_page(page, server, f"training?run={run.name}", wait_for_text="Run history")
    page.get_by_text("FINISHED", exact=False).first.wait_for(timeout=60_000)
    page.get_by_text("Current run").first.scroll_into_view_if_needed()
    page.wait_for_timeout(1000)


def playground(page, server, run: Path) -> None:
    from lab.generate.adapters import discover_runs

    adapter = next(str(a.path) for a in discover_runs() if a.path.resolve() == run.resolve())  # as the page lists it
    open_page(page, server, "playground?" + urlencode({"model": "embedded", "adapter": adapter, "prompt": PROMPT}),
              wait_for_text="Side by side")
    tokens = page.get_by_role("spinbutton", name="Max new tokens")
    tokens.fill("40")
    tokens.press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("tokens/s").nth(1).wait_for(timeout=LONG)  # both columns' figures (one caption each) are there
    page.get_by_role("button", name="Stop").wait_for(state="detached", timeout=LONG)  # and finished
    wait_idle(page, LONG)
    page.get_by_role("button", name="Generate").scroll_into_view_if_needed()
    page.wait_for_timeout(1000)


SHOTS: dict[str, Callable] = {
    "screenshot-home.png": home,
    "screenshot-calculator.png": calculator,
    "screenshot-lora-estimator.png": lora_estimator,
    "screenshot-loading-lab.png": loading_lab,
    "screenshot-training.png": training,
    "screenshot-playground.png": playground,
}


def take(names: list[str], out: Path, run: Path, runs: Path) -> None:
    from playwright.sync_api import sync_playwright

    server = AppServer(free_port(), env={"QLORA_LAB_RUNS": str(runs)})
    try:
        server.wait_healthy()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for name in names:
                page = browser.new_context(viewport=VIEWPORT).new_page()
                started = time.time()
                SHOTS[name](page, server, run)
                assert_no_exception(page)
                page.screenshot(path=str(out / name))
                print(f"{out / name} ({time.time() - started:.0f} s)", flush=True)
                page.context.close()
            browser.close()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=0, help="steps of the demo run (default: the demo's own)")
    parser.add_argument("--out", type=Path, default=ROOT / "assets", help="where the PNGs go (default: assets/)")
    parser.add_argument("--only", default="", help="comma-separated page names, e.g. home,training (default: all)")
    args = parser.parse_args()
    if CHROMIUM is None:
        sys.exit("Debian's chromium is not installed (apt-get install chromium).")
    wanted = [n for n in SHOTS if not args.only or n.removeprefix("screenshot-").removesuffix(".png")
              in args.only.replace("_", "-").split(",")]
    if not wanted:
        sys.exit(f"--only {args.only!r} names no page; pages: {', '.join(n[11:-4] for n in SHOTS)}.")
    args.out.mkdir(parents=True, exist_ok=True)
    runs = Path(tempfile.mkdtemp(prefix="qlora-lab-screenshot-runs-"))  # a clean run history in the shots
    os.environ["QLORA_LAB_RUNS"] = str(runs)  # this process (the playground's run list) and the server agree
    try:
        take(wanted, args.out, train_demo(args.max_steps, runs), runs)
    finally:
        shutil.rmtree(runs, ignore_errors=True)


if __name__ == "__main__":
    main()
