"""`python -m lab limits`: the per-request limits in effect, and the environment variables that set them."""

from __future__ import annotations

import argparse

from lab.sharing.limits import RequestLimits
from lab.units import format_table

NAME = "limits"
HELP = "show the per-request limits (new tokens, adapters, sequence length, batch, steps, queue) and their variables"
ORDER = 90


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> dict:
    return {"limits": RequestLimits.from_env().rows()}


def render(r: dict) -> str:
    rows = [(x["name"], x["value"], x["env"], "" if x["value"] == x["default"] else f"(default {x['default']})")
            for x in r["limits"]]
    return format_table(rows, ("limit", "value", "environment variable", ""))
