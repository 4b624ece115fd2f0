"""Page reruns after the first build: the calculator and the LoRA estimator under Streamlit's AppTest
(the whole script: architecture lookup, every estimate, tables and plotly charts; the simulations run in
a background task and come from the cache once done), and the library calls alone. Target: a rerun < 300 ms.

    .venv/bin/python benchmarks/bench_calculator_rerun.py [--model Llama-3.1-70B] [--reruns 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from lab.estimate.lora import estimate_lora  # noqa: E402
from lab.estimate.training import TrainingSettings, estimate_training  # noqa: E402
from lab.estimate.weights import estimate_weights  # noqa: E402
from lab.models.architecture import clear_cache  # noqa: E402
from lab.models.reader import read_architecture  # noqa: E402


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def bench_page(page: str, model: str, reruns: int) -> None:
    at = AppTest.from_file(str(ROOT / "pages" / page), default_timeout=120)
    at.query_params["model"] = model
    first = timed(at.run)
    assert not at.exception, at.exception
    times = [timed(at.run) for _ in range(reruns)]
    # a widget change is a rerun too: flip a setting back and forth
    widget = at.number_input(key="r")
    changed = [timed(lambda v=v: widget.set_value(v).run()) for v in (32, 16) * (reruns // 2)]
    print(
        f"{page:20s} {model:15s} first run {first:7.0f} ms | rerun median {statistics.median(times):5.0f} ms, "
        f"max {max(times):5.0f} ms | after a widget change median {statistics.median(changed):5.0f} ms, max "
        f"{max(changed):5.0f} ms"
    )


def bench_library(model: str) -> None:
    clear_cache()
    cold = timed(lambda: read_architecture(model))
    warm = timed(lambda: read_architecture(model))
    arch = read_architecture(model)
    s = TrainingSettings(method="qlora", batch_size=4, max_length=1024)
    w = timed(lambda: [estimate_weights(arch, p) for p in ("fp32", "bf16", "fp16", "int8", "nf4", "nf4-dq", "fp4")])
    t = timed(lambda: estimate_training(arch, s))
    lo = timed(lambda: estimate_lora(arch, 16, targets="all-linear"))
    print(
        f"library {model:15s} meta build (cold) {cold:6.0f} ms, cached {warm:5.1f} ms | 7 weight estimates {w:5.1f} "
        f"ms | training formula {t:5.2f} ms | lora {lo:5.2f} ms  (simulation times: benchmarks/bench_simulation.py)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", help="catalog names (default: Llama-3.2-3B and Llama-3.1-70B)")
    ap.add_argument("--reruns", type=int, default=10)
    args = ap.parse_args()
    models = args.model or ["Llama-3.2-3B", "Llama-3.1-70B"]
    for m in models:
        bench_library(m)
    for m in models:
        for page in ("calculator.py", "lora_estimator.py"):
            bench_page(page, m, args.reruns)


if __name__ == "__main__":
    main()
