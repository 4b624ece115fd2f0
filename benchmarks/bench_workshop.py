"""A workshop on one server: N people in headless Chromium at once, the same mix each.

    .venv/bin/python benchmarks/bench_workshop.py [--sessions 8] [--json] [--soak OPS]

Starts `streamlit run app.py` on 127.0.0.1 in public mode (QLORA_LAB_PUBLIC=1) with a fresh runs/
folder holding one demo adapter for the embedded model, then:

1. alone: one session runs the workshop mix — a calculator change, a side-by-side comparison on the
   embedded model (base + the demo adapter, greedy), an evaluation of a few test examples, one short
   training run — and the same comparison without the adapter. Its greedy columns are the reference;
   the server's RSS after it is the baseline.
2. together: N sessions run the mix at once (even sessions compare with the adapter, odd ones
   without; session 0 also trains), while the server's RSS is sampled.
3. --soak OPS: the N sessions keep repeating comparisons and evaluations for OPS operations in all,
   and the RSS growth over them is reported (a leak shows there).

Prints JSON with `sessions`, `errors` (exceptions, error messages shown, ops that failed or timed out),
`outputs_match` (every session's greedy columns equal the ones run alone), `rss_growth_ratio`
((peak RSS while N sessions ran − RSS after the one session ran alone) ÷ the model's bytes: one
shared copy of the weights gives about 0, a copy per session about N−1), p50/p95 seconds per
operation (click to result, waiting in the queue included), the longest queue seen, and the
machine's load. Everything is bounded: short generations, 2 training steps, --timeout overall.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser import CHROMIUM, CHROMIUM_ARGS, AppServer, free_port  # noqa: E402

PROMPT = "What is a LoRA adapter? Answer in one sentence."
ADAPTER = "workshop-demo"
IDLE = ("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')")
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'
FAILED_TASK = re.compile(r"task (\S+) failed")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*$", re.M)


class Failed(Exception):
    """An operation that cannot finish: its page shows an error, or the server log a failed task."""


class ServerLog:
    """The server's log, read for failed tasks (`lab.tasks` logs "task NAME failed" and the traceback).
    Once one shows, every wait in the room ends at once: a task that failed will never deliver the
    result a page waits for (a run once hung for many minutes that way, the server idle)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.failures: list[str] = []

    def read(self) -> list[str]:
        try:
            text = self.path.read_text(errors="replace")
        except OSError:
            return self.failures
        found = []
        for m in FAILED_TASK.finditer(text):
            cause = EXCEPTION_LINE.search(text, m.end())
            found.append(f"task {m.group(1)} failed" + (f": {cause.group(0)[:300]}" if cause else ""))
        self.failures = found
        return found

    async def watch(self, done: asyncio.Event) -> None:
        while not done.is_set():
            self.read()
            await asyncio.sleep(0.5)


# --------------------------------------------------------------------------- set-up
def make_demo_adapter(runs: Path) -> Path:
    """A LoRA adapter for the embedded model that visibly changes its answers (B initialised non-zero)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lab.models.sources import prepare_embedded_model

    folder = runs / ADAPTER
    base = AutoModelForCausalLM.from_pretrained(prepare_embedded_model())
    torch.manual_seed(6)  # LoRA A's initialisation: the same adapter on every run
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(folder)
    (folder / "lab_run.json").write_text(json.dumps({"name": ADAPTER, "base_model": {"spec": "embedded"}}))
    return folder


def model_bytes() -> int:
    from lab.inspect.load_report import predict
    from lab.models.sources import resolve_source

    return predict(resolve_source("embedded"), "fp32").weights_bytes


class RssSampler:
    """The server process's RSS, sampled every 0.2 s in a thread; `peak_since(mark)`."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.proc.memory_info().rss))
            except psutil.Error:
                return
            time.sleep(0.2)

    def now(self) -> int:
        return self.proc.memory_info().rss

    def peak_since(self, t0: float) -> int:
        return max((rss for t, rss in self.samples if t >= t0), default=self.now())

    def stop(self) -> None:
        self._stop.set()


# --------------------------------------------------------------------------- one person
EVERYONE: list[Person] = []  # every person made, so a run that gives up can still say where each one was


