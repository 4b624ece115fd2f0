"""`python -m lab memory`: weights at a precision as bitsandbytes stores them, and — simulated — the peak of a
training step (`--train`) or of generation (`--infer`), with the GPU verdict and the multi-GPU answer.

The weights alone are arithmetic on the architecture: that answer imports neither torch nor transformers (about
2.5 s of a 3 s command on a 2-core machine). A simulation imports them where it is asked for."""

from __future__ import annotations

import argparse
from dataclasses import fields

from lab.errors import LabError
from lab.estimate.experts import active_params
from lab.estimate.gpus import FRAGMENTATION, GPUS, fit_table, get_gpu, gpu_verdict
from lab.estimate.inference import kv_cache_bytes
from lab.estimate.lora import target_notes
from lab.estimate.parallel import (
    DEFAULT_OFFLOAD,
    DEFAULT_STRATEGY,
    OFFLOAD_HELP,
    per_gpu_peak,
    smallest_fitting,
    why_none_fit,
)
from lab.estimate.training import TrainingSettings, estimate_training
from lab.estimate.weights import estimate_weights
from lab.models.reader import read_architecture
from lab.recipe import add_argument as add_setting
from lab.units import fmt_bytes, fmt_count, format_table
from lab.vocab import (
    ADAPTER_DTYPES,
    ATTENTION,
    AUTOCAST,
    DTYPE_CHOICES,
    FSDP_STRATEGIES,
    KBIT_UPCAST,
    LAUNCH_MODES,
    LOSSES,
    METHODS,
    OPTIMIZERS,
    PRECISIONS,
    describe,
)

FIELDS = {f.name: f for f in fields(TrainingSettings)}
HELP_OF = {name: f.metadata.get("help", "") for name, f in FIELDS.items()}
DEFAULT = TrainingSettings()
INVERSE_KEYS = {"max_length": "max_seq_len"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="embedded", help="'embedded', a catalog name, a config.json, a model folder or a Hub id"
    )
    parser.add_argument("--precision", default=None, choices=list(PRECISIONS),
                        help=describe(PRECISIONS) + " (default: nf4-dq; for --train lora/full the --dtype)")
    parser.add_argument("--dtype", default="auto", choices=list(DTYPE_CHOICES),
                        help="dtype of what stays unquantized (embeddings, norms, lm_head) and of the compute: "
                             + describe(DTYPE_CHOICES))
    training = parser.add_argument_group("training (--train): one simulated step, as the Training page runs it")
    training.add_argument("--train", choices=list(METHODS), help=describe(METHODS))
    # the settings a run has too, named, bounded and explained once (lab.recipe), at the GPU recipe's defaults
    add_setting(training, "batch_size", FIELDS["batch_size"].metadata, int, DEFAULT.batch_size,
                " --infer: prompts at once.")
    add_setting(training, "max_length", FIELDS["max_length"].metadata, int, DEFAULT.max_length)
    add_setting(training, "r", FIELDS["r"].metadata, int, DEFAULT.r)
    training.add_argument("--alpha", type=float, default=None, help=HELP_OF["alpha"])
    add_setting(training, "targets", FIELDS["targets"].metadata, str, DEFAULT.targets)
    add_setting(training, "use_dora", FIELDS["use_dora"].metadata, bool, DEFAULT.use_dora)
    add_setting(training, "gradient_checkpointing", FIELDS["gradient_checkpointing"].metadata, bool,
                DEFAULT.gradient_checkpointing)
    training.add_argument("--optimizer", default=DEFAULT.optimizer, choices=list(OPTIMIZERS), help=describe(OPTIMIZERS))
    training.add_argument(
        "--attn",
        default=None,
        choices=list(ATTENTION),
        help=describe(ATTENTION) + " (default: sdpa where the model supports it, as transformers picks)",
    )
    training.add_argument(
        "--adapter-dtype", default="auto", choices=list(ADAPTER_DTYPES), help=describe(ADAPTER_DTYPES)
    )
    training.add_argument("--kbit-upcast", default="on", choices=list(KBIT_UPCAST), help=describe(KBIT_UPCAST))
    training.add_argument("--loss", default="fused", choices=list(LOSSES), help=describe(LOSSES))
    training.add_argument("--autocast", default="on", choices=list(AUTOCAST), help=describe(AUTOCAST))
    add_setting(training, "dropout", FIELDS["dropout"].metadata, float, DEFAULT.dropout)
    training.add_argument("--gpus", type=int, default=None, help="per-GPU peak on this many GPUs (with --sharding)")
    training.add_argument("--sharding", default="ddp", choices=list(LAUNCH_MODES), help=describe(LAUNCH_MODES))
    training.add_argument("--fsdp-strategy", default=DEFAULT_STRATEGY, choices=list(FSDP_STRATEGIES),
                          help=describe(FSDP_STRATEGIES))
    training.add_argument("--cpu-offload", default="on" if DEFAULT_OFFLOAD else "off", choices=("on", "off"),
                          help=OFFLOAD_HELP)
    training.add_argument("--no-inverse", dest="inverse", action="store_false",
                          help="with --gpu, skip the `inverse` answer (the largest batch, sequence length and rank "
                               "that fit the GPU: a few more simulations, seconds)")
    infer = parser.add_argument_group("generation (--infer): prefill + one decode step with the KV cache")
    infer.add_argument("--infer", action="store_true", help="simulate generation instead of / besides training")
    infer.add_argument("--prompt-tokens", type=int, default=512, help="tokens per prompt (the prefill)")
    infer.add_argument("--new-tokens", type=int, default=256, help="tokens generated per prompt")
    parser.add_argument(
        "--context", type=int, default=None, help="also report the KV cache for inference at this many tokens"
    )
    parser.add_argument("--gpu", default=None, help=f"the verdict for this GPU ({', '.join(g.name for g in GPUS)})")
    timing = parser.add_argument_group("time and cost (with --gpu): the simulated step through a roofline")
    timing.add_argument("--steps", type=int, default=None, help="a planned run of this many optimizer steps")
    timing.add_argument("--dataset", default=None, help="a planned run over this bundled dataset (its real tokens)")
    timing.add_argument("--epochs", type=float, default=1.0, help="epochs over --dataset")


