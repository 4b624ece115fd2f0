"""Playground speed: base + one adapter side by side (one batched generate with peft's
mixed-adapter batch) vs one plain generate of the same length, and vs the two one after another.

Targets (issue 6): side-by-side wall time <= 1.3x a single generate, and below the sequential time.
Every run generates exactly --tokens new tokens (min = max), greedy, on the embedded model in
fp32 on CPU. Other processes may share the CPU: each variant is repeated, interleaved, and the
median is reported.

    .venv/bin/python benchmarks/bench_playground.py [--tokens 32] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab.generate.adapters import inspect_adapter  # noqa: E402
from lab.generate.bank import adapter_bank  # noqa: E402
from lab.generate.compare import BASE_COLUMN, SamplingSettings, side_by_side  # noqa: E402
from lab.generate.prompts import build_chat_prompt  # noqa: E402
from lab.models.loading import load_model  # noqa: E402

PROMPT = [{"role": "user", "content": "Explain in two sentences what a LoRA adapter is."}]


def make_adapter(model_dir: str, folder: Path, r: int = 16) -> Path:
    """A LoRA on every linear layer of the decoder (what a QLoRA run trains), B non-zero."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    peft.save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0 = torch's default). On a shared CPU, 1 thread gives stable figures: "
                         "with other processes on the cores, multi-threaded small matmuls stall at every barrier.")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    loaded = load_model(args.model, "fp32")
    tok, n = loaded.tokenizer, args.tokens
    settings = SamplingSettings(max_new_tokens=n, min_new_tokens=n)
    with tempfile.TemporaryDirectory() as tmp:
        info = inspect_adapter(str(make_adapter(loaded.source.pretrained_id, Path(tmp) / "bench")))
        bank = adapter_bank(loaded)
        peft_name = bank.use("bench", [info])[info.name]  # the bank's own name for the adapter
        ids = tok(build_chat_prompt(tok, PROMPT), return_tensors="pt", add_special_tokens=False)
        ids2 = tok([build_chat_prompt(tok, PROMPT)] * 2, return_tensors="pt", add_special_tokens=False)

        @torch.inference_mode()
        def plain_batch2() -> None:
            """The floor for any batched side by side on this machine: the base twice in one plain
            generate (no peft at all). On a CPU a 2-row decode step costs ~2 single ones."""
            with bank.adapters_enabled() as peft, peft.disable_adapter():
                peft.generate(**ids2, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)

        @torch.inference_mode()
        def plain(adapter: str | None) -> int:
            """One ordinary generate: the base with the adapter layers off, or the adapter alone."""
            with bank.adapters_enabled() as peft:
                if adapter is None:
                    with peft.disable_adapter():
                        out = peft.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
                else:
                    peft.set_adapter(adapter)
                    out = peft.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
            return out.shape[1] - ids["input_ids"].shape[1]

        def timed(fn) -> float:
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t

        def sbs() -> None:
            r = side_by_side(loaded, [info], PROMPT, settings)
            assert all(c.tokens == n for c in r.columns.values()), {k: c.tokens for k, c in r.columns.items()}

        assert plain(None) == n and plain(peft_name) == n  # warm-up, and the lengths really match
        sbs()
        times: dict[str, list[float]] = {"single_base": [], "single_adapter": [], "sequential": [], "side_by_side": [],
                                         "plain_batch_of_2": []}
        for _ in range(args.repeats):  # interleaved, so a burst of load from elsewhere hits all variants
            times["single_base"].append(timed(lambda: plain(None)))
            times["single_adapter"].append(timed(lambda: plain(peft_name)))
            times["sequential"].append(timed(lambda: (plain(None), plain(peft_name))))
            times["side_by_side"].append(timed(sbs))
            times["plain_batch_of_2"].append(timed(plain_batch2))
        # Same answers as the plain generates (greedy, forced length):
        r = side_by_side(loaded, [info], PROMPT, SamplingSettings(max_new_tokens=n))

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "model": loaded.source.display_name, "new_tokens": n, "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "median_seconds": {k: round(v, 3) for k, v in med.items()},
        "all_seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "side_by_side_over_single": round(med["side_by_side"] / med["single_base"], 3),
        "side_by_side_over_sequential": round(med["side_by_side"] / med["sequential"], 3),
        "plain_batch_of_2_over_single": round(med["plain_batch_of_2"] / med["single_base"], 3),
        "targets": {"side_by_side <= 1.3x single": med["side_by_side"] <= 1.3 * med["single_base"],
                    "side_by_side < sequential": med["side_by_side"] < med["sequential"]},
        "tokens_per_s": {BASE_COLUMN: round(r.columns[BASE_COLUMN].tokens_per_s, 1),
                         info.name: round(r.columns[info.name].tokens_per_s, 1)},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['model']}, {n} new tokens each, fp32 CPU, {torch.get_num_threads()} threads, median of {args.repeats}:")
    for k, v in med.items():
        print(f"  {k:<15} {v:7.3f} s   (all: {', '.join(f'{x:.3f}' for x in times[k])})")
    print(f"  side by side / single     = {result['side_by_side_over_single']:.3f}  (target <= 1.3)")
    print(f"  side by side / sequential = {result['side_by_side_over_sequential']:.3f}  (target < 1)")
    print(f"  plain batch of 2 / single = {result['plain_batch_of_2_over_single']:.3f}  (this machine's floor for any batching)")
    for t, ok in result["targets"].items():
        print(f"  {'PASS' if ok else 'MISS'}  {t}")


if __name__ == "__main__":
    main()
