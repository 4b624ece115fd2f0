"""Load the embedded model at every precision: predicted vs measured true bytes (target |error| <= 1%).

    .venv/bin/python benchmarks/bench_loading.py [--model SRC] [--precisions fp32,int8,...] [--device cpu|cuda]

measured = parameters + buffers + bitsandbytes quantization state (absmax, nested absmax, code
tables, offsets, int8 row scales), each storage counted once, right after from_pretrained.
predicted = lab.estimate.weights.estimate_weights(...).weights_bytes (the calculator page's figure).
A 64-token forward pass then shows the CPU repack of 4-bit layers ('after fwd' columns).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab.inspect.load_report import run_loading_lab  # noqa: E402
from lab.inspect.quality import QualityConfig  # noqa: E402
from lab.models.precision import PRECISIONS  # noqa: E402
from lab.units import fmt_bytes, format_table  # noqa: E402

TARGET_PCT = 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"])
    args = parser.parse_args(argv)

    quality = QualityConfig(perplexity_tokens=64, window=64, prompts=())
    results = run_loading_lab(args.model, args.precisions.split(","), device=args.device, quality=quality,
                              report=lambda m, f=None, partial=None: print(f"  … {m}", file=sys.stderr))
    rows, worst = [], 0.0
    cuda = any(r.get("memory", {}).get("cuda_allocated_bytes") is not None for r in results)
    for r in results:
        if "error" in r:
            rows.append((r["precision"], "error: " + r["error"], *[""] * 7))
            worst = float("inf")
            continue
        err = r["error_pct"]
        worst = max(worst, abs(err)) if err is not None else float("inf")
        fwd_err = None
        if r["measured_after_forward_bytes"] and r["predicted_after_forward_bytes"]:
            fwd_err = (
                (r["predicted_after_forward_bytes"] - r["measured_after_forward_bytes"])
                / r["measured_after_forward_bytes"]
                * 100
            )
        row = [r["precision"], r["device"], f"{r['predicted_bytes']:,}", f"{r['measured_bytes']:,}", f"{err:+.4f}%",
               f"{r['hf_footprint_bytes']:,}", f"{r['load_seconds']:.2f}",
               f"{r['measured_after_forward_bytes']:,}" if r["measured_after_forward_bytes"] else "—",
               f"{fwd_err:+.4f}%" if fwd_err is not None else "—"]
        if cuda:
            m = r["memory"]
            row += [fmt_bytes(m["cuda_allocated_bytes"]), fmt_bytes(m["cuda_max_allocated_bytes"])]
        rows.append(row)
    headers = ["precision", "device", "predicted B", "measured B", "error", "get_memory_footprint B", "load s",
               "measured after fwd B", "after-fwd error"]
    if cuda:
        headers += ["CUDA allocated", "CUDA peak"]
    print(f"model: {results[0].get('model', args.model) if results else args.model}")
    print(format_table(rows, headers))
    ok = worst <= TARGET_PCT
    print(f"\nworst |error| = {worst:.4f}%  (target <= {TARGET_PCT}%): {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