def training_settings(args: argparse.Namespace) -> TrainingSettings:
    return TrainingSettings(
        method=args.train, precision=args.precision, dtype=args.dtype, batch_size=args.batch_size,
        max_length=args.max_length, gradient_checkpointing=args.gradient_checkpointing, optimizer=args.optimizer,
        r=args.r,
        alpha=args.alpha, targets=args.targets, use_dora=args.use_dora, upcast_for_kbit=args.kbit_upcast == "on",
        attn=args.attn, adapter_dtype=args.adapter_dtype, loss=args.loss, dropout=args.dropout,
        autocast=args.autocast == "on",
    )


def run(args: argparse.Namespace) -> dict:

    if args.gpus is not None and args.gpus < 1:
        raise LabError(f"--gpus must be at least 1, got {args.gpus}.")
    arch = read_architecture(args.model)
    gpu = get_gpu(args.gpu) if args.gpu else None
    if (args.steps is not None or args.dataset) and (gpu is None or not args.train):
        raise LabError("A planned run (--steps / --dataset) is timed on a GPU for a training step.",
                       "Add --train METHOD and --gpu NAME.")
    settings = training_settings(args) if args.train else None
    precision = args.precision or "nf4-dq"
    if settings is not None:
        from lab.estimate.simulate import resolve_recipe  # why: torch and transformers, for a simulation only

        precision = resolve_recipe(arch, settings).precision  # validates every training setting first
    w = estimate_weights(arch, precision, args.dtype)
    result = {"model": arch.name, "model_type": arch.model_type, **w.to_json(), "fits": fit_table(w.weights_bytes)}
    result.pop("buffers_bytes", None)

    if active_params(arch) is not None:  # a mixture of experts: what one token runs through (top-k of the experts)
        result["params_active"] = active_params(arch)
    peak, fragmentation = w.weights_bytes, FRAGMENTATION
    if args.context is not None:
        if args.context <= 0:
            raise LabError(f"--context must be a positive number of tokens, got {args.context}.")
        result["kv_cache_bytes"] = kv_cache_bytes(arch, args.context, 1, args.dtype)
    if args.infer:
        peak = _inference(args, arch, precision, result)
    if settings is not None:
        peak, fragmentation = _training(args, arch, settings, gpu, result)
    elif args.gpus is not None:
        raise LabError("--gpus is about training.", "Add --train full|lora|qlora.")
    if gpu is not None:
        result["gpu_verdict"] = gpu_verdict(peak, gpu, fragmentation).to_json()
        result.update(_speed(args, gpu, result))
    return result


