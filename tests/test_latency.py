"""Start-up and latency (issue 18, item 7): the CLI imports a command's module only when it runs, and the
caches behind the calculator give the same answers as a fresh simulation. Speed itself is measured by
benchmarks/bench_latency.py, never asserted here."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import lab.cli
from lab.cli import COMMANDS, build_parser


def test_every_command_module_is_in_the_table():
    modules = {m.name for m in pkgutil.iter_modules(lab.cli.__path__) if not m.name.startswith("_")}
    assert modules == set(COMMANDS)


def test_one_command_builds_only_its_own_options():
    parser, registry = build_parser(only="lora")
    assert list(registry) == ["lora"]
    assert parser.parse_args(["lora", "--r", "8"]).r == 8


def test_help_imports_no_command_and_no_torch():
    code = ("import sys\nfrom lab.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'peft', 'trl', 'bitsandbytes')"
            " or m.startswith('lab.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "usage: python -m lab" in out and "memory" in out
    assert out.strip().splitlines()[-1] == "[]"


def test_the_queues_dispatcher_imports_no_torch():
    """A dispatcher may be a fresh process (a finishing run's hand-over, a test's racing dispatchers): the line on disk
    (lab.training.dispatch) is read without torch, transformers or TRL (5.3 s of imports before)."""
    code = ("import sys\nfrom lab.training.dispatch import dispatch, queue_state, QueueWatcher\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft', 'trl')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
