"""`python -m lab memory`: weights at a precision as bitsandbytes stores them, and training memory."""

from __future__ import annotations

import argparse

from lab.estimate.gpus import GPUS, fit_table, get_gpu
from lab.estimate.inference import kv_cache_bytes
from lab.estimate.inverse import max_fitting
from lab.estimate.training import TrainingSettings, estimate_training
from lab.estimate.weights import estimate_weights
from lab.models.architecture import read_architecture
from lab.units import fmt_bytes, fmt_count, format_table
from lab.vocab import DTYPE_CHOICES, METHODS, OPTIMIZERS, PRECISIONS, describe

NAME = "memory"
HELP = "weights at a precision (true bytes vs get_memory_footprint) and, with --train, training memory"
ORDER = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="embedded", help="'embedded', a catalog name, a config.json, a model folder or a Hub id")
    parser.add_argument("--precision", default="nf4-dq", choices=list(PRECISIONS), help=describe(PRECISIONS))
    parser.add_argument("--dtype", default="auto", choices=list(DTYPE_CHOICES),
                        help="dtype of what stays unquantized (embeddings, norms, lm_head) and of the compute: "
                             + describe(DTYPE_CHOICES))
    parser.add_argument("--train", choices=list(METHODS), help=describe(METHODS))
    parser.add_argument("--batch-size", type=int, default=1, help="per-device batch size (training)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (training)")
    parser.add_argument("--r", type=int, default=16, help="LoRA rank (lora/qlora)")
    parser.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default 2·r)")
    parser.add_argument("--targets", default="all-linear", help="LoRA target modules, comma separated, or all-linear")
    parser.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward (stores only layer inputs)")
    parser.add_argument("--optimizer", default="paged_adamw_8bit", choices=list(OPTIMIZERS), help=describe(OPTIMIZERS))
    parser.add_argument("--context", type=int, default=None, help="also report the KV cache for inference at this many tokens")
    parser.add_argument("--gpu", default=None, help=f"solve the inverse question for this GPU ({', '.join(g.name for g in GPUS)})")


def run(args: argparse.Namespace) -> dict:
    arch = read_architecture(args.model)
    w = estimate_weights(arch, args.precision, args.dtype)
    result = {
        "model": arch.name,
        "model_type": arch.model_type,
        "precision": w.precision,
        "dtype": w.dtype,
        "params_total": w.params_total,
        "quantized_params": w.quantized_params,
        "unquantized_params": w.unquantized_params,
        "weights_bytes": w.weights_bytes,
        "hf_footprint_bytes": w.hf_footprint_bytes,
        "quant_constants_bytes": w.quant_constants_bytes,
        "naive_bytes": w.naive_bytes,
        "packed_params": w.packed_params,
        "cpu_packed_bytes": w.cpu_packed_bytes,
        "components": [c.__dict__ for c in w.components],
        "fits": fit_table(w.weights_bytes),
    }
    if args.context is not None:
        from lab.errors import LabError

        if args.context <= 0:
            raise LabError(f"--context must be a positive number of tokens, got {args.context}.")
        result["kv_cache_bytes"] = kv_cache_bytes(arch, args.context, 1, args.dtype)
    if args.train:
        settings = TrainingSettings(
            method=args.train,
            precision=args.precision if args.train == "qlora" else None,
            dtype=args.dtype,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            grad_checkpointing=args.grad_checkpointing,
            optimizer=args.optimizer,
            r=args.r,
            alpha=args.alpha,
            targets=args.targets,
        )
        t = estimate_training(arch, settings)
        result["training"] = t.to_json()
        result["fits"] = fit_table(t.total_bytes)
        if args.gpu:
            gpu = get_gpu(args.gpu)
            knobs = ["batch_size", "seq_len"] + ([] if args.train == "full" else ["r"])
            result["inverse"] = {"gpu": gpu.name, **{f"max_{k}": max_fitting(arch, gpu.memory_bytes, k, settings) for k in knobs}}
    return result


def render(r: dict) -> str:
    head = (f"{r['model']} ({r['model_type']}): {r['params_total']:,} parameters, "
            f"{r['quantized_params']:,} quantized at {r['precision']}, the rest in {r['dtype']}")
    rows = [(c["name"], fmt_count(c["params"]) if c["params"] else "", c["storage"], fmt_bytes(c["bytes"]), c["formula"])
            for c in r["components"]]
    out = [head, "", format_table(rows, ("component", "params", "stored as", "bytes", "formula")), ""]
    out.append(f"true bytes: {fmt_bytes(r['weights_bytes'])}   get_memory_footprint(): {fmt_bytes(r['hf_footprint_bytes'])}"
               f"   naive params×bits: {fmt_bytes(r['naive_bytes'])}")
    if "kv_cache_bytes" in r:
        out.append(f"KV cache: {fmt_bytes(r['kv_cache_bytes'])}")
    if "training" in r:
        t = r["training"]
        out += ["", f"training ({t['settings']['method']}), {t['trainable_params']:,} trainable parameters:"]
        out.append(format_table([(k, fmt_bytes(v), t["formulas"][k]) for k, v in t["components"].items()],
                                ("term", "bytes", "formula")))
        out.append(f"total: {fmt_bytes(t['total_bytes'])}")
    out += ["", format_table([(f["gpu"], f"{f['used_percent']:.0f}%", f["verdict"]) for f in r["fits"]], ("GPU", "used", "verdict"))]
    if "inverse" in r:
        out += ["", "on " + r["inverse"]["gpu"] + ": " + ", ".join(f"{k} ≤ {v:,}" for k, v in r["inverse"].items() if k != "gpu")]
    return "\n".join(out)