def _inference(args: argparse.Namespace, arch, precision: str, result: dict) -> int:
    """`inference`: generation's simulated peak, which the fit table then follows."""
    from lab.estimate.simulate import InferenceSettings, simulate_generation  # why: torch and transformers

    g = simulate_generation(arch, InferenceSettings(precision, args.dtype, args.batch_size, args.prompt_tokens,
                                                    args.new_tokens, args.attn))
    result["inference"] = g.to_json()
    result["fits"] = fit_table(g.peak_bytes)
    return g.peak_bytes


def _training(args: argparse.Namespace, arch, settings: TrainingSettings, gpu, result: dict) -> tuple[int, float]:
    """`training` (the simulated step beside the formula), `multi_gpu` with --gpus, `inverse` with --gpu; returns
    the peak and the fragmentation allowance the verdict is drawn with."""
    from lab.estimate.inverse import knobs_for, max_fitting  # why: torch and transformers, as simulate
    from lab.estimate.simulate import simulate  # why: torch and transformers' modelling code (~3 s to import)

    sim = simulate(arch, settings)
    formula = estimate_training(arch, settings)
    explained = formula.to_json()
    result["training"] = {**explained, **sim.to_json(), "formula_total_bytes": formula.total_bytes,
                          "formula_allocated_bytes": formula.allocated_bytes,
                          "notes": [*explained["notes"], *sim.notes, *_target_notes(arch, settings)]}
    peak, fragmentation = sim.peak_bytes, FRAGMENTATION
    if args.gpus is not None:
        fsdp = {"strategy": args.fsdp_strategy, "offload": args.cpu_offload == "on"}
        multi = per_gpu_peak(sim, args.gpus, args.sharding, **fsdp)
        result["multi_gpu"] = multi.to_json()
        peak, fragmentation = multi.per_gpu_peak_bytes, multi.fragmentation
        if gpu is not None:
            result["multi_gpu"]["smallest_gpus"] = smallest_fitting(sim, gpu, args.sharding, **fsdp)
    result["fits"] = fit_table(peak, fragmentation=fragmentation)
    if args.inverse and gpu is not None:
        answers = {k: max_fitting(arch, settings, gpu, k) for k in knobs_for(settings.method)}
        # the JSON keys stay as they were (issue 13): max_length's answer is max_seq_len
        maxima = {INVERSE_KEYS.get(k, f"max_{k}"): a.value for k, a in answers.items()}
        result["inverse"] = {"gpu": gpu.name, **maxima, "details": {k: a.to_json() for k, a in answers.items()}}
    return peak, fragmentation


def _speed(args: argparse.Namespace, gpu, result: dict) -> dict:
    """`speed` (and `cost` for a planned run) of the simulated training step, or generation's speed."""
    if not (args.train or args.infer):
        return {}
    # why: torch and transformers, as the simulation they time
    from lab.estimate.plan import speed_report
    from lab.estimate.simulate import InferenceSettings, simulate, simulate_generation
    from lab.estimate.speed import generation_time

    arch = read_architecture(args.model)
    if args.train:
        return speed_report(simulate(arch, training_settings(args)), gpu.name, args.gpus or 1, args.sharding,
                            args.steps, args.dataset, args.epochs)
    g = simulate_generation(arch, InferenceSettings(result["inference"]["recipe"]["precision"], args.dtype,
                                                    args.batch_size, args.prompt_tokens, args.new_tokens, args.attn))
    return {"speed": {"generation": generation_time(g, gpu.name).to_json()}}


def _target_notes(arch, settings: TrainingSettings) -> list[str]:
    if settings.method == "full":
        return []

    return target_notes(arch, settings.targets, settings.r)


