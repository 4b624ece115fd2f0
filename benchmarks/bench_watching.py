"""Watching must not cost the work (issue 11): training throughput with the Training page open on the
run vs with no browser, and the Playground's streamed tokens/s vs the CLI's.

Training: the same short run (embedded model, `style`, fixed seed, --steps steps) as its own
`python -m lab train` process, once with no browser, once with headless Chromium on the Training page,
and with --tabs N > 1 once more with N tabs. The tabs are opened as a person opens them (issue 20):
--open-after seconds after the run's first training step is logged, so loading the page (Streamlit's front
end, the page's first run) falls inside the run's measured training time; --open-before opens them, idle,
before the run starts instead (the old, kinder measure). The server has shown the Training page once before
any variant.
Throughput = TRL's num_tokens / train_runtime from the run's lab_run.json (as benchmarks/bench_training.py).
Variants alternate over --rounds rounds, so a noisy neighbour hurts all alike. Target: open / closed >= 0.9.

Playground: `python -m lab compare` (base model, greedy, --max-new-tokens) reports tokens/s; then the
Playground page generates the same answer in the server while Chromium shows it streaming, and the
page's own Tokens/s figure is read off the page. Target: page / CLI >= 0.9.

Also printed: CPU seconds the Streamlit server and Chromium used while each variant ran (what watching
costs). Everything runs on 127.0.0.1 in a temporary runs folder; every step has a time limit.

    .venv/bin/python benchmarks/bench_watching.py [--steps 8] [--rounds 2] [--tabs 1] [--threads 1]
        [--open-after 3 | --open-before] [--browser separate|one] [--max-new-tokens 64]
        [--only training|playground] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser import CHROMIUM, CHROMIUM_ARGS, AppServer, free_port, wait_idle  # noqa: E402

PROMPT = "Explain in two sentences what a LoRA adapter is."


# --------------------------------------------------------------------------- process CPU accounting
def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and all their children, now."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return total


class Watchers:
    """The Streamlit server and this script's Chromium: the CPU they use while a variant runs."""

    def __init__(self, server: AppServer) -> None:
        self.server_pid = server.proc.pid

    def sample(self) -> tuple[float, dict[int, float]]:
        """Server CPU seconds so far, and each Chromium process's. Sample before closing tabs: a closed tab's
        process takes its CPU time with it."""
        browser = {}
        for p in psutil.Process().children(recursive=True):
            try:
                if "chrom" in p.name():
                    t = p.cpu_times()
                    browser[p.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return cpu_seconds([self.server_pid]), browser

    @staticmethod
    def used(before: tuple[float, dict[int, float]], after: tuple[float, dict[int, float]]) -> tuple[float, float]:
        """(server, browser) CPU seconds between two samples; a browser process that ended in between (a tab
        closed after the previous variant) counts nothing rather than its whole past as negative."""
        browser = sum(cpu - before[1].get(pid, 0.0) for pid, cpu in after[1].items())
        return round(after[0] - before[0], 2), round(browser, 2)


# --------------------------------------------------------------------------- training
def train_command(steps: int, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lab",
        "train",
        "--model",
        "embedded",
        "--dataset",
        "style",
        "--max-steps",
        str(steps),
        "--seed",
        "42",
        "--logging-steps",
        "1",
        "--eval-steps",
        "0",
        "--save-steps",
        "100000",
        "--output",
        str(out),
    ]


def throughput(run_dir: Path) -> dict:
    history = json.loads((run_dir / "lab_run.json").read_text())["log_history"]
    tokens = max(h.get("num_tokens", 0) for h in history)
    runtime = next(h["train_runtime"] for h in history if "train_runtime" in h)
    return {"tokens": tokens, "train_runtime": round(runtime, 2), "tokens_per_second": round(tokens / runtime, 1)}


class Tabs:
    """Where the Training tabs open: each in a fresh browser context (`separate`: a new person's browser, its
    cache empty), or all in one context that has shown the app before (`one`: one person's browser, whose tabs
    share its HTTP and code caches). Either way each tab is its own Streamlit session."""

    def __init__(self, browser, how: str) -> None:
        self.browser = browser
        self.person = browser.new_context(viewport={"width": 1400, "height": 1000}) if how == "one" else None

    def new_page(self):
        ctx = self.person or self.browser.new_context(viewport={"width": 1400, "height": 1000})
        return ctx.new_page()

    def close(self, page) -> None:
        (page.close if self.person else page.context.close)()


def open_training_tab(tabs: Tabs, server: AppServer, timeout: float):
    """A new tab (its own Streamlit session) on the Training page, loaded and idle. Returns the page."""
    page = tabs.new_page()
    page.goto(f"{server.url}/training", wait_until="domcontentloaded")
    page.get_by_text("Configure a run").first.wait_for(timeout=timeout * 1000)
    wait_idle(page, timeout * 1000)
    return page


def warm_up(tabs: Tabs, server: AppServer, timeout: float) -> None:
    """Open the Training page once before measuring: a room's server has run it before (its first run imports
    and reads what every later one finds cached), so a variant's figure is the watching, not that start-up. Then
    wait for the server to go quiet: its first session also started the calculator's warm-up (lab.estimate.warmup,
    a few CPU seconds), long over on a room's server."""
    tabs.close(open_training_tab(tabs, server, timeout))
    deadline, last = time.monotonic() + timeout, cpu_seconds([server.proc.pid])
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = cpu_seconds([server.proc.pid])
        if now - last < 0.05:
            return
        last = now


def first_step_logged(out: Path) -> bool:
    """Has the run in `out` logged a training step (TRL's first log line in its events file)?"""
    try:
        return any('"loss"' in line for line in (out / "events.jsonl").read_text().splitlines())
    except OSError:
        return False


def wait_for_training(out: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not first_step_logged(out):
        if proc.poll() is not None or time.monotonic() > deadline:
            return  # the caller reports the exit code; a run too short to log simply gets no late tabs
        time.sleep(0.2)


def run_training(where: Tabs, server: AppServer, watchers: Watchers, runs: Path, steps: int, tabs: int, label: str,
                 env: dict, timeout: float, open_after: float | None) -> dict:
    """One run of `steps` with `tabs` Training tabs: opened `open_after` seconds after its first step (a person
    who looks in on a run), or before it starts when `open_after` is None (someone who pressed Train)."""
    out = runs / label
    pages = [open_training_tab(where, server, timeout) for _ in range(tabs if open_after is None else 0)]
    before = watchers.sample()
    proc = subprocess.Popen(train_command(steps, out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=(runs / f"{label}.log").open("w"))
    try:
        if open_after is not None and tabs:
            wait_for_training(out, proc, timeout)
            time.sleep(open_after)
            pages = [open_training_tab(where, server, timeout) for _ in range(tabs)]
        for page in pages:  # the page follows the run (not "No run yet")
            page.get_by_text(out.name).first.wait_for(timeout=timeout * 1000)
        proc.wait(timeout)
        after = watchers.sample()
    finally:
        if proc.poll() is None:
            proc.kill()
        for page in pages:
            where.close(page)
    if proc.returncode:
        raise SystemExit(
            f"training {label} failed (exit {proc.returncode}): {(runs / f'{label}.log').read_text()[-2000:]}"
        )
    server_cpu, browser_cpu = Watchers.used(before, after)
    return {"variant": label.rsplit("-", 1)[0], **throughput(out), "server_cpu_s": server_cpu,
            "browser_cpu_s": browser_cpu}


# --------------------------------------------------------------------------- playground
def cli_compare(max_new_tokens: int, env: dict, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "lab", "compare", "--model", "embedded", "--prompt", PROMPT,
           "--max-new-tokens", str(max_new_tokens), "--json"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        raise SystemExit(f"lab compare failed:\n{p.stderr[-2000:]}")
    base = json.loads(p.stdout)["base"]
    return {
        "variant": "cli",
        "tokens": base["tokens"],
        "seconds": base["seconds"],
        "tokens_per_s": base["tokens_per_s"],
    }


def page_compare(page, server: AppServer, watchers: Watchers, max_new_tokens: int, timeout: float) -> dict:
    from urllib.parse import quote

    page.goto(f"{server.url}/playground?model=embedded&prompt={quote(PROMPT)}", wait_until="domcontentloaded")
    page.get_by_text("Side by side").first.wait_for(timeout=timeout * 1000)
    wait_idle(page, timeout * 1000)
    box = page.get_by_role("spinbutton", name="Max new tokens")
    box.fill(str(max_new_tokens))
    box.press("Enter")
    wait_idle(page, timeout * 1000)
    before = watchers.sample()
    page.get_by_role("button", name="Generate").click()
    page.get_by_role("button", name="Stop").first.wait_for(timeout=timeout * 1000)  # streaming
    page.get_by_role("button", name="Stop").first.wait_for(state="detached", timeout=timeout * 1000)  # done
    wait_idle(page, timeout * 1000)
    after = watchers.sample()
    metric = page.locator('[data-testid="stMetric"]')
    values = {}
    for i in range(metric.count()):
        m = metric.nth(i)
        values[m.locator('[data-testid="stMetricLabel"]').inner_text().strip()] = \
            m.locator('[data-testid="stMetricValue"]').inner_text().strip()
    return {"variant": "page", "tokens": int(values["Tokens"]), "seconds": float(values["Seconds"]),
            "tokens_per_s": float(values["Tokens/s"]),
            **dict(zip(("server_cpu_s", "browser_cpu_s"), Watchers.used(before, after), strict=True))}


# --------------------------------------------------------------------------- report
def summarise(rows: list[dict], key: str, num: str, den: str) -> dict:
    med = {v: statistics.median(r[key] for r in rows if r["variant"] == v) for v in {r["variant"] for r in rows}}
    return {"medians": med, "ratio": round(med[num] / med[den], 3), "numerator": num, "denominator": den,
            "target": 0.9, "met": med[num] >= 0.9 * med[den]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="training steps per run")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of every variant")
    ap.add_argument("--tabs", type=int, default=1, help="also measure with this many Training tabs open (> 1)")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads in every process (OMP_NUM_THREADS; 0 = default). 1 leaves a core to the browser",
    )
    ap.add_argument("--open-after", type=float, default=3.0,
                    help="open the Training tabs this many seconds after the run's first step (default 3)")
    ap.add_argument("--open-before", action="store_true",
                    help="open them, idle, before the run starts instead (the measure before issue 20)")
    ap.add_argument("--browser", choices=["separate", "one"], default="separate",
                    help="separate: each Training tab in a fresh browser context, its cache empty (the figures in "
                         "docs/benchmarks.md before 2026-12-07); one: every tab in one browser context that has "
                         "shown the app before, as one person's tabs share their browser's caches")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--only", choices=["training", "playground"])
    ap.add_argument("--timeout", type=float, default=600, help="seconds any one step may take")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if CHROMIUM is None:
        raise SystemExit("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    result: dict = {"load_average_start": [round(x, 2) for x in os.getloadavg()], "threads": a.threads or "default",
                    "tabs_opened": "before the run" if a.open_before else f"{a.open_after:g} s after its first step",
                    "browser": a.browser}
    with tempfile.TemporaryDirectory(prefix="bench-watching-") as tmp:
        runs = Path(tmp) / "runs"
        runs.mkdir()
        env = {**os.environ, "QLORA_LAB_RUNS": str(runs), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        if a.threads:
            env["OMP_NUM_THREADS"] = str(a.threads)
        os.environ.update(env)
        server = AppServer(free_port(), env)
        try:
            server.wait_healthy(a.timeout)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                watchers = Watchers(server)
                if a.only != "playground":
                    where = Tabs(browser, a.browser)
                    warm_up(where, server, a.timeout)
                    variants = {"closed": 0, "open": 1, **({f"tabs{a.tabs}": a.tabs} if a.tabs > 1 else {})}
                    rows = []
                    for i in range(a.rounds):
                        order = list(variants) if i % 2 == 0 else list(reversed(variants))
                        for v in order:
                            r = run_training(
                                where, server, watchers, runs, a.steps, variants[v], f"{v}-{i}", env, a.timeout,
                                None if a.open_before else a.open_after,
                            )
                            rows.append(r)
                            print(
                                f"training {v:8s} round {i}: {r['tokens_per_second']:.1f} tok/s ({r['tokens']} "
                                f"tokens in {r['train_runtime']:.1f} s); server {r['server_cpu_s']:.1f} CPU s, browser "
                                f"{r['browser_cpu_s']:.1f} CPU s",
                                file=sys.stderr,
                                flush=True,
                            )
                    result["training"] = {
                        "runs": rows,
                        "open_vs_closed": summarise(rows, "tokens_per_second", "open", "closed"),
                    }
                    if a.tabs > 1:
                        result["training"][f"tabs{a.tabs}_vs_closed"] = summarise(
                            rows, "tokens_per_second", f"tabs{a.tabs}", "closed"
                        )
                if a.only != "training":
                    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
                    page = ctx.new_page()
                    rows = []
                    # loads the model in the server; the page's answer length is the CLI's length too (the page may
                    # stop at its end-of-turn token: tokens/s of answers of different lengths are not comparable)
                    n = page_compare(page, server, watchers, a.max_new_tokens, a.timeout)["tokens"]
                    for i in range(a.rounds):
                        for kind in ("cli", "page") if i % 2 == 0 else ("page", "cli"):
                            r = (cli_compare(n, env, a.timeout) if kind == "cli"
                                 else page_compare(page, server, watchers, a.max_new_tokens, a.timeout))
                            rows.append(r)
                            extra = (f"; server {r['server_cpu_s']:.1f} CPU s, browser {r['browser_cpu_s']:.1f} CPU s"
                                     if kind == "page" else "")
                            print(
                                f"playground {kind:4s} round {i}: {r['tokens_per_s']:.1f} tok/s ({r['tokens']} "
                                f"tokens in {r['seconds']:.2f} s){extra}",
                                file=sys.stderr,
                                flush=True,
                            )
                    ctx.close()
                    result["playground"] = {"runs": rows, "page_vs_cli": summarise(rows, "tokens_per_s", "page", "cli")}
                browser.close()
        finally:
            server.stop()
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"load average at start {result['load_average_start']}, at end {result['load_average_end']}; "
          f"torch threads: {result['threads']}")
    for section, key in (("training", "tokens/s"), ("playground", "tokens/s")):
        for name, s in result.get(section, {}).items():
            if name == "runs":
                continue
            n, d = s["medians"][s["numerator"]], s["medians"][s["denominator"]]
            print(f"{section:10s} {s['numerator']} {n:.1f} {key} / {s['denominator']} {d:.1f} {key} = {s['ratio']:.3f}"
                  f"  (target >= 0.9: {'met' if s['met'] else 'MISSED'})")


if __name__ == "__main__":
    main()
