"""`python -m lab train`: one LoRA/QLoRA fine-tuning run (the Training page starts this same command)."""

from __future__ import annotations

import argparse

from lab.training import distributed
from lab.training.config import add_arguments as add_config_arguments
from lab.training.config import from_args
from lab.training.dispatch import hand_over
from lab.training.preflight import check_run
from lab.units import fmt_bytes, format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> dict | None:

    try:
        cfg = from_args(args)
        checked = check_run(cfg)  # a refused run says why now, not after the training libraries' imports
        from lab.training.runner import train  # TRL, peft and bitsandbytes: seconds of imports

        result = train(cfg, checked=checked)
    finally:
        if distributed.is_main_process():
            hand_over()  # the device is free: start the next queued run (lab.training.queue)
    return result if distributed.is_main_process() else None  # one report per run, from rank 0


def render(r: dict) -> str:
    losses = r["losses"]
    rows = [
        ("run", r["name"]),
        ("status", r["status"] + (f" ({r['stop_reason']})" if r.get("stop_reason") else "")),
        ("adapter", r["adapter_dir"]),
        ("steps", str(r["steps"])),
        ("loss", f"{losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "-"),
        ("eval loss", f"{r['final_eval_loss']:.3f}" if r.get("final_eval_loss") is not None else "-"),
        ("time", f"{r['seconds']:.1f} s (training {r['train_seconds'] or 0:.1f} s)"),
        ("tokens/s", f"{r['tokens_per_second']:.1f}"),
        ("peak memory", fmt_bytes(r["peak_memory_bytes"])),
    ]
    return format_table(rows, ("", ""))
