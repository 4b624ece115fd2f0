"""`python -m lab serve`: start the app with the settings this environment needs (the Docker image's command)."""

from __future__ import annotations

import argparse
import os

from lab import policy
from lab.paths import persistent_dir, runs_dir
from lab.serve.launch import command, in_space, serve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("PORT", 8501)), help="port to listen on (default 8501)"
    )
    parser.add_argument("--address", default="0.0.0.0", help="address to listen on (default 0.0.0.0: every interface)")
    parser.add_argument("--dry-run", action="store_true", help="print the command and settings, start nothing")


def run(args: argparse.Namespace) -> dict:
    info = {
        "command": command(port=args.port, address=args.address),
        "space": in_space(),
        "public": policy.public_mode(),
        "runs_dir": str(runs_dir()),
        "persistent_dir": str(persistent_dir()) if persistent_dir() else None,
        "limits": policy.limits().to_json() if policy.public_mode() else None,
    }
    if not args.dry_run:
        serve(args.port, args.address)  # replaces this process
    return info


def render(r: dict) -> str:
    return "\n".join(
        [" ".join(r["command"]), f"space: {r['space']}  public mode: {r['public']}  runs: {r['runs_dir']}"]
    )
