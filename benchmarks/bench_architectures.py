"""Every causal-LM family of the installed transformers through `lab memory`, as a new user would try it.

For each model type in transformers' causal-LM mapping whose default config builds
(`AutoConfig.for_model(TYPE).to_json_file(...)`), two requests go through the CLI's own code
(`lab.cli.build_parser`, the subcommand's `run` and `render`, LabError caught as `lab.cli.main` does):

    lab memory --model CONFIG --dtype bf16 --train qlora --precision nf4 --batch-size 1 --seq-len 512
    lab memory --model CONFIG --dtype bf16 --infer --precision nf4 --prompt-tokens 256 --new-tokens 64

Each ends simulated, refused (a LabError: the one line a user would see) or crashed (anything else: a
traceback would reach the user). Runs in one process with a per-request time limit (SIGALRM) instead of
200 subprocesses.

    .venv/bin/python benchmarks/bench_architectures.py [--json] [--types mixtral,jamba] [--named] [--timeout 120]

The table for docs/architectures.md: `--markdown`. Timings on a shared CPU are noisy.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lab  # noqa: E402,F401  (quiets noisy libraries)
from lab.cli import build_parser  # noqa: E402
from lab.errors import LabError  # noqa: E402

# The families the issue names (mixture-of-experts, MLA, hybrid attention and state-space models).
NAMED = ("mixtral", "qwen3_moe", "olmoe", "glm4_moe", "deepseek_v2", "deepseek_v3", "gpt_oss", "granitemoe",
         "phimoe", "llama4_text", "jamba", "qwen3_next", "zamba2", "falcon_h1", "bamba", "gemma3_text",
         "gemma4_text", "minicpm3", "falcon", "qwen2_moe", "mamba2", "ministral", "hunyuan_v1_dense", "nemotron")
REQUESTS = {
    "qlora": ["--dtype", "bf16", "--train", "qlora", "--precision", "nf4", "--batch-size", "1", "--seq-len", "512"],
    "infer": ["--dtype", "bf16", "--infer", "--precision", "nf4", "--prompt-tokens", "256", "--new-tokens", "64"],
}


class TimedOut(Exception):
    pass


def causal_lm_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def default_config(model_type: str, folder: Path) -> Path | None:
    """transformers' default config of `model_type` written as a config.json, or None if it does not build."""
    from transformers import AutoConfig

    try:
        path = folder / f"{model_type}.json"
        AutoConfig.for_model(model_type).to_json_file(path)
        return path
    except Exception:
        return None


def run_cli(config: Path, extra: list[str], timeout: int) -> dict:
    """One `lab memory` request through the CLI's code: {"outcome", "line" | "error", "seconds", "peak_bytes"}."""
    parser, registry = build_parser()
    args = parser.parse_args(["memory", "--model", str(config), *extra])
    mod = registry["memory"]
    t0 = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = mod.run(args)
            mod.render(result)
        part = result.get("training") or result.get("inference") or {}
        out = {"outcome": "simulated", "peak_bytes": part.get("peak_bytes")}
    except LabError as e:
        out = {"outcome": "refused", "line": f"error: {e}"}
    except TimedOut:
        out = {"outcome": "crashed", "error": f"timed out after {timeout} s"}
    except Exception as e:  # a traceback would reach the user: the benchmark's failure
        frame = traceback.extract_tb(e.__traceback__)[-1]
        out = {"outcome": "crashed", "error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}",
               "at": f"{Path(frame.filename).name}:{frame.lineno}"}
    finally:
        signal.alarm(0)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _alarm(signum, frame):
    raise TimedOut()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (docs/architectures.md)")
    p.add_argument("--types", default=None, help="comma-separated model types (default: all causal-LM types)")
    p.add_argument("--named", action="store_true", help="only the families the issue names")
    p.add_argument("--timeout", type=int, default=180, help="seconds per request")
    p.add_argument("--from", dest="saved", default=None,
                   help="print a saved --json run again (as --markdown with --markdown; --named keeps the named rows)")
    a = p.parse_args()
    if a.saved:  # a full run takes a quarter of an hour here: its table is rendered from its JSON, not run again
        saved = json.loads(Path(a.saved).read_text())
        rows = [r for r in saved["rows"] if r["named"] or not a.named]
        print(_markdown(rows, saved["summary"]) if a.markdown else json.dumps(saved["summary"], indent=2))
        return 1 if saved["summary"]["crashed"] else 0
    types = causal_lm_types()
    if a.named:
        types = [t for t in types if t in NAMED]
    if a.types:
        types = [t.strip() for t in a.types.split(",") if t.strip()]
    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for model_type in types:
            config = default_config(model_type, Path(tmp))
            if config is None:
                skipped.append(model_type)
                continue
            row = {"model_type": model_type, "named": model_type in NAMED}
            for name, extra in REQUESTS.items():
                row[name] = run_cli(config, extra, a.timeout)
                if not a.json and not a.markdown:
                    r = row[name]
                    print(f"{model_type:24s} {name:6s} {r['outcome']:9s} {r['seconds']:6.1f} s  "
                          f"{r.get('line') or r.get('error') or ''}", flush=True)
            rows.append(row)
    summary = _summary(rows, skipped)
    if a.json:
        print(json.dumps({"summary": summary, "rows": rows}, indent=2))
    elif a.markdown:
        print(_markdown(rows, summary))
    else:
        print(json.dumps(summary, indent=2))
    return 1 if summary["crashed"] else 0


def _summary(rows: list[dict], skipped: list[str]) -> dict:
    runs = [(row, row[k]) for row in rows for k in REQUESTS]
    count = {o: sum(r["outcome"] == o for _, r in runs) for o in ("simulated", "refused", "crashed")}
    named = [r for row, r in runs if row["named"]]
    return {
        "types": len(rows), "runs": len(runs), **count,
        "named_runs": len(named),
        "named_simulated_percent": round(100 * sum(r["outcome"] == "simulated" for r in named) / max(1, len(named)), 1),
        "refusals": sorted({f"{row['model_type']} {k}: {row[k]['line']}" for row in rows for k in REQUESTS
                            if row[k]["outcome"] == "refused"}),
        "crashes": sorted({f"{row['model_type']} {k}: {row[k]['error']}" for row in rows for k in REQUESTS
                           if row[k]["outcome"] == "crashed"}),
        "default_config_does_not_build": skipped,
    }


def _markdown(rows: list[dict], summary: dict) -> str:
    def cell(r: dict) -> str:
        if r["outcome"] == "simulated":
            return f"{r['peak_bytes'] / 2**30:.2f} GiB ({r['seconds']:.0f} s)"
        return f"{r['outcome']}: {(r.get('line') or r.get('error'))[:160]}"

    out = ["| model type | named | QLoRA nf4 step, 1 × 512 | generation nf4, 256 + 64 |", "|---|---|---|---|"]
    out += [f"| {row['model_type']} | {'yes' if row['named'] else ''} | {cell(row['qlora'])} | {cell(row['infer'])} |"
            for row in rows]
    out += ["", f"{summary['runs']} runs over {summary['types']} types: {summary['simulated']} simulated, "
                f"{summary['refused']} refused, {summary['crashed']} crashed; named families "
                f"{summary['named_simulated_percent']}% simulated."]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
