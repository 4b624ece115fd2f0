"""`python -m lab compare`: the base model and its adapters answer one prompt side by side."""

from __future__ import annotations

import argparse

from lab.errors import LabError
from lab.generate.adapters import AdapterInfo, choose_adapters
from lab.generate.compare import BASE_COLUMN, SamplingSettings
from lab.models.precision import PRECISIONS
from lab.models.sources import resolve_source
from lab.sharing.shared import SharedModels
from lab.units import format_table

H = SamplingSettings.HELP
CLI_OWNER = "cli"  # whose adapter set and model hold a CLI command's work is


def add_sampling_arguments(parser: argparse.ArgumentParser, max_new_tokens: int = 64) -> None:
    d = SamplingSettings()
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help=H["max_new_tokens"])
    parser.add_argument("--temperature", type=float, default=d.temperature, help=H["temperature"])
    parser.add_argument("--top-p", type=float, default=d.top_p, help=H["top_p"])
    parser.add_argument("--seed", type=int, default=d.seed, help=H["seed"])
    parser.add_argument(
        "--no-chat-template", action="store_true", help="send the prompt as raw text (no chat template)"
    )


def sampling_from_args(args: argparse.Namespace) -> SamplingSettings:
    return SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed, use_chat_template=not args.no_chat_template).validate()


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="embedded", help="base model: 'embedded', a model folder, or a Hub id")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=list(PRECISIONS),
        help="precision to load the base at (" + "; ".join(f"{p.name}: {p.help}" for p in PRECISIONS.values()) + ")",
    )
    parser.add_argument("--adapter", action="append", default=[], metavar="DIR",
                        help="LoRA adapter: a run folder, any adapter folder, or a Hub id (repeat for several)")


def adapters_and_warnings(args: argparse.Namespace) -> tuple[list[AdapterInfo], list[str]]:
    """The adapters' files checked (before any model loads), and base-mismatch warnings."""
    choice = choose_adapters(args.adapter, resolve_source(args.model))
    if choice.errors:
        raise choice.errors[0]
    return choice.infos, choice.warnings


def loaded_model(shared: SharedModels, args: argparse.Namespace):
    """The model the work ran on (the CLI's SharedModels keeps it until the process ends)."""
    return shared.registry.find(args.model, args.precision)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--prompt", required=True, help="the user message every column answers")
    add_sampling_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    if not args.prompt.strip():
        raise LabError("The prompt is empty.", "Pass --prompt with a question or an instruction.")
    settings = sampling_from_args(args)
    infos, warnings = adapters_and_warnings(args)
    # The page's path: limits, admission, the device queue (a line of one here), a leased model.
    shared = SharedModels()
    result = shared.compare(CLI_OWNER, args.model, args.precision, infos, [{"role": "user", "content": args.prompt}],
                            settings)
    loaded = loaded_model(shared, args)
    return {**result.to_json(), "model": loaded.source.display_name, "precision": loaded.precision,
            "adapter_info": [i.to_json() for i in infos], "warnings": warnings}


def render(r: dict) -> str:
    cols = {BASE_COLUMN: r["base"], **r["adapters"]}
    rows = [(n, c["tokens"], f"{c['seconds']:.2f}", f"{c['tokens_per_s']:.1f}") for n, c in cols.items()]
    out = [f"{r['model']} @ {r['precision']}, {'greedy' if r['settings']['temperature'] <= 0 else 'sampled'}, "
           f"{'one batched generate' if not r['notes'] else 'batched + sequential'} in {r['wall_seconds']:.2f} s",
           format_table(rows, ("column", "tokens", "seconds", "tokens/s"))]
    out += [f"warning: {w}" for w in r["warnings"]] + [f"note: {n}" for n in r["notes"]]
    for n, c in cols.items():
        out += ["", f"== {n}", c["text"].strip() or "(empty)"]
    return "\n".join(out)
