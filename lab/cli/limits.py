"""`python -m lab limits`: the server's limits in effect and the environment variables that set them:
per-request sizes (lab.sharing.limits) and, for public mode, what a stranger may name or upload (lab.policy)."""

from __future__ import annotations

import argparse

from lab import policy
from lab.sharing.limits import RequestLimits
from lab.units import format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> dict:
    return {"limits": RequestLimits.from_env().rows(), "public_mode": policy.public_mode(),
            "public_limits": policy.limits().rows()}


def _table(rows: list[dict]) -> str:
    return format_table(
        [
            (x["name"], x["value"], x["env"], "" if x["value"] == x["default"] else f"(default {x['default']})")
            for x in rows
        ],
        ("limit", "value", "environment variable", ""),
    )


def render(r: dict) -> str:
    return "\n".join(
        [
            "Per request (always):",
            _table(r["limits"]),
            "",
            f"Public mode ({'on' if r['public_mode'] else 'off'}: QLORA_LAB_PUBLIC):",
            _table(r["public_limits"]),
        ]
    )
