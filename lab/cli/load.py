"""`python -m lab load`: load a model at a precision and measure it (the loading lab's code path)."""

from __future__ import annotations

import argparse

from lab.inspect.load_report import HELP as LOAD_HELP
from lab.inspect.load_report import measure_load
from lab.inspect.quality import DEFAULT_PROMPTS, QualityConfig, describe_tokens
from lab.inspect.quality import HELP as QUALITY_HELP
from lab.models.measure import KINDS, MEMORY_LABELS
from lab.units import fmt_bytes, format_table
from lab.vocab import DTYPE_CHOICES, PRECISIONS, describe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="embedded", metavar="SRC",
                        help=LOAD_HELP["model"])
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help=describe(PRECISIONS))
    parser.add_argument("--dtype", default="compute", choices=list(DTYPE_CHOICES),
                        help=LOAD_HELP["dtype"])
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"], help=LOAD_HELP["device"])
    parser.add_argument("--perplexity-tokens", type=int, default=QualityConfig.perplexity_tokens, metavar="N",
                        help=QUALITY_HELP["perplexity_tokens"])
    parser.add_argument("--answers", action="store_true",
                        help=f"also generate greedy answers to the {len(DEFAULT_PROMPTS)} built-in prompts")
    parser.add_argument(
        "--tree", action="store_true", help="include the architecture tree (print(model)) in the output"
    )


def run(args: argparse.Namespace) -> dict:
    quality = QualityConfig(
        perplexity_tokens=max(args.perplexity_tokens, 0), prompts=DEFAULT_PROMPTS if args.answers else ()
    )
    result = measure_load(args.model, args.precision, args.dtype, args.device, quality).to_json()
    if not args.tree:
        result.pop("tree")
    return result


def render(r: dict) -> str:
    err = "—" if r["error_pct"] is None else f"{r['error_pct']:+.3f}%"
    rows = [
        ("model", f"{r['model']} at {r['precision']} on {r['device']} (unquantized params: {r['dtype']})"),
        ("Linear class", r["linear_class"] + "  " + ", ".join(f"{k}×{v}" for k, v in r["linear_classes"].items())),
        ("load time", f"{r['load_seconds']:.2f} s"),
        ("measured (true bytes)", f"{r['measured_bytes']:,} B  ({fmt_bytes(r['measured_bytes'])})"),
        (
            "predicted (calculator)",
            "—"
            if r["predicted_bytes"] is None
            else f"{r['predicted_bytes']:,} B  ({fmt_bytes(r['predicted_bytes'])})  error {err}",
        ),
        ("get_memory_footprint()", f"{r['hf_footprint_bytes']:,} B  ({fmt_bytes(r['hf_footprint_bytes'])})"),
        *[(f"  {kind}", f"{n:,} B") for kind, n in r["breakdown"].items()],
        *[
            (
                label_key.replace("_bytes", "").replace("_", " ") + " growth"
                if "max" not in label_key
                else "cuda peak allocated",
                fmt_bytes(v),
            )
            for label_key, v in r["memory"].items()
            if v is not None
        ],
        ("RSS handed back", fmt_bytes(r["freed"].get("rss_bytes"))),
    ]
    if r["perplexity"] is not None:
        over = describe_tokens(r["perplexity_tokens"], r.get("perplexity_tokens_read") or 0,
                               r.get("perplexity_windows") or 0)
        rows.append(("perplexity", f"{r['perplexity']:.3f} over {over} ({r['perplexity_seconds']:.1f} s)"))
    for a in r["answers"]:
        rows.append((f"Q: {a['prompt']}", a["answer"].replace("\n", " ")[:100]))
    out = format_table(rows, ("", ""))
    notes = [f"{k}: {KINDS[k]}" for k in r["breakdown"] if k in KINDS]
    notes += [f"{k}: {MEMORY_LABELS[k]}" for k, v in r["memory"].items() if v is not None]
    out += "\n\n" + "\n".join(notes)
    if r.get("tree"):
        out += "\n\n" + r["tree"]
    return out