def where_everyone_was() -> list[str]:
    """For a run that gave up: each person's errors so far, and the operation each one was still in."""
    lines = [e for p in EVERYONE for e in p.errors]
    for p in EVERYONE:
        if p.current is not None:
            op, t0 = p.current
            lines.append(f"session {p.index} was in {op} ({time.perf_counter() - t0:.0f} s)")
    return lines


class Person:
    def __init__(self, index: int, page, url: str, adapter_path: str | None, tokens: int, examples: int,
                 log: ServerLog) -> None:
        self.index, self.page, self.url, self.log = index, page, url, log
        self.adapter_path, self.tokens, self.examples = adapter_path, tokens, examples
        self.times: dict[str, list[float]] = {}
        self.errors: list[str] = []
        self.columns: dict[str, str] | None = None
        self.queue_ahead_max = 0
        self.current: tuple[str, float] | None = None  # the operation under way and when it began
        EVERYONE.append(self)

    async def idle(self, timeout: float = 300_000) -> None:
        await self.page.wait_for_function(IDLE, timeout=timeout)

    async def goto(self, path: str, text: str) -> None:
        await self.page.goto(f"{self.url}/{path}", wait_until="domcontentloaded")
        await self.page.get_by_text(text).first.wait_for(timeout=300_000)
        await self.idle()

    async def until(self, locator, what: str, timeout: float = 600, gone: bool = False) -> None:
        """Wait for `locator` (or, `gone`, for it to leave), but stop at once when this page shows an
        error or the server log a failed task (then raise `Failed` with the message)."""
        deadline = time.monotonic() + timeout
        shown = self.page.locator('[data-testid="stMain"]').locator(ERRORS)
        while bool(await locator.count()) == gone:
            if await shown.count():
                raise Failed(f"{what}: the page shows {(await shown.first.inner_text())[:200]!r}")
            if self.log.failures:
                raise Failed(f"{what}: the server log shows {self.log.failures[0]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not there after {timeout:.0f} s")
            await asyncio.sleep(0.5)

    async def shown_errors(self, op: str) -> None:
        for el in await self.page.locator(ERRORS).all():
            self.errors.append(f"session {self.index} {op}: {(await el.inner_text())[:300]}")

    async def timed(self, op: str, coro) -> None:
        t0 = time.perf_counter()
        self.current = (op, t0)
        try:
            await coro
        except Failed as e:  # already says what failed; shown errors are not counted twice
            self.errors.append(f"session {self.index} {op}: {e}")
        except Exception as e:  # a timeout or a missing element: counted, the mix goes on
            self.errors.append(f"session {self.index} {op}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            await self.shown_errors(op)
        else:
            self.times.setdefault(op, []).append(time.perf_counter() - t0)
            await self.shown_errors(op)
        finally:
            self.current = None

    async def watch_queue(self, done: asyncio.Event) -> None:
        """Note the longest line this person was told about ("3 requests ahead of you")."""
        while not done.is_set():
            try:
                text = await self.page.locator('[data-testid="stMain"]').inner_text(timeout=2000)
                for m in re.finditer(r"(\d+) requests? ahead of you", text):
                    self.queue_ahead_max = max(self.queue_ahead_max, int(m.group(1)))
            except Exception:
                pass
            await asyncio.sleep(0.5)

    # ---- the operations
    async def calculator(self) -> None:
        await self.goto("calculator?model=Llama-3.2-3B&precision=nf4", "Training step")
        # another quantized base (the page's method is QLoRA): a new simulation, and the URL follows
        await self.page.locator('[data-testid="stButtonGroup"]').first.get_by_text("int8", exact=True).click()
        await self.page.wait_for_url(re.compile(r"precision=int8"), timeout=300_000)
        await self.idle()

    async def compare(self) -> None:
        query = f"playground?model=embedded&precision=fp32&prompt={quote(PROMPT)}"
        if self.adapter_path:
            query += f"&adapter={quote(self.adapter_path)}"
        await self.goto(query, "Side by side")
        box = self.page.get_by_role("spinbutton", name="Max new tokens")
        await box.fill(str(self.tokens))
        await box.press("Enter")
        await self.idle()
        done = asyncio.Event()
        watcher = asyncio.create_task(self.watch_queue(done))
        try:
            await self.page.get_by_role("button", name="Generate").click()
            names = ["base", *([ADAPTER] if self.adapter_path else [])]
            await self.until(self.page.get_by_text("Tokens/s").nth(len(names) - 1), "the comparison's figures")
            stop = self.page.get_by_role("button", name="Stop", exact=True)
            await self.until(stop, "the comparison's end (the Stop button gone)", gone=True)
            await self.idle()
        finally:
            done.set()
            await watcher
        self.columns = {}
        for name in names:
            column = self.page.locator(f".st-key-column-{name}")
            self.columns[name] = (
                await column.locator('[data-testid="stMarkdownContainer"]').nth(1).inner_text()
            ).strip()

    async def evaluate(self) -> None:
        await self.goto("playground?model=embedded&precision=fp32" +
                        (f"&adapter={quote(self.adapter_path)}" if self.adapter_path else ""), "Side by side")
        await self.page.get_by_role("tab", name="Evaluate on a test set").click()
        box = self.page.get_by_role("spinbutton", name="Examples")
        await box.fill(str(self.examples))
        await box.press("Enter")
        await self.idle()
        await self.page.get_by_role("button", name="Evaluate", exact=True).click()
        await self.until(self.page.get_by_role("button", name="Markdown report"), "the evaluation's report")
        await self.idle()

    async def train(self, steps: int) -> None:
        await self.goto("training", "Configure a run")
        for label, value in (("Max steps", str(steps)), ("Batch size", "2"), ("Max length (tokens)", "64"),
                             ("Eval every (steps)", "0")):
            box = self.page.get_by_label(label, exact=True)
            await box.fill(value)
            await box.press("Enter")
            await self.idle()
        await self.page.get_by_role("button", name="Train", exact=True).click()
        # this session's own run: a fresh tab may first show another run (the newest of the history), ended already
        status = self.page.get_by_text(re.compile(r"(FINISHED|FAILED) — .*\(your run\)"))
        await self.until(status.first, "the run's end")
        if "FAILED" in await status.first.inner_text():
            self.errors.append(f"session {self.index} train: the run failed")

    async def mix(self, train_steps: int | None) -> None:
        await self.timed("calculator", self.calculator())
        await self.timed("compare", self.compare())
        await self.timed("evaluate", self.evaluate())
        if train_steps:
            await self.timed("train", self.train(train_steps))


# --------------------------------------------------------------------------- the room
def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    s = sorted(values)
    p95 = s[min(len(s) - 1, max(0, round(0.95 * len(s)) - 1))]
    return {"n": len(s), "p50": round(statistics.median(s), 2), "p95": round(p95, 2), "max": round(s[-1], 2)}


async def room(args, url: str, adapter: str, sampler: RssSampler, log: ServerLog) -> dict:
    """The room, with the server log watched for failed tasks throughout."""
    watching = asyncio.Event()
    watcher = asyncio.create_task(log.watch(watching))
    try:
        return await _room(args, url, adapter, sampler, log)
    finally:
        watching.set()
        await watcher


async def _room(args, url: str, adapter: str, sampler: RssSampler, log: ServerLog) -> dict:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

        async def person(i: int, with_adapter: bool) -> Person:
            context = await browser.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(300_000)  # eight browsers on two busy cores: clicks wait for a slow page
            return Person(
                i, await context.new_page(), url, adapter if with_adapter else None, args.tokens, args.examples, log
            )

        # 1. one person alone: the reference columns and the baseline RSS
        t0 = time.monotonic()
        alone = await person(0, True)
        await alone.mix(args.train_steps)
        alone_base = await person(1, False)
        await alone_base.timed("compare", alone_base.compare())
        reference = {True: alone.columns, False: alone_base.columns}
        rss_alone, rss_peak_alone = sampler.now(), sampler.peak_since(t0)
        alone_seconds = time.monotonic() - t0
        for p in (alone, alone_base):
            await p.page.context.close()

        # 2. N people at once
        people = [await person(i, i % 2 == 0) for i in range(args.sessions)]
        t1 = time.monotonic()
        await asyncio.gather(*[p.mix(args.train_steps if p.index < args.train_sessions else None) for p in people])
        together_seconds = time.monotonic() - t1
        rss_peak = sampler.peak_since(t1)
        rss_after = sampler.now()

        # 3. soak: the same people keep comparing and evaluating
        soak = {}
        if args.soak:
            rss_soak_start, t2 = sampler.now(), time.monotonic()
            ops = [("compare" if k % 2 == 0 else "evaluate") for k in range(args.soak)]

            async def worker(p: Person, mine: list[str]) -> None:
                for op in mine:
                    await p.timed(op, getattr(p, op)())

            await asyncio.gather(*[worker(p, ops[i::len(people)]) for i, p in enumerate(people)])
            soak = {"soak_ops": args.soak, "soak_seconds": round(time.monotonic() - t2, 1),
                    "soak_rss_start_bytes": rss_soak_start, "soak_rss_end_bytes": sampler.now(),
                    "soak_rss_peak_bytes": sampler.peak_since(t2),
                    "soak_rss_growth_bytes": sampler.now() - rss_soak_start,
                    "soak_rss_growth_per_op_bytes": round((sampler.now() - rss_soak_start) / args.soak)}
        await browser.close()

    everyone = [alone, alone_base, *people]
    ops: dict[str, list[float]] = {}
    for p in everyone:
        for op, ts in p.times.items():
            ops.setdefault(op, []).extend(ts)
    mismatches = [p.index for p in people if p.columns != reference[p.adapter_path is not None]]
    errors = [e for p in everyone for e in p.errors] + [f"server log: {f}" for f in log.read()]
    weights = model_bytes()
    return {
        "sessions": args.sessions,
        "errors": len(errors),
        "error_messages": errors[:20],
        "outputs_match": not mismatches and all(reference.values()),
        "mismatched_sessions": mismatches,
        "mismatched_columns": {p.index: p.columns for p in people if p.index in mismatches},  # what they read
        "reference_columns": {("with adapter" if k else "base only"): v for k, v in reference.items()},
        "rss_alone_bytes": rss_alone,
        "rss_peak_alone_bytes": rss_peak_alone,
        "rss_peak_together_bytes": rss_peak,
        "rss_after_together_bytes": rss_after,
        "model_bytes": weights,
        "rss_growth_ratio": round((rss_peak - rss_alone) / weights, 3),
        "seconds_per_operation": {op: percentiles(ts) for op, ts in sorted(ops.items())},
        "all_operations": percentiles([t for ts in ops.values() for t in ts]),
        "queue_ahead_max": max(p.queue_ahead_max for p in people),
        "alone_seconds": round(alone_seconds, 1),
        "together_seconds": round(together_seconds, 1),
        **soak,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=8, help="people in the room at once")
    ap.add_argument("--tokens", type=int, default=12, help="max new tokens of each comparison (greedy)")
    ap.add_argument("--examples", type=int, default=3, help="test examples per evaluation")
    ap.add_argument("--train-steps", type=int, default=2, help="steps of the short training run")
    ap.add_argument("--train-sessions", type=int, default=1, help="how many of the N sessions start a training run")
    ap.add_argument(
        "--soak", type=int, default=0, metavar="OPS", help="then repeat comparisons/evaluations for OPS operations"
    )
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before the whole benchmark gives up")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    args = ap.parse_args()
    if CHROMIUM is None:
        print("error: Debian's chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 2

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="qlora-lab-workshop-") as tmp:
        runs = Path(tmp) / "runs"
        adapter = str(make_demo_adapter(runs))
        env = {"QLORA_LAB_PUBLIC": "1", "QLORA_LAB_RUNS": str(runs), "HF_HUB_OFFLINE": "1"}
        os.environ["QLORA_LAB_RUNS"] = str(runs)  # the server's log goes there too (tests.browser.AppServer)
        server = AppServer(free_port(), env)
        sampler, log = None, ServerLog(server.log_path)
        try:
            server.wait_healthy(120)
            sampler = RssSampler(server.proc.pid)
            result = asyncio.run(asyncio.wait_for(room(args, server.url, adapter, sampler, log), args.timeout))
        except TimeoutError:
            result = {"sessions": args.sessions, "errors": 1,
                      "error_messages": [f"gave up after {args.timeout} s", *log.read(), *where_everyone_was()]}
        finally:
            if sampler is not None:
                sampler.stop()
            server.stop()
    result["machine"] = {"cpus": os.cpu_count(), "load_avg_before": [round(x, 2) for x in load_before],
                         "load_avg_after": [round(x, 2) for x in os.getloadavg()],
                         "ram_available_bytes": psutil.virtual_memory().available}
    print(json.dumps(result, indent=None if args.json else 2))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
