"""`python -m lab <command>`: the library's features from the shell.

Every module in `lab/cli/` (but this one) is a subcommand. Each defines NAME, HELP, `add_arguments(parser)`,
`run(args) -> dict` (the --json payload; None: print nothing) and `render(result) -> str` (the table for people),
so a page and the CLI always go through the same library code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from types import ModuleType

from lab.errors import LabError


def command_modules() -> list[ModuleType]:
    mods = [importlib.import_module(f"lab.cli.{m.name}") for m in pkgutil.iter_modules(__path__)]
    return sorted((m for m in mods if hasattr(m, "NAME")), key=lambda m: getattr(m, "ORDER", 50))


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    parser = argparse.ArgumentParser(prog="python -m lab", description="QLoRA Lab: quantization and LoRA, measured.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    registry = {}
    for mod in command_modules():
        # argparse %-formats help strings: a literal "%" in a summary must be doubled.
        p = sub.add_parser(mod.NAME, help=mod.HELP.replace("%", "%%"), description=mod.HELP)
        p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")
        mod.add_arguments(p)
        registry[mod.NAME] = mod
    return parser, registry


def main(argv: list[str] | None = None) -> int:
    parser, registry = build_parser()
    args = parser.parse_args(argv)
    mod = registry[args.command]
    try:
        result = mod.run(args)
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if result is None:  # nothing to report (a non-zero rank of a multi-process training)
        return 0
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(mod.render(result))
    return 0
