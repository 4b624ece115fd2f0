"""`python -m lab verify`: the simulation against the real training step and generation on this device."""

from __future__ import annotations

import argparse
import sys

from lab.inspect.verify import verify
from lab.units import fmt_bytes, format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="embedded", metavar="SRC",
                        help="'embedded', a local model folder or a Hub id when online (weights are loaded)")
    parser.add_argument("--only", action="append", default=None, metavar="NAME",
                        help="run only the settings whose name starts with this (repeatable), e.g. 'LoRA fp32'")


def run(args: argparse.Namespace) -> dict | list:
    quiet = args.json
    report = verify(args.model, tuple(args.only) if args.only else None,
                    None if quiet else lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.json:
        return report.to_json()
    return {"model": report.model, "device": report.device, "measured": report.measured, "seconds": report.seconds,
            "rows": report.to_json()}


def render(r: dict) -> str:
    rows = [(row["setting"], row["category"], fmt_bytes(row["simulated_bytes"]), fmt_bytes(row["measured_bytes"]),
             "—" if row["error_pct"] is None else f"{row['error_pct']:+.2f}%") for row in r["rows"]]
    return "\n".join([
        f"{r['model']} on {r['device']}: simulated vs measured ({r['seconds']:.0f} s)",
        f"measured = {r['measured']}",
        "",
        format_table(rows, ("setting", "category", "simulated", "measured", "error")),
    ])
