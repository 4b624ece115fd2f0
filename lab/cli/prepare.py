"""`python -m lab prepare`: convert the embedded GGUF model into the cache (once)."""

from __future__ import annotations

import argparse

from lab.models.catalog import EMBEDDED_NAME
from lab.models.sources import embedded_model_ready, prepare_embedded_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache is already there")


def run(args: argparse.Namespace) -> dict:
    was_ready = embedded_model_ready()
    path = prepare_embedded_model(force=args.force)
    return {"model": EMBEDDED_NAME, "path": str(path), "built": args.force or not was_ready}


def render(r: dict) -> str:
    return f"{r['model']} {'built' if r['built'] else 'already prepared'} at {r['path']}"
