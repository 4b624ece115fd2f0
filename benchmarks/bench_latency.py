"""The calculator's latency (issue 18, item 7): a new setting, the inverse question, and CLI start-up.

Per model (a 7B, a 70B, a mixture of experts):

- **a new setting**: what the calculator page calls when one widget changes (`simulate_page`: the training
  step and generation, `pages/calculator.py`), in a warm process (the model already simulated once at the
  page's defaults) and for a setting this process has not simulated before. One change at a time from
  the defaults, as a person clicks: target < 2 s each. Also when the page shows the training peak (the
  headline): the page draws it as soon as the training step is simulated, before generation (which only a
  precision change also simulates anew);
- **the inverse question**: the Inverse tab's `solve_all` (largest batch, sequence length and rank that fit a
  GPU) for settings not solved before, its searches in the simulation processes as on a server
  (`QLORA_LAB_SIM_PROCESSES=0` for one process): target < 5 s; also when each answer shows (the tab draws each as
  it comes);
- **CLI start-up**: `python -m lab --help` and `python -m lab memory --model X --json` as subprocesses, wall
  time, median of the runs after the first (the first, also printed, builds the architecture and keeps it in
  the lab's cache, a fresh one for this benchmark): target < 3 s.

    .venv/bin/python benchmarks/bench_latency.py [--json] [--models Llama-2-7B,...] [--repeats 3] [--skip-cli]

Timings on a shared CPU are noisy: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MOE = str(ROOT / "benchmarks" / "configs" / "Qwen3-30B-A3B.json")  # Qwen/Qwen3-30B-A3B's config.json
MODELS = {"Qwen2.5-7B": "A10G 24 GB", "Llama-3.1-70B": "H100 80 GB", MOE: "H100 80 GB"}
# one widget changed at a time from the page's defaults (the GPU recipe: qlora nf4-dq, batch 1, 1024 tokens)
CHANGES = {
    "batch 2": dict(batch_size=2),
    "seq 2048": dict(max_length=2048),
    "r 32": dict(r=32),
    "checkpointing off": dict(gradient_checkpointing=False),
    "optimizer adamw_torch": dict(optimizer="adamw_torch"),
    "precision nf4": dict(precision="nf4"),  # training and generation both new
    "targets attention": dict(targets="attention"),
}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def timed(fn) -> dict:
    """Wall and CPU seconds of `fn()` (on a loaded machine the CPU seconds are the steadier figure)."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return {"wall": time.perf_counter() - t, "cpu": time.process_time() - c}


def page_timed(arch, settings, inference) -> dict:
    """`timed` for the page's two simulations, with `headline`: when the page shows the training peak (it draws the
    training step's result as soon as it is reported, before generation is simulated)."""
    from lab.estimate.simulate import simulate_page

    start, shown = time.perf_counter(), []

    def report(message, fraction=None, partial=None, state=None) -> None:  # the page's hook
        if partial is not None and not shown:
            shown.append(time.perf_counter() - start)

    t = timed(lambda: simulate_page(arch, settings, inference, report=report))
    t["headline"] = shown[0] if shown else t["wall"]
    return t


def page_latency(model: str, gpu_name: str) -> dict:
    """The page's calls for one model: the first (cold process), each new setting, the inverse question."""
    from lab.estimate import pool
    from lab.estimate.gpus import get_gpu
    from lab.estimate.inverse import knobs_for, solve_all
    from lab.estimate.simulate import InferenceSettings, simulate_page
    from lab.estimate.training import TrainingSettings
    from lab.models.reader import read_architecture

    out: dict = {"model": Path(model).stem if model.endswith(".json") else model, "gpu": gpu_name}
    arch = read_architecture(model)
    base, infer = TrainingSettings(), InferenceSettings(precision="nf4-dq")
    sims = {}
    out["first"] = timed(lambda: sims.setdefault("page", simulate_page(arch, base, infer)))
    for part in ("training", "inference"):
        value = getattr(sims["page"], part)
        out[f"{part}_peak_bytes"] = value if isinstance(value, str) else value.peak_bytes
    out["new_setting"] = {}
    for label, change in CHANGES.items():
        settings = replace(base, **change)
        inference = replace(infer, precision=change["precision"]) if "precision" in change else infer
        t = out["new_setting"][label] = page_timed(arch, settings, inference)
        print(f"  {out['model']}: {label}: {t['wall']:.2f} s (CPU {t['cpu']:.2f}), training peak shown at "
              f"{t['headline']:.2f} s", file=sys.stderr, flush=True)
    for kind in ("wall", "cpu", "headline"):
        times = [t[kind] for t in out["new_setting"].values()]
        out[f"new_setting_{kind}"] = {"median": statistics.median(times), "max": max(times)}
    # the inverse question, from a setting not solved before (the page's current one is simulated already), with the
    # simulation processes up and warm, as a server's warm-up leaves them (lab.estimate.pool; 0: in this process)
    out["simulation_processes"] = pool.processes() if pool.ready(timeout=600) else 0
    settings = replace(base, r=24)
    simulate_page(arch, settings, infer)
    answers, found = {}, []

    def report(message, fraction=None, partial=None, state=None) -> None:  # the page's hook: answers so far
        found.append((time.perf_counter(), len(partial or {})))

    start = time.perf_counter()
    out["inverse_seconds"] = timed(lambda: answers.update(solve_all(arch, settings, get_gpu(gpu_name),
                                                                    knobs_for(settings.method), report=report)))
    # when the page shows each answer (it draws the answers so far as they come): the last one when all are in
    total = out["inverse_seconds"]["wall"]
    out["inverse_answers_at"] = [round(t - start, 2) for t, n in found if n] + [round(total, 2)]
    out["inverse"] = {k: {"value": a.value, "simulations": len(a.points)} for k, a in answers.items()}
    t = out["inverse_seconds"]
    print(f"  {out['model']}: inverse: {t['wall']:.2f} s (CPU {t['cpu']:.2f}), answers shown at "
          f"{', '.join(f'{x:.1f}' for x in out['inverse_answers_at'])} s", file=sys.stderr, flush=True)
    return out


