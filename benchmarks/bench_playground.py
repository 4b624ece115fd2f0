"""Playground speed: base + one adapter side by side (one batched generate, row-wise LoRA) vs one plain
generate of the same length, vs the two one after another, vs the same batch through peft's own
mixed-adapter batches, and vs a plain batch of 2 rows with no adapter at all (this CPU's floor).

Targets (issue 11): side-by-side wall time <= 1.2x a single generate, and below the sequential time.
Every run generates exactly --tokens new tokens (min = max), greedy, on the embedded model in
fp32 on CPU. Other processes may share the CPU: each variant is repeated, interleaved, and the
median is reported, both as wall time and as this process's CPU time (steadier on a shared machine).

    .venv/bin/python benchmarks/bench_playground.py [--tokens 32] [--repeats 3] [--threads 1] [--json]
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab.data.prompts import build_chat_prompt  # noqa: E402
from lab.generate.adapters import inspect_adapter  # noqa: E402
from lab.generate.bank import adapter_bank  # noqa: E402
from lab.generate.compare import BASE_COLUMN, SamplingSettings, side_by_side  # noqa: E402
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


def matmul_table(model: str) -> list[dict]:
    """Per weight shape of `model`: one decoding row through F.linear, two rows through F.linear, and two
    rows as (W @ xᵀ)ᵀ (lab.generate.small_batch), in microseconds (median of 50 after warm-up)."""
    import torch.nn.functional as F

    loaded = load_model(model, "fp32")
    shapes = sorted({tuple(m.weight.shape) for m in loaded.model.modules() if type(m) is torch.nn.Linear})
    def us(fn) -> float:
        for _ in range(5):
            fn()
        times = []
        for _ in range(50):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return round(statistics.median(times) * 1e6, 1)

    out = []
    for o, i in shapes:
        w = torch.randn(o, i)
        x1, x2 = torch.randn(1, 1, i), torch.randn(2, 1, i)
        out.append({"weight": f"{o} x {i}", "elements": o * i,
                    "one_row_f_linear_us": us(lambda w=w, x=x1: F.linear(x, w)),
                    "two_rows_f_linear_us": us(lambda w=w, x=x2: F.linear(x, w)),
                    "two_rows_w_at_xT_us": us(lambda w=w, x=x2: (w @ x.reshape(2, -1).t()).t())})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0 = torch's default). On a shared CPU, 1 thread gives stable figures: "
                         "with other processes on the cores, multi-threaded small matmuls stall at every barrier.")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--matmuls", action="store_true",
                    help="only print, per weight shape, F.linear with 1 and 2 rows vs (W @ xᵀ)ᵀ with 2 rows")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.matmuls:
        print(json.dumps({"load_average": [round(x, 2) for x in os.getloadavg()], "threads": torch.get_num_threads(),
                          "shapes": matmul_table(args.model)}, indent=1))
        return

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
                peft.generate(
                    **ids2, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id
                )

        @torch.inference_mode()
        def plain(adapter: str | None) -> int:
            """One ordinary generate: the base with the adapter layers off, or the adapter alone."""
            with bank.adapters_enabled() as peft:
                if adapter is None:
                    with peft.disable_adapter():
                        out = peft.generate(
                            **ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id
                        )
                else:
                    peft.set_adapter(adapter)
                    out = peft.generate(
                        **ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id
                    )
            return out.shape[1] - ids["input_ids"].shape[1]

        @torch.inference_mode()
        def peft_mixed() -> None:
            """The same batch through peft's `generate(adapter_names=...)` (what side by side used before)."""
            with bank.adapters_enabled() as peft:
                peft.generate(
                    **ids2,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                    adapter_names=["__base__", peft_name],
                )

        def timed(fn) -> tuple[float, float]:
            t, c = time.perf_counter(), time.process_time()
            fn()
            return time.perf_counter() - t, time.process_time() - c

        def sbs() -> None:
            r = side_by_side(loaded, [info], PROMPT, settings)
            assert r.route == "row-lora", r.route
            assert all(c.tokens == n for c in r.columns.values()), {k: c.tokens for k, c in r.columns.items()}

        assert plain(None) == n and plain(peft_name) == n  # warm-up, and the lengths really match
        sbs()
        variants = {"single_base": lambda: plain(None), "single_adapter": lambda: plain(peft_name),
                    "sequential": lambda: (plain(None), plain(peft_name)), "side_by_side": sbs,
                    "plain_batch_of_2": plain_batch2, "peft_mixed_batch": peft_mixed}
        wall: dict[str, list[float]] = {k: [] for k in variants}
        cpu: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeats):  # interleaved, so a burst of load from elsewhere hits all variants
            for k, fn in variants.items():
                w, c = timed(fn)
                wall[k].append(w)
                cpu[k].append(c)
        # Same answers as the plain generates (greedy, stopping at end-of-turn as the page does):
        r = side_by_side(loaded, [info], PROMPT, SamplingSettings(max_new_tokens=n))
        with bank.adapters_enabled() as peft, torch.inference_mode():
            with peft.disable_adapter():
                want_base = peft.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
            peft.set_adapter(peft_name)
            want_adapter = peft.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
        start = ids["input_ids"].shape[1]
        same = {BASE_COLUMN: r.columns[BASE_COLUMN].token_ids == [t for t in want_base[0, start:].tolist()],
                info.name: r.columns[info.name].token_ids == [t for t in want_adapter[0, start:].tolist()]}

    def ratios(times: dict[str, list[float]]) -> dict[str, dict]:
        med = {k: statistics.median(v) for k, v in times.items()}
        pairs = {"side_by_side / single_base": ("side_by_side", "single_base", 1.2),
                 "side_by_side / sequential": ("side_by_side", "sequential", 1.0),
                 "side_by_side / plain_batch_of_2": ("side_by_side", "plain_batch_of_2", None),
                 "plain_batch_of_2 / single_base": ("plain_batch_of_2", "single_base", None),
                 "peft_mixed_batch / single_base": ("peft_mixed_batch", "single_base", None)}
        return {"median_seconds": {k: round(v, 3) for k, v in med.items()},
                "all_seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
                "ratios": {name: {"numerator": round(med[a], 3), "denominator": round(med[b], 3),
                                  "ratio": round(med[a] / med[b], 3), "target": t,
                                  "met": None if t is None else (med[a] <= t * med[b] if t != 1.0 else med[a] < med[b])}
                           for name, (a, b, t) in pairs.items()}}

    result = {
        "model": loaded.source.display_name, "new_tokens": n, "repeats": args.repeats,
        "threads": torch.get_num_threads(), "load_average": [round(x, 2) for x in os.getloadavg()],
        "wall": ratios(wall), "cpu": ratios(cpu), "greedy_equal_to_plain_generate": same,
        "tokens_per_s": {BASE_COLUMN: round(r.columns[BASE_COLUMN].tokens_per_s, 1),
                         info.name: round(r.columns[info.name].tokens_per_s, 1)},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['model']}, {n} new tokens each, fp32 CPU, {torch.get_num_threads()} threads, median of "
          f"{args.repeats}; load average before the run {result['load_average']}:")
    for k in wall:
        print(f"  {k:<17} wall {statistics.median(wall[k]):7.3f} s   cpu {statistics.median(cpu[k]):7.3f} s   "
              f"(wall: {', '.join(f'{x:.3f}' for x in wall[k])})")
    for clock in ("wall", "cpu"):
        print(f"  ratios of {clock} time:")
        for name, d in result[clock]["ratios"].items():
            verdict = (
                ""
                if d["target"] is None
                else f"  target {'<' if d['target'] == 1.0 else '<='} {d['target']}: "
                + ("met" if d["met"] else "MISSED")
            )
            print(f"    {name:<32} {d['numerator']:.3f} / {d['denominator']:.3f} = {d['ratio']:.3f}{verdict}")
    print(f"  greedy side by side == plain generate: {same}")


if __name__ == "__main__":
    main()
