"""Predicted bytes (lab.estimate.weights.estimate_weights) vs what a real load holds
(lab.models.measure.measure_storage) for the embedded SmolLM2-135M-Instruct at every precision, on CPU,
before and after a first forward.

    .venv/bin/python benchmarks/bench_memory_accuracy.py [--model embedded] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab.estimate.weights import estimate_weights  # noqa: E402
from lab.models.loading import load_model  # noqa: E402
from lab.models.measure import measure_storage  # noqa: E402
from lab.models.precision import PRECISIONS  # noqa: E402
from lab.models.reader import read_architecture  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--dtype", default="bf16", help="dtype of the unquantized tensors for quantized loads")
    args = ap.parse_args()
    arch = read_architecture(args.model)
    print(f"{arch.name}: {arch.params_total:,} params; dtype of unquantized tensors: {args.dtype}")
    print(f"{'precision':10s} {'predicted':>14s} {'measured':>14s} {'diff':>8s} {'hf pred':>14s} {'hf real':>14s} "
          f"{'after fwd pred':>15s} {'after fwd real':>15s}  load s")
    for name in PRECISIONS:
        t = time.perf_counter()
        model = load_model(args.model, name, args.dtype, "cpu").model
        load_s = time.perf_counter() - t
        est = estimate_weights(arch, name, args.dtype)
        real = measure_storage(model)
        after_pred = after_real = ""
        if est.cpu_packed_bytes is not None:
            model.eval()
            with torch.no_grad():
                model(torch.tensor([[1, 2, 3]]))
            after_pred, after_real = f"{est.cpu_packed_bytes:,}", f"{measure_storage(model)['total_bytes']:,}"
        diff = (est.weights_bytes - real["total_bytes"]) / real["total_bytes"]
        print(
            f"{name:10s} {est.weights_bytes:>14,} {real['total_bytes']:>14,} {diff:>8.4%} "
            f"{est.hf_footprint_bytes:>14,} "
            f"{real['hf_footprint_bytes']:>14,} {after_pred:>15s} {after_real:>15s}  {load_s:.1f}"
        )
        del model
        gc.collect()


if __name__ == "__main__":
    main()