def cli_startup(repeats: int) -> dict:
    """Wall and CPU time of the CLI as a subprocess (a fresh interpreter each time: imports included), with a lab
    cache of its own: the first `lab memory` builds the architecture on the meta device and keeps it (`first`),
    the later ones read it (the median is of those)."""
    import tempfile

    os.environ["QLORA_LAB_CACHE"] = tempfile.mkdtemp(prefix="lab-latency-cache-")
    python = sys.executable
    memory = [python, "-m", "lab", "memory", "--model", "Qwen2.5-7B"]
    runs = {
        "python -m lab --help": [python, "-m", "lab", "--help"],
        "python -m lab memory --model Qwen2.5-7B --json": [*memory, "--json"],
        "python -m lab memory --model Qwen2.5-7B --train qlora --json": [*memory, "--train", "qlora", "--json"],
    }
    out = {}
    for label, cmd in runs.items():
        walls, cpus = [], []
        for _ in range(repeats):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            walls.append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        later = slice(1, None) if repeats > 1 else slice(None)
        out[label] = {"wall": statistics.median(walls[later]), "cpu": statistics.median(cpus[later]), "walls": walls,
                      "first": {"wall": walls[0], "cpu": cpus[0]}}
        print(f"  {label}: {out[label]['wall']:.2f} s (CPU {out[label]['cpu']:.2f}); first {walls[0]:.2f} s",
              file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--models", default="", help="comma-separated catalog names or config paths (default: "
                                                  "Qwen2.5-7B, Llama-3.1-70B, Qwen3-30B-A3B)")
    ap.add_argument("--gpu", default="H100 80 GB", help="the inverse question's GPU for --models")
    ap.add_argument("--repeats", type=int, default=3, help="CLI runs per command (the median is reported)")
    ap.add_argument("--skip-cli", action="store_true")
    ap.add_argument("--skip-page", action="store_true")
    args = ap.parse_args()
    models = {m: args.gpu for m in args.models.split(",")} if args.models else MODELS
    result: dict = {"load_before": load(), "cpus": os.cpu_count()}
    if not args.skip_cli:
        result["cli"] = cli_startup(args.repeats)
    if not args.skip_page:
        result["models"] = []
        for model, gpu in models.items():
            result["models"].append(page_latency(model, gpu))
            if not args.json:
                _print_model(result["models"][-1])
    result["load_after"] = load()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for label, c in result.get("cli", {}).items():
        print(f"{label}: {c['wall']:.2f} s wall, {c['cpu']:.2f} s CPU (median of the runs after the first); "
              f"first {c['first']['wall']:.2f} s wall, {c['first']['cpu']:.2f} s CPU")
    print(f"load average before: {result['load_before']}; after: {result['load_after']}")


def _print_model(m: dict) -> None:
    w, c, h = m["new_setting_wall"], m["new_setting_cpu"], m["new_setting_headline"]
    print(f"{m['model']}: first simulation {m['first']['wall']:.2f} s; a new setting: median {w['median']:.2f} s, "
          f"max {w['max']:.2f} s (CPU: {c['median']:.2f}, {c['max']:.2f}; the training peak shown at: median "
          f"{h['median']:.2f} s, max {h['max']:.2f} s); inverse on {m['gpu']}: "
          f"{m['inverse_seconds']['wall']:.2f} s (CPU {m['inverse_seconds']['cpu']:.2f}; "
          f"{m['simulation_processes']} simulation processes)", flush=True)
    print("   " + ", ".join(f"{k} {v['wall']:.2f} s" for k, v in m["new_setting"].items()))
    print("   inverse: " + ", ".join(f"{k} ≤ {v['value']:,} ({v['simulations']} simulations)"
                                     for k, v in m["inverse"].items()))


if __name__ == "__main__":
    main()
