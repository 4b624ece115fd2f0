"""`python -m lab evaluate`: base vs adapters over a dataset's test split, with a measured verdict."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lab import policy
from lab.cli.compare import CLI_OWNER, adapters_and_warnings, add_model_arguments, loaded_model
from lab.errors import LabError
from lab.generate.evaluate import METRICS, EvalSettings, load_examples, to_csv, to_markdown
from lab.sharing.shared import SharedModels
from lab.units import format_table

H = EvalSettings.HELP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--dataset",
        required=True,
        help="a bundled dataset name (e.g. banking-intents) or a JSONL/CSV file with a test split",
    )
    d = EvalSettings()
    parser.add_argument("--limit", type=int, default=d.limit, help=H["limit"] + " 0 = all.")
    parser.add_argument("--metric", default=d.metric, choices=list(METRICS), help=H["metric"])
    parser.add_argument("--max-new-tokens", type=int, default=None, help=H["max_new_tokens"])
    parser.add_argument("--markdown", type=Path, help="also write the Markdown report to this file")
    parser.add_argument("--csv", type=Path, help="also write the per-example CSV to this file")


def run(args: argparse.Namespace) -> dict:
    if args.limit is not None and args.limit < 0:
        raise LabError(f"--limit must be 0 (all) or positive, got {args.limit}.")
    # a bad report path or dataset fails before the model loads
    reports = [(policy.output_file(p), text) for p, text in ((args.markdown, to_markdown), (args.csv, to_csv)) if p]
    examples = load_examples(args.dataset, args.limit or None)
    infos, warnings = adapters_and_warnings(args)
    settings = EvalSettings(limit=args.limit or None, metric=args.metric, max_new_tokens=args.max_new_tokens)

    def progress(done: int, total: int, row: dict) -> None:  # stderr, so --json output stays clean
        print(f"\rexample {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    shared = SharedModels()
    result = shared.evaluate(CLI_OWNER, args.model, args.precision, infos, examples, args.dataset, settings,
                             on_progress=progress)
    result.warnings[:0] = warnings  # base mismatches first, then anything evaluate() noted
    loaded = loaded_model(shared, args)
    for path, text in reports:  # public mode: inside runs/ only
        path.write_text(text(result))
    return {**result.to_json(), "model": loaded.source.display_name, "precision": loaded.precision,
            "adapter_info": [i.to_json() for i in infos]}


def render(r: dict) -> str:
    acc = r["metric"] == "accuracy"
    rows = [(name, *([f"{m['accuracy']:.1%}", f"{m['correct']}/{m['examples']}"] if acc else []),
             f"{m['loss']:.3f}", f"{m['perplexity']:.2f}") for name, m in r["metrics"].items()]
    head = ("model", *(("accuracy", "correct") if acc else ()), "loss", "perplexity")
    differ = sum(row["differs"] for row in r["rows"])
    out = [f"{r['model']} @ {r['precision']} on {r['dataset']} ({len(r['rows'])} test examples, greedy, "
           f"{r['seconds']:.1f} s)", format_table(rows, head),
           f"{differ} of {len(r['rows'])} examples got different answers from the models."]
    out += [f"warning: {w}" for w in r["warnings"]]
    return "\n".join(out)
