"""`python -m lab info`: the environment the lab runs in."""

from __future__ import annotations

import argparse

from lab.environment import environment_report
from lab.models.sources import embedded_status
from lab.units import fmt_bytes, format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> dict:
    return {**environment_report().to_json(), **embedded_status()}


def render(r: dict) -> str:
    rows = [
        ("device", f"{r['device']} — {r['device_name']}"),
        ("compute dtype", r["compute_dtype"]),
        ("RAM", f"{fmt_bytes(r['ram_available_bytes'])} free of {fmt_bytes(r['ram_total_bytes'])}"),
        *[
            (f"GPU {i}", f"{g['name']}: {fmt_bytes(g['free_bytes'])} free of {fmt_bytes(g['total_bytes'])}")
            for i, g in enumerate(r["gpus"])
        ],
        *[(lib, v or "not installed") for lib, v in r["versions"].items()],
        (
            "embedded model",
            ("ready at " if r["embedded_model_ready"] else "not prepared (run `python -m lab prepare`), would live at ")
            + r["embedded_model_path"],
        ),
    ]
    return format_table(rows, ("", ""))
