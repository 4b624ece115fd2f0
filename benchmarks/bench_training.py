"""Our training loop vs a plain TRL + peft script, identical settings, on the embedded model.

    .venv/bin/python benchmarks/bench_training.py [--steps 8] [--rounds 2] [--model embedded] [--json]

Each measurement is a fresh process; lab and plain alternate (A/B/A/B) so a noisy neighbour on a
shared CPU hurts both alike. Throughput for both = TRL's num_tokens (non-padding tokens seen) /
the Trainer's train_runtime, read from the same log_history. Target: lab/plain >= 0.95.
Also prints the demo figures: time of the default CPU demo run is `seconds` of the lab rows when
run with --steps 20.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLAIN = r"""
import json, sys, time, torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

model_dir, data, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.manual_seed(42)
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
rows = [json.loads(l) for l in open(data) if l.strip()]
def conv(r):
    user = r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")
    answer = {"role": "assistant", "content": r["output"]}
    return {"prompt": [{"role": "user", "content": user}], "completion": [answer]}
train = Dataset.from_list([conv(r) for r in rows])
args = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-3, max_length=256,
                 logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[],
                 use_cpu=not torch.cuda.is_available(), optim="adamw_torch",
                 lr_scheduler_type="linear", seed=42, data_seed=42, disable_tqdm=True)
peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tok, peft_config=peft_config)
trainer.train()
print("RESULT " + json.dumps(trainer.state.log_history))
"""


def throughput(history: list[dict]) -> dict:
    tokens = max(h.get("num_tokens", 0) for h in history)
    runtime = next(h["train_runtime"] for h in history if "train_runtime" in h)
    losses = [h["loss"] for h in history if "loss" in h]
    return {"tokens": tokens, "train_runtime": runtime, "tokens_per_second": tokens / runtime, "final_loss": losses[-1]}


def run_lab(model: str, steps: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "lab", "train", "--model", model, "--dataset", "style", "--max-steps", str(steps),
           "--eval-steps", "0", "--save-steps", "100000", "--output", str(out), "--json"]
    p = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "QLORA_LAB_RUNS": str(out.parent)}
    )
    if p.returncode:
        raise SystemExit(f"lab train failed:\n{p.stderr[-2000:]}")
    r = json.loads(p.stdout)
    info = json.loads((out / "lab_run.json").read_text())
    return {**throughput(info["log_history"]), "seconds": r["seconds"], "peak_memory_bytes": r["peak_memory_bytes"]}


def run_plain(model_dir: str, steps: int, out: Path) -> dict:
    script = out.parent / "plain_trl.py"
    script.write_text(PLAIN)
    data = ROOT / "assets" / "datasets" / "style" / "train.jsonl"
    p = subprocess.run(
        [sys.executable, str(script), model_dir, str(data), str(steps), str(out)], capture_output=True, text=True
    )
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    if p.returncode or line is None:
        raise SystemExit(f"plain TRL script failed:\n{p.stderr[-2000:]}")
    return throughput(json.loads(line[7:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from lab.models.sources import resolve_source

    model_dir = resolve_source(a.model).pretrained_id
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        for i in range(a.rounds):
            for kind in ("lab", "plain") if i % 2 == 0 else ("plain", "lab"):
                out = Path(tmp) / f"{kind}-{i}"
                r = run_lab(a.model, a.steps, out) if kind == "lab" else run_plain(model_dir, a.steps, out)
                rows.append({"kind": kind, "round": i, **r})
                print(
                    f"{kind:5s} round {i}: {r['tokens_per_second']:.1f} tok/s ({r['tokens']} tokens in "
                    f"{r['train_runtime']:.1f} s), "
                    f"final loss {r['final_loss']:.3f}",
                    file=sys.stderr,
                    flush=True,
                )
    lab_tps = statistics.median(r["tokens_per_second"] for r in rows if r["kind"] == "lab")
    plain_tps = statistics.median(r["tokens_per_second"] for r in rows if r["kind"] == "plain")
    result = {"model": a.model, "steps": a.steps, "rounds": a.rounds, "runs": rows, "lab_tokens_per_second": lab_tps,
              "plain_tokens_per_second": plain_tps, "ratio": lab_tps / plain_tps, "target": 0.95}
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"lab   median {lab_tps:.1f} tok/s\nplain median {plain_tps:.1f} tok/s\nratio {lab_tps / plain_tps:.3f} "
            f"(target >= 0.95)"
        )


if __name__ == "__main__":
    main()
