"""Training: config validation, the CLI run on a tiny model, Stop, the lock, crash detection, bad
input (malformed rows, OOM, disk write failure), QLoRA options, merge-and-export.

Runs use the tiny 2-layer random Llama (a few seconds each); the embedded-model demo run is
measured by benchmarks/bench_training.py, not here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lab.errors import LabError
from lab.training import runs as R
from lab.training.config import FIELDS, TrainConfig, add_arguments, default_config, from_args, run_name, to_cli_args
from lab.training.events import read_events, request_stop
from lab.training.runner import merge_and_export, train
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
QUICK = dict(max_steps=3, batch_size=2, max_length=64, eval_steps=0, save_steps=100, logging_steps=1)


def quick(tiny_model_dir, tmp_path, name="run", **kw) -> TrainConfig:
    return default_config(
        "cpu", **{"model": str(tiny_model_dir), "dataset": "style", "output": str(tmp_path / name), **QUICK, **kw}
    )


def cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", "train", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


# --------------------------------------------------------------------------- config
def test_every_option_has_help_and_cli_flags_round_trip():
    assert all(len(f.metadata["help"]) > 20 for f in FIELDS.values())
    parser = argparse.ArgumentParser()
    add_arguments(parser, default_config("cpu"))
    cfg = replace(
        default_config("cpu"), r=8, use_dora=True, targets="q_proj,v_proj", learning_rate=5e-4, precision="nf4"
    )
    assert from_args(parser.parse_args(to_cli_args(cfg))) == cfg
    assert parser.parse_args(["--lr", "0.01"]).learning_rate == 0.01


def test_device_aware_defaults_and_validation():
    cpu, gpu = default_config("cpu"), default_config("cuda")
    assert cpu.precision == "fp32" and cpu.optimizer == "adamw_torch" and not cpu.gradient_checkpointing
    assert gpu.precision == "nf4-dq" and gpu.optimizer == "paged_adamw_8bit" and gpu.gradient_checkpointing
    gpu.validate("cuda")
    with pytest.raises(LabError, match="paged_adamw_8bit needs a CUDA GPU"):
        replace(cpu, optimizer="paged_adamw_8bit").validate("cpu")
    with pytest.raises(LabError, match="r=0 is below its minimum 1"):
        replace(cpu, r=0).validate("cpu")
    with pytest.raises(LabError, match="precision='q3' is not one of"):
        replace(cpu, precision="q3").validate("cpu")
    with pytest.raises(LabError, match="bf16 trains ~20x slower"):
        replace(cpu, precision="bf16").validate("cpu")


def test_run_name_follows_the_convention():
    cfg = replace(default_config("cpu"), r=8, precision="nf4")
    when = time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1))
    assert (
        run_name(cfg, "SmolLM2-135M-Instruct", "style", when)
        == "SmolLM2-135M-Instruct-style_SFT_LoRa8_NF4-20260102-030405"
    )


# --------------------------------------------------------------------------- the CLI, end to end
@pytest.mark.training
def test_cli_trains_and_leaves_an_adapter_plain_peft_loads(tiny_model_dir, tmp_path):
    out = tmp_path / "cli-run"
    p = cli("--model", str(tiny_model_dir), "--dataset", "style", "--output", str(out), "--max-steps", "4",
            "--batch-size", "2", "--max-length", "64", "--eval-steps", "2", "--save-steps", "2", "--r", "4", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert {"adapter_dir", "steps", "losses", "final_loss", "seconds", "tokens_per_second", "peak_memory_bytes"} <= set(
        r
    )
    assert (
        r["adapter_dir"] == str(out)
        and r["steps"] == 4
        and len(r["losses"]) == 4
        and r["final_loss"] == r["losses"][-1]
    )
    assert r["tokens_per_second"] > 0 and r["peak_memory_bytes"] > 0 and len(r["eval_losses"]) == 2
    for f in ("adapter_config.json", "adapter_model.safetensors", "lab_run.json", "events.jsonl", "tokenizer.json"):
        assert (out / f).is_file(), f
    info = json.loads((out / "lab_run.json").read_text())
    assert info["status"] == "finished" and info["base_model"]["spec"] == str(tiny_model_dir)
    assert info["precision"] == default_config().precision  # the CLI's default for this machine (fp32 on a CPU)
    assert info["lora"]["r"] == 4 and info["dataset"]["name"] == "style"
    assert info["dataset"]["train_rows"] == 60 and info["versions"]["trl"] and info["durations"]["train_seconds"] > 0
    assert len([h for h in info["log_history"] if "loss" in h]) == 4
    types = [e["type"] for e in read_events(out)]
    assert (
        types[0] == "start"
        and types[-1] == "end"
        and types.count("log") == 4
        and "checkpoint" in types
        and "eval" in types
    )

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = base(ids).logits
        model = PeftModel.from_pretrained(base, str(out))
        after = model(ids).logits
    assert model.peft_config["default"].r == 4
    assert not torch.allclose(before, after)  # the trained B matrices are no longer zero

    # the run folder alone says how it ended (what the Training page reads)
    assert R.run_status(out).status == "finished"


REFUSALS = """
import json, sys
from lab.cli import main
codes = [main(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps([codes, sorted(m for m in ("trl", "peft", "bitsandbytes") if m in sys.modules)]))
"""


@pytest.mark.slow
def test_a_refused_run_says_why_before_the_training_libraries_load(tiny_model_dir, tmp_path, monkeypatch):
    """`lab train` checks everything it can before it imports TRL, peft and bitsandbytes (seconds): a malformed
    dataset and a device another run holds are refused in one line each, with none of them imported, and no
    run folder is made."""
    monkeypatch.setenv("QLORA_LAB_RUNS", str(tmp_path / "runs"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{oops\n')
    base = ["train", "--model", str(tiny_model_dir), "--max-steps", "1"]
    argvs = [[*base, "--dataset", str(bad), "--output", str(tmp_path / "runs" / "bad")],
             [*base, "--dataset", "style", "--output", str(tmp_path / "runs" / "busy")]]
    R.acquire_lock(tmp_path / "runs" / "holder")  # another run holds the device
    try:
        p = subprocess.run([sys.executable, "-c", REFUSALS, json.dumps(argvs)], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    finally:
        R.release_lock()
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [[2, 2], []]  # both refused; TRL, peft and bitsandbytes never imported
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "line 2: not valid JSON" in errors[0], p.stderr
    assert "Another training is running: holder" in errors[1], p.stderr
    assert [x.name for x in (tmp_path / "runs").iterdir() if not x.name.startswith(".")] == []


@pytest.mark.training
def test_malformed_rows_refused_or_skipped_from_the_cli(tiny_model_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(
        '{"instruction": "a", "output": "b"}\n{oops\n{"instruction": "c"}\n{"instruction": "d", "output": "e"}\n'
    )
    p = cli(
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(data),
        "--output",
        str(tmp_path / "refused"),
        "--max-steps",
        "1",
    )
    assert p.returncode == 2
    assert (
        "line 2: not valid JSON" in p.stderr and "line 3: missing 'output'" in p.stderr and "Traceback" not in p.stderr
    )
    assert not (tmp_path / "refused").exists()
    cfg = quick(tiny_model_dir, tmp_path, "skipped", dataset=str(data), skip_bad_rows=True, max_steps=1)
    r = train(cfg)
    assert r["status"] == "finished"
    assert json.loads((tmp_path / "skipped" / "lab_run.json").read_text())["dataset"]["skipped_rows"] == [
        "line 2: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        "line 3: missing 'output' for Alpaca (instruction / input / output) form (has: 'instruction')"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(LabError, match="empty"):
        train(quick(tiny_model_dir, tmp_path, "empty", dataset=str(empty)))


@pytest.mark.slow
def test_the_run_imports_trl_before_its_prediction_thread_starts():
    """trl's lazy module, first imported from two threads at once (the prediction thread's simulation imports
    trl.trainer.utils while the main thread builds the trainer), raised "cannot import name 'SFTTrainer' from 'trl'"
    (4 times in 6 in a two-thread reproduction; once in a loaded suite run). The run's module imports it first."""
    code = ("import sys, lab.training.runner; "
            "print(all(m in sys.modules for m in ('trl.trainer.sft_trainer', 'trl.trainer.utils')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.stdout.strip() == "True", done.stderr[-2000:]


TRL_FROM_TWO_THREADS = """
import sys, threading
import lab.estimate.simulate, lab.training.config, lab.training.predicted, lab.models.loading, lab.publish.card
assert "trl" not in sys.modules  # a server before anyone simulated or merged
from lab.estimate.simulate import trl_device_paths
errors, both = [], threading.Barrier(2)

def merge_page():  # the Training page's merge imports the runner (TRL's trainer) ...
    both.wait()
    try:
        import lab.training.runner  # noqa: F401
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")

def calculator():  # ... while another session's calculator simulates (TRL's fused head) for the first time
    both.wait()
    try:
        with trl_device_paths("cuda"):
            pass
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")

threads = [threading.Thread(target=f) for f in (merge_page, calculator)]
[t.start() for t in threads]
[t.join() for t in threads]
print(errors)
"""


@pytest.mark.slow
def test_trl_first_imported_from_two_server_threads_at_once():
    """A server imports TRL on first use: from the merge page's thread (the runner) and from a simulation thread at
    once, the merge raised "cannot import name 'SFTConfig' from 'trl'" (3 of 3 reproductions); every first import of
    TRL goes through lab.estimate.recipe.trl_trainer, one thread at a time."""
    done = subprocess.run([sys.executable, "-c", TRL_FROM_TWO_THREADS], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "[]", (done.stdout, done.stderr[-2000:])


# --------------------------------------------------------------------------- process control
def logging_or_ended(run_dir: Path, pid: int) -> R.RunStatus:
    """The run's status once it has logged a step or ended: a run that failed at its start fails the test at once,
    with its process log, rather than after minutes of waiting for a step that will never come."""
    return wait_for(lambda: (lambda s: s if s.logs or not s.active else None)(R.run_status(run_dir, pid=pid)),
                    timeout=300)
@pytest.mark.training
def test_stop_lock_and_reattach_while_running(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_LAB_RUNS", str(tmp_path / "runs"))
    run_dir = tmp_path / "runs" / "stoppable"
    args = to_cli_args(quick(tiny_model_dir, tmp_path, max_steps=500, save_steps=1000), exclude=("output",))
    proc = R.start_training(args, run_dir)
    try:
        s = logging_or_ended(run_dir, proc.pid)
        assert s.logs, (run_dir / "process.log").read_text()
        assert s.status == "running" and s.pid == proc.pid and s.max_steps == 500
        active = R.active_run()  # what a refreshed page / second tab re-attaches to
        assert active is not None and active.run_dir == run_dir
        with pytest.raises(LabError, match="Another training is running: stoppable"):
            R.start_training(args, tmp_path / "runs" / "second")
        p = cli(*args, "--output", str(tmp_path / "runs" / "third"))
        assert p.returncode == 2 and "Another training is running" in p.stderr
        request_stop(run_dir)
        assert R.run_status(run_dir).status in ("stopping", "stopped")
        proc.wait(300)
    finally:
        if proc.poll() is None:
            proc.kill()
    s = R.run_status(run_dir)
    assert s.status == "stopped" and 0 < s.step < 500
    assert (run_dir / "adapter_model.safetensors").is_file() and not (run_dir / "STOP").exists()
    assert R.read_lock() is None and R.active_run() is None
    assert any(e["type"] == "stop_requested" for e in s.events)
    assert [x.name for x in R.list_runs()] == ["stoppable"]


@pytest.mark.training
def test_sigterm_stops_and_a_killed_process_reads_as_failed(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_LAB_RUNS", str(tmp_path / "runs"))
    args = to_cli_args(quick(tiny_model_dir, tmp_path, max_steps=500, save_steps=2), exclude=("output",))
    term = R.start_training(args, tmp_path / "runs" / "sigterm")
    try:
        s = logging_or_ended(tmp_path / "runs" / "sigterm", term.pid)
        assert s.logs, (tmp_path / "runs" / "sigterm" / "process.log").read_text()
        term.send_signal(signal.SIGTERM)
        term.wait(300)
    finally:
        if term.poll() is None:
            term.kill()
    s = R.run_status(tmp_path / "runs" / "sigterm")
    assert s.status == "stopped" and s.end["summary"]["stop_reason"] == "signal SIGTERM"

    killed = R.start_training(args, tmp_path / "runs" / "killed")
    try:
        wait_for(lambda: [e for e in R.run_status(tmp_path / "runs" / "killed").events if e["type"] == "checkpoint"])
        assert R.run_status(tmp_path / "runs" / "killed").status == "running"
        killed.kill()
        killed.wait(180)
    finally:
        if killed.poll() is None:
            killed.kill()
    s = R.run_status(tmp_path / "runs" / "killed")
    assert s.status == "failed" and "exited without writing an end event" in s.error
    assert list((tmp_path / "runs" / "killed" / "checkpoints").glob("checkpoint-*"))  # nothing saved is lost
    # the dead process's lock does not block the next run
    assert R.read_lock() is None
    R.acquire_lock(tmp_path / "runs" / "next")
    R.release_lock()


# --------------------------------------------------------------------------- failures mid-run (fault injection)
@pytest.mark.training
def test_out_of_memory_mid_run_keeps_the_last_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    from trl import SFTTrainer

    real_step = SFTTrainer.training_step

    def step(self, *a, **k):
        if self.state.global_step >= 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(self, *a, **k)

    monkeypatch.setattr(SFTTrainer, "training_step", step)
    cfg = quick(tiny_model_dir, tmp_path, "oom", max_steps=5, save_steps=1)
    with pytest.raises(LabError, match="Out of memory at step 2") as e:
        train(cfg)
    assert (
        "smaller batch size" in str(e.value)
        and "gradient checkpointing" in str(e.value)
        and "checkpoint-2" in str(e.value)
    )
    s = R.run_status(tmp_path / "oom")
    assert (
        s.status == "failed"
        and (tmp_path / "oom" / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors").is_file()
    )
    assert json.loads((tmp_path / "oom" / "lab_run.json").read_text())["status"] == "failed"


@pytest.mark.training
def test_disk_write_failure_is_a_clear_failed_status(tiny_model_dir, tmp_path, monkeypatch):
    import errno

    from peft import PeftModel

    def full_disk(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "disk" / "adapter_model.safetensors"))

    monkeypatch.setattr(PeftModel, "save_pretrained", full_disk)
    with pytest.raises(LabError, match="Could not write to disk: No space left on device") as e:
        train(quick(tiny_model_dir, tmp_path, "disk", max_steps=2))
    assert "Free disk space" in str(e.value)
    s = R.run_status(tmp_path / "disk")
    assert s.status == "failed" and "No space left" in s.error and len(s.logs) == 2


# --------------------------------------------------------------------------- QLoRA options, merge
@pytest.mark.training
def test_qlora_nf4_with_dora_rslora_loraplus(tiny_model_dir, tmp_path):
    r = train(
        quick(
            tiny_model_dir,
            tmp_path,
            "qlora",
            precision="nf4",
            use_dora=True,
            use_rslora=True,
            loraplus_ratio=4.0,
            targets="q_proj,v_proj",
            max_steps=2,
        )
    )
    assert r["status"] == "finished" and all(x == x for x in r["losses"])  # finite, not NaN
    ac = json.loads((tmp_path / "qlora" / "adapter_config.json").read_text())
    assert ac["use_dora"] and ac["use_rslora"] and sorted(ac["target_modules"]) == ["q_proj", "v_proj"]
    info = json.loads((tmp_path / "qlora" / "lab_run.json").read_text())
    assert info["bnb_config"]["bnb_4bit_quant_type"] == "nf4" and info["bnb_config"]["load_in_4bit"]


@pytest.fixture(scope="module")
def same_seed_runs(tiny_model_dir, tmp_path_factory) -> tuple[dict, dict, Path]:
    """Two runs with one seed and one setting (trained once for the two tests below). The high learning rate
    makes the adapter move the logits, so the merge test compares something."""
    folder = tmp_path_factory.mktemp("same-seed")
    a = train(quick(tiny_model_dir, folder, "a", max_steps=2, learning_rate=5e-2))
    b = train(quick(tiny_model_dir, folder, "b", max_steps=2, learning_rate=5e-2))
    return a, b, folder / "a"


@pytest.mark.training
def test_same_seed_same_run(same_seed_runs):
    a, b, _ = same_seed_runs
    assert a["losses"] == b["losses"]


@pytest.mark.training
def test_merge_and_export_matches_the_adapter(tiny_model_dir, same_seed_runs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    shutil.copytree(same_seed_runs[2], tmp_path / "m")  # this test's own copy: merging writes merged/ into it
    merged_dir = merge_and_export(tmp_path / "m")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(merged_dir)(ids).logits
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(tmp_path / "m"))(
            ids
        ).logits
    assert torch.allclose(merged, adapted, atol=1e-4)
    assert (merged_dir / "tokenizer.json").is_file()


def test_base_load_kwargs_for_data_parallel_and_fsdp(monkeypatch):
    import torch

    from lab.training.runner import base_load_kwargs

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    ddp = base_load_kwargs("nf4-dq", "cuda")
    assert ddp["device_map"] == {"": 1}  # each rank on its own GPU
    assert ddp["quantization_config"].bnb_4bit_quant_storage == torch.uint8

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    fsdp = base_load_kwargs("nf4-dq", "cuda")
    q = fsdp["quantization_config"]
    assert "device_map" not in fsdp  # FSDP places the shards
    assert q.bnb_4bit_quant_storage == q.bnb_4bit_compute_dtype == fsdp["dtype"]
    assert "quantization_config" not in base_load_kwargs("fp32", "cpu")


def test_failures_are_classified_with_what_to_do(tmp_path):
    from lab.training.runner import classify_failure

    cfg = default_config("cpu", batch_size=8, max_length=512)
    (tmp_path / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    (tmp_path / "checkpoints" / "checkpoint-9").mkdir()
    status, error, hint = classify_failure(torch.OutOfMemoryError("CUDA out of memory"), cfg, 12, tmp_path)
    assert status == "failed" and error == "Out of memory at step 12 (batch size 8, max length 512)."
    assert "smaller batch size" in hint and hint.endswith(f"{tmp_path / 'checkpoints' / 'checkpoint-10'}.")
    assert classify_failure(LabError("bad thing", "do this"), cfg, 0, tmp_path) == ("failed", "bad thing", "do this")
    status, error, hint = classify_failure(PermissionError(13, "Permission denied", "/x/y"), cfg, 3, tmp_path)
    assert error == "Could not write to disk: Permission denied (/x/y)." and hint.startswith("Free disk space")
    status, error, hint = classify_failure(KeyError("lm_head"), cfg, 3, tmp_path / "empty")
    assert error == "KeyError: 'lm_head'" and hint == "No checkpoint had been saved yet."


def test_a_run_that_repeats_its_rows_is_warned_about_memorising():
    from lab.training.config import REPEATS_WARN, planned_steps, repetition_warning

    one_row = default_config("cpu", max_steps=8, batch_size=2, grad_accum=1)
    assert "each of its 1 training row about 16 times" in repetition_warning(one_row, 1)
    assert repetition_warning(one_row, 60) is None  # 16 rows seen of 60: under one pass
    epochs = default_config("cpu", max_steps=-1, epochs=REPEATS_WARN + 1.0, batch_size=4)
    assert planned_steps(epochs, 40) == 110 and "about 11 times" in repetition_warning(epochs, 40)