def render(r: dict) -> str:
    head = (f"{r['model']} ({r['model_type']}): {r['params_total']:,} parameters, "
            f"{r['quantized_params']:,} quantized at {r['precision']}, the rest in {r['dtype']}")
    if "params_active" in r:
        head += f"; {r['params_active']:,} active per token (top-k routing)"
    rows = [
        (c["name"], fmt_count(c["params"]) if c["params"] else "", c["storage"], fmt_bytes(c["bytes"]), c["formula"])
        for c in r["components"]
    ]
    out = [head, "", format_table(rows, ("component", "params", "stored as", "bytes", "formula")), ""]
    out.append(
        f"true bytes: {fmt_bytes(r['weights_bytes'])}   get_memory_footprint(): {fmt_bytes(r['hf_footprint_bytes'])}"
        f"   naive params×bits: {fmt_bytes(r['naive_bytes'])}"
    )
    if "kv_cache_bytes" in r:
        out.append(f"KV cache: {fmt_bytes(r['kv_cache_bytes'])}")
    for kind in ("inference", "training"):
        if kind in r:
            out += ["", *_render_simulation(kind, r[kind])]
    if "multi_gpu" in r:
        m = r["multi_gpu"]
        how = f"{m['sharding']}, {m['strategy']}, offload {'on' if m['offload'] else 'off'}" if m["phase"] else \
            m["sharding"]
        out += ["", f"on {m['gpus']} GPUs ({how}): {fmt_bytes(m['per_gpu_peak_bytes'])} per GPU"
                    + (f", at its peak in the {m['phase']}" if m["phase"] else "")]
        out += [f"  {k}: {fmt_bytes(v)}" for k, v in m["terms"].items()]
        if "smallest_gpus" in m:
            n = m["smallest_gpus"]
            out.append(f"  fewest GPUs that fit: {n if n else 'none (' + why_none_fit(m['sharding']) + ')'}")
    out += ["", format_table([(f["gpu"], f"{f['used_percent']:.0f}%", f["verdict"]) for f in r["fits"]],
                             ("GPU", "used", "verdict"))]
    if "gpu_verdict" in r:
        v = r["gpu_verdict"]
        out.append(f"{v['gpu']}: peak {fmt_bytes(v['peak_bytes'])} + CUDA context {fmt_bytes(v['context_bytes'])} + "
                   f"fragmentation {fmt_bytes(v['fragmentation_bytes'])} = {fmt_bytes(v['needed_bytes'])} of "
                   f"{fmt_bytes(v['memory_bytes'])}: {v['verdict']} (margin {fmt_bytes(v['margin_bytes'])})")
    if "speed" in r:
        out += ["", _render_speed(r)]
    if "inverse" in r:
        out += ["", "on " + r["inverse"]["gpu"] + ": " + ", ".join(
            f"{k} ≤ {v:,}" for k, v in r["inverse"].items() if k.startswith("max_"))]
        out += [f"  {knob}: {d['note']}" for knob, d in r["inverse"]["details"].items() if d["note"]]
    return "\n".join(out)


def _render_speed(r: dict) -> str:
    s = r["speed"]
    if "generation" in s:
        g = s["generation"]
        return f"{g['device']}: generation ≈ {g['tokens_per_second']:,.0f} tokens/s (predicted)"
    line = (f"{s['device']}: ≈ {s['tokens_per_second']:,.0f} tokens/s per GPU, {s['step_seconds']:.3g} s per step "
            f"(predicted from the simulated step's FLOPs and bytes)")
    if "run_seconds" in s:
        line += f"; the run: {s['run_seconds'] / 3600:.2f} h"
        line += "".join(f"\n  {c['offer']}: ${c['usd']:,.2f}" for c in r.get("cost", []))
    return line


def _render_simulation(kind: str, s: dict) -> list[str]:
    out = [f"{kind} (simulated, {s['simulated_layers']} of {s['full_layers']} layers run, {s['seconds']:.1f} s): "
           f"peak {fmt_bytes(s['peak_bytes'])} — {s['peak_at']}"]
    out.append(format_table([(k, fmt_bytes(v)) for k, v in sorted(s["by_category"].items(), key=lambda kv: -kv[1])],
                            ("at the peak", "bytes")))
    if kind == "training":
        out.append(f"formula (explanation): {fmt_bytes(s['formula_allocated_bytes'])} "
                   f"without the CUDA context; terms: "
                   + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in s["components"].items() if k != "cuda_context"))
    out += list(s.get("notes", []))
    return out
