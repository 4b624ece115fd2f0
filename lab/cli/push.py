"""`python -m lab push`: a run's adapter (or merged export) to the Hugging Face Hub."""

from __future__ import annotations

import argparse

from lab.publish.push import IGNORE_PATTERNS, push_run
from lab.units import format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run folder, or a run name in runs/")
    parser.add_argument("--repo", required=True, metavar="OWNER/NAME",
                        help="the Hub model repo to create (if needed) and upload to, e.g. alice/smollm2-style-lora")
    parser.add_argument(
        "--private", action="store_true", help="create the repo as private (an existing repo keeps its visibility)"
    )
    parser.add_argument(
        "--merged",
        action="store_true",
        help="push the merged export (<run>/merged: base + adapter, loads without peft) instead of the adapter",
    )
    parser.epilog = (
        "The token comes from HF_TOKEN or `hf auth login`. Never uploaded: " + ", ".join(IGNORE_PATTERNS) + "."
    )


def run(args: argparse.Namespace) -> dict:
    return push_run(args.run, args.repo, private=args.private, merged=args.merged)


def render(r: dict) -> str:
    rows = [("repo", r["repo_id"]), ("url", r["url"]), ("what", "merged model" if r["merged"] else "adapter"),
            ("private", "yes" if r["private"] else "no"), ("files", ", ".join(r["files"]))]
    return format_table(rows, ("", ""))
