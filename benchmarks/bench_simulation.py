"""Memory by simulation, measured three ways (print both sides of every comparison):

1. against published GPU measurements (benchmarks/published_memory.py, docs/published-memory.md): the
   published figure, the lab's, and the error — nothing tuned per row; a published max_memory_reserved is
   held against the simulated peak × (1 + lab.estimate.gpus.FRAGMENTATION), the raw peak shown beside it;
2. against the same step on real tensors on this CPU (the embedded model at full depth), tracked the
   same way: simulated bytes, measured bytes, error;
3. time per simulation for 7B, 8B and 70B catalog models: the first call in a process (imports and
   kernels warm up), a new setting after that, and the same setting again (the cache).

    .venv/bin/python benchmarks/bench_simulation.py [--skip-published] [--skip-cpu] [--skip-timing] [--rows TEXT]

Timings on a shared CPU are noisy: rerun on a quiet machine before quoting them.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.published_memory import ROWS, Published  # noqa: E402
from lab.estimate.gpus import CUDA_CONTEXT_BYTES, FRAGMENTATION, Gpu, gpu_verdict  # noqa: E402
from lab.estimate.inverse import max_fitting  # noqa: E402
from lab.estimate.parallel import per_gpu_peak  # noqa: E402
from lab.estimate.simulate import InferenceSettings, simulate, simulate_generation  # noqa: E402
from lab.estimate.training import TrainingSettings  # noqa: E402
from lab.models.architecture import architecture_from_config, config_from_dict  # noqa: E402
from lab.models.reader import read_architecture  # noqa: E402

GiB = 2**30


def architecture(model):
    if isinstance(model, str):
        return read_architecture(model)
    return architecture_from_config(config_from_dict(dict(model)), model.get("model_type", "config"))


def lab_figure(row: Published, settings: dict) -> tuple[str, str, str]:
    """(published, lab, error) as printed, for the row simulated with `settings`."""
    arch = architecture(row.model)
    if row.kind == "inference":
        peak = simulate_generation(arch, InferenceSettings(**settings)).peak_bytes
        return (
            f"{row.published / GiB:.2f} GiB",
            f"{peak / GiB:.2f} GiB",
            f"{100 * (peak - row.published) / row.published:+.1f}%",
        )
    if row.kind == "training" and row.gpus > 1:
        return multi_gpu_figure(row, per_gpu_figure(row, simulate(arch, TrainingSettings(**settings))))
    if row.kind == "training":
        peak = simulate(arch, TrainingSettings(**settings)).peak_bytes
        if row.measure == "reserved":  # max_memory_reserved: the peak plus the verdict's fragmentation allowance
            reserved = peak * (1 + FRAGMENTATION)
            return (f"{row.published / GiB:.2f} GiB reserved",
                    f"{reserved / GiB:.2f} GiB reserved (peak {peak / GiB:.2f})",
                    f"{100 * (reserved - row.published) / row.published:+.1f}%")
        return (
            f"{row.published / GiB:.1f} G",
            f"{peak / GiB:.2f} GiB",
            f"{100 * (peak - row.published) / row.published:+.1f}%",
        )
    gpu = Gpu(f"{row.gpu_bytes / GiB:.0f} GiB card", row.gpu_bytes)
    if row.kind == "fits":
        v = gpu_verdict(simulate(arch, TrainingSettings(**settings)).peak_bytes, gpu)
        right = "right" if v.fits else "WRONG"
        return "ran", f"{v.verdict} (peak {v.peak_bytes / GiB:.2f} GiB, margin {v.margin_bytes / GiB:+.2f} GiB)", right
    answer = max_fitting(arch, TrainingSettings(**settings), gpu, "max_length").value
    published = "out of memory" if row.published == 0 else f"{int(row.published):,} tokens"
    if row.published == 0:
        return published, f"{answer:,} tokens", "right" if answer == 0 else "differs"
    return published, f"{answer:,} tokens", f"{100 * (answer - row.published) / row.published:+.0f}%"


def per_gpu_figure(row: Published, sim) -> tuple[float, float]:
    """(the lab's per-GPU figure as the row measured it, the raw per-GPU peak), in bytes."""
    multi = per_gpu_peak(sim, row.gpus, row.sharding, **row.fsdp)
    peak = multi.per_gpu_peak_bytes
    if row.measure == "allocated":
        return peak, peak
    reserved = peak * (1 + multi.fragmentation)
    return (reserved + CUDA_CONTEXT_BYTES if row.measure == "in use" else reserved), peak


def multi_gpu_figure(row: Published, figures: tuple[float, float]) -> tuple[str, str, str]:
    figure, peak = figures
    what = "" if row.measure == "allocated" else f" {row.measure}"
    lab = f"{figure / GiB:.2f} GiB{what}" + (f" (peak {peak / GiB:.2f})" if figure != peak else "")
    return (f"{row.published / GiB:.2f} GiB{what}", lab, f"{100 * (figure - row.published) / row.published:+.1f}%")


def published_table(only: str = "") -> None:
    """Each row twice where the published run's stack differs from the lab's: as the lab's Training page
    would run it (the lab's answer), and with the published run's own loss (the simulation's fidelity)."""
    print(
        "| source | run | settings | published | lab: Training page's stack | error | lab: the run's own stack | "
        "error |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in ROWS:
        if only and only.lower() not in f"{row.source[0]} {row.what}".lower():
            continue
        t = time.perf_counter()
        published, lab, error = lab_figure(row, row.settings)
        own, own_error = ("", "")
        if row.extra:
            _, own, own_error = lab_figure(row, {**row.settings, **row.extra})
        settings = ", ".join(f"{k}={v}" for k, v in row.settings.items())
        print(f"| [{row.source[0]}]({row.source[1]}) | {row.what} | {settings} | {published} | {lab} | {error} | "
              f"{own} | {own_error} |", flush=True)
        print(f"<!-- {time.perf_counter() - t:.1f} s -->", file=sys.stderr)


def cpu_truth() -> None:
    from lab.estimate.check import compare, measure_real_inference, measure_real_training
    from lab.estimate.recipe import Recipe
    from lab.estimate.simulate import InferenceRecipe, simulate_inference, simulate_training
    from lab.models.sources import prepare_embedded_model, resolve_source

    folder = str(prepare_embedded_model())
    config = resolve_source(folder).load_config()
    f32 = torch.float32
    cases = [
        ("LoRA fp32, all-linear r=16, b=2 s=128, sdpa", Recipe("lora", "fp32", f32, None, f32, True, False,
                                                               "adamw_torch", 2, 128, device="cpu")),
        ("QLoRA nf4, checkpointing, b=2 s=128", Recipe("qlora", "nf4", f32, None, f32, True, True, "adamw_torch",
                                                       2, 128, device="cpu")),
        ("LoRA fp32, checkpointing, eager, b=2 s=128", Recipe("lora", "fp32", f32, None, f32, True, True,
                                                              "adamw_torch", 2, 128, attn="eager", device="cpu")),
        ("int8 LoRA, SGD, b=2 s=128", Recipe("qlora", "int8", f32, None, f32, True, False, "sgd", 2, 128,
                                             device="cpu")),
    ]
    print("\n| embedded SmolLM2-135M (30 layers), CPU | simulated bytes | measured bytes | error | sim s | real s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, rec in cases:
        sim = simulate_training(config, rec)
        real = measure_real_training(folder, rec)
        c = compare(sim, real)
        print(f"| {label} | {c['simulated_bytes']:,} | {c['measured_bytes']:,} | {c['error_pct']:+.3f}% | "
              f"{sim.seconds:.1f} | {real.seconds:.1f} |", flush=True)
    rec = InferenceRecipe("fp32", f32, 2, 100, 20, device="cpu")
    sim, real = simulate_inference(config, rec), measure_real_inference(folder, rec)
    c = compare(sim, real)
    print(f"| generation fp32, 2 × (100 + 20) tokens | {c['simulated_bytes']:,} | {c['measured_bytes']:,} | "
          f"{c['error_pct']:+.3f}% | {sim.seconds:.1f} | {real.seconds:.1f} |")


def timing() -> None:
    print("\n| model | first simulation in this process (s) | a new setting (s) | same setting again (s) |")
    print("| --- | ---: | ---: | ---: |")
    base = TrainingSettings(method="qlora", batch_size=1, max_length=1024, gradient_checkpointing=True)
    for name in ("Llama-2-7B", "Llama-3.1-8B", "Llama-3.1-70B"):
        arch = read_architecture(name)
        t = time.perf_counter()
        simulate(arch, base)
        first = time.perf_counter() - t
        t = time.perf_counter()
        simulate(arch, replace(base, batch_size=2))
        new = time.perf_counter() - t
        t = time.perf_counter()
        simulate(arch, replace(base, batch_size=2))
        again = time.perf_counter() - t
        print(f"| {name} | {first:.2f} | {new:.2f} | {again:.4f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-published", action="store_true")
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--rows", default="", help="only the published rows whose source or label contains this text")
    args = ap.parse_args()
    if not args.skip_timing:
        timing()
    if not args.skip_published:
        print()
        published_table(args.rows)
    if not args.skip_cpu:
        cpu_truth()


if __name__ == "__main__":
    main()
