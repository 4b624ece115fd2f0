"""A fresh server's first visitor and the calculator (lab.estimate.warmup): seconds from opening the calculator to its
simulated training peak on screen, with the server's warm-up on and off.

Each round starts a fresh server (`streamlit run app.py`, as `lab serve` runs it), opens Home in headless Chromium
(the server's first session: it starts the warm-up), waits `--read` seconds (a person reading Home), then opens
the calculator and waits for "Simulated training peak". The variants alternate; `--read 0` is a visitor who opens
the calculator at once.

    .venv/bin/python benchmarks/bench_first_visit.py [--rounds 2] [--read 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.browser import CHROMIUM, CHROMIUM_ARGS, AppServer, free_port, main, new_page, open_page  # noqa: E402


def first_visit(warm: bool, read: float, browser, timeout_ms: int = 120_000) -> dict:
    server = AppServer(free_port(), env={"QLORA_LAB_WARMUP": "1" if warm else "0"})
    try:
        server.wait_healthy()
        page = new_page(browser)
        try:
            t = time.perf_counter()
            open_page(page, server, "", wait_for_text="QLoRA Lab")
            home = time.perf_counter() - t
            time.sleep(read)
            t = time.perf_counter()
            page.goto(f"{server.url}/calculator", wait_until="domcontentloaded")
            main(page).get_by_text("Simulated training peak").first.wait_for(timeout=timeout_ms)
            return {"home": round(home, 2), "calculator": round(time.perf_counter() - t, 2),
                    "js_errors": list(page.js_errors)}
        finally:
            page.context.close()
    finally:
        server.stop()


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both variants")
    parser.add_argument("--read", type=float, default=10.0, help="seconds on Home before opening the calculator")
    parser.add_argument("--json", action="store_true")
    a = parser.parse_args()
    if CHROMIUM is None:
        sys.exit("Debian's chromium is not installed (apt-get install chromium)")
    out: dict = {"read_seconds": a.read, "load_before": os.getloadavg()[0], "warm": [], "cold": []}
    with tempfile.TemporaryDirectory(prefix="bench-first-visit-") as tmp:
        os.environ.update({"QLORA_LAB_RUNS": str(Path(tmp) / "runs"), "QLORA_LAB_CACHE": str(Path(tmp) / "cache"),
                           "HF_HUB_OFFLINE": "1"})
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for i in range(a.rounds):
                for warm in ((True, False) if i % 2 == 0 else (False, True)):
                    r = first_visit(warm, a.read, browser)
                    out["warm" if warm else "cold"].append(r)
                    print(f"round {i}, warm-up {'on ' if warm else 'off'}: Home {r['home']:.2f} s; the calculator's "
                          f"training peak {r['calculator']:.2f} s after opening it", file=sys.stderr, flush=True)
            browser.close()
    for k in ("warm", "cold"):
        out[f"{k}_median"] = statistics.median(r["calculator"] for r in out[k])
    out["load_after"] = os.getloadavg()[0]
    if a.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"after {a.read:g} s on Home, the calculator's simulated training peak shows (median): "
              f"{out['warm_median']:.2f} s with the warm-up, {out['cold_median']:.2f} s without")


if __name__ == "__main__":
    main_()
