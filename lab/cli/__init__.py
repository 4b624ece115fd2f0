"""`python -m lab <command>`: the library's features from the shell.

`COMMANDS` below names every subcommand, in `--help` order, with its one-line summary. Each lives in
`lab/cli/<name>.py`, which defines `add_arguments(parser)`, `run(args) -> dict` (the --json payload; None: print
nothing) and `render(result) -> str` (the table for people), so a page and the CLI always go through the same
library code. A command's module is imported only when that command runs (or its --help is asked for): most
of them import torch, transformers or peft, seconds of start-up that `--help` and `memory` do without.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
from types import ModuleType

from lab.errors import LabError

COMMANDS: dict[str, str] = {
    "info": "show the device, memory, library versions and whether the embedded model is ready",
    "prepare": "build the embedded SmolLM2-135M-Instruct checkpoint in the model cache and say where",
    "memory": "weights at a precision (true bytes vs get_memory_footprint) and, simulated, the peak of a training "
              "step (--train) or of generation (--infer), with the GPU verdict",
    "lora": "LoRA trainable parameters per target module, % of the model and adapter size",
    "load": "load a model at a precision; print measured vs predicted bytes, layer class, load time, perplexity",
    "verify": "run the real training step (LoRA, QLoRA) and a real generation on this device for a few small settings "
              "and print simulated vs measured memory by category (CUDA: max_memory_allocated; CPU: tensor bytes)",
    "train": "fine-tune a model with LoRA/QLoRA (TRL SFTTrainer + peft) and save the adapter in a run folder",
    "queue": "show the running training and the queued runs (position, estimated start); --stop RUN stops or "
             "unqueues one",
    "push": "upload a run's adapter (or its merged model) to the Hugging Face Hub, with its model card",
    "compare": "generate with a base model and one or more LoRA adapters side by side (one batched generate)",
    "evaluate": "evaluate the base model and LoRA adapters on a dataset's test split (accuracy or perplexity)",
    "limits": "show the server's limits and their variables: per request (new tokens, adapters, length, batch, "
              "steps, queue) and public mode's (model size, uploads, configs)",
    "serve": "start the Streamlit app (inside a Space: uploads that work in the iframe, public mode, /data "
             "storage)",
}


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"lab.cli.{name}")


def command_modules() -> list[ModuleType]:
    """Every command's module, imported, in --help order (slow: most import torch, transformers or peft)."""
    return [command_module(name) for name in _commands()]


def _commands() -> dict[str, str]:
    """COMMANDS, and any command module not listed there (declaring its own NAME and HELP: imported now)."""
    found = dict(COMMANDS)
    for m in pkgutil.iter_modules(__path__):
        if m.name not in found and not m.name.startswith("_"):
            mod = command_module(m.name)
            if hasattr(mod, "NAME"):
                found[mod.NAME] = mod.HELP
    return found


def build_parser(only: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    """The parser with every command's options; with `only`, that command's alone (the others are listed by
    name and summary, their modules not imported)."""
    parser = argparse.ArgumentParser(prog="python -m lab", description="QLoRA Lab: quantization and LoRA, measured.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    registry = {}
    for name, summary in _commands().items():
        # argparse %-formats help strings: a literal "%" in a summary must be doubled.
        p = sub.add_parser(name, help=summary.replace("%", "%%"), description=summary)
        if only is not None and name != only:
            continue
        p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")
        registry[name] = command_module(name)
        registry[name].add_arguments(p)
    return parser, registry


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the command is the first word (the top level has no options but -h); none or an unknown one: no module
    # is imported, argparse lists the commands or says which word is wrong
    command = next((a for a in argv if not a.startswith("-")), "")
    parser, registry = build_parser(only=command)
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
    return emit(json.dumps(result, indent=2, default=str) if args.json else mod.render(result))


SIGPIPE_EXIT = 128 + 13  # what a shell reports for a process that a closed pipe (SIGPIPE) ended


def emit(text: str) -> int:
    """Print the result. A reader that closed the pipe early (`python -m lab memory ... | head`) ends the command
    quietly, as it ends `cat`, instead of with a BrokenPipeError traceback. (Not signal.SIG_DFL: that would also
    kill a training process whose socket to the Hub or to another rank breaks.)"""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that flush has nowhere to fail
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_EXIT
    return 0
