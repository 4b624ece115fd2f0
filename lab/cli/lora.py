"""`python -m lab lora`: LoRA parameters module by module, as peft's get_peft_model creates them."""

from __future__ import annotations

import argparse

from lab.estimate.lora import BIAS_CHOICES, estimate_lora
from lab.models.reader import read_architecture
from lab.recipe import SETTINGS
from lab.units import fmt_bytes, format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="embedded", help="'embedded', a catalog name, a config.json, a model folder or a Hub id"
    )
    parser.add_argument("--r", type=int, required=True, help="LoRA rank: inner dimension of A (r × in) and B (out × r)")
    parser.add_argument(
        "--alpha", type=float, default=None, help="lora_alpha; the update is scaled by alpha/r (default alpha = 2·r)"
    )
    parser.add_argument(
        "--targets", default="q_proj,v_proj", help="comma-separated Linear names (see the table), or all-linear"
    )
    # named as a run names them (lab.recipe, TrainConfig); the short spellings stay as hidden aliases
    parser.add_argument("--use-dora", action="store_true", help=SETTINGS["use_dora"].help)
    parser.add_argument("--dora", dest="use_dora", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--use-rslora", action="store_true", help="rank-stabilized LoRA: scale alpha/√r instead of alpha/r (same count)"
    )
    parser.add_argument("--rslora", dest="use_rslora", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--bias",
        default="none",
        choices=list(BIAS_CHOICES),
        help="; ".join(f"{k}: {v}" for k, v in BIAS_CHOICES.items()),
    )
    parser.add_argument(
        "--lora-bias", action="store_true", help="peft's lora_bias=True: a trainable bias on each lora_B (out_features)"
    )


def run(args: argparse.Namespace) -> dict:
    arch = read_architecture(args.model)
    est = estimate_lora(arch, args.r, args.alpha, args.targets, use_dora=args.use_dora, use_rslora=args.use_rslora,
                        bias=args.bias, lora_bias=args.lora_bias)
    return {"model": arch.name, **est.to_json()}


def render(r: dict) -> str:
    rows = [
        (m["name"], f"{m['in_features']} × {m['out_features']}", m["count"], f"{m['a_params']:,}", f"{m['b_params']:,}",
         f"{m['magnitude_params'] + m['lora_bias_params'] + m['unfrozen_bias_params']:,}", f"{m['total']:,}")
        for m in r["modules"]
    ]
    scale = "alpha/√r" if r["use_rslora"] else "alpha/r"
    return "\n".join([
        f"{r['model']}: LoRA r={r['r']}, alpha={r['alpha']:g} (scale {scale} = {r['scale']:.4g})",
        "",
        format_table(rows, ("module", "in × out", "layers", "A (r×in)", "B (out×r)", "extra", "total")),
        "",
        f"trainable: {r['trainable_params']:,} ({r['trainable_percent']:.3f}% of {r['params_total']:,})",
        f"adapter file: {fmt_bytes(r['adapter_bytes_fp32'])} at fp32, {fmt_bytes(r['adapter_bytes_bf16'])} at bf16",
    ])
