"""One training run, start to finish: load the base at its precision, add LoRA (peft), train
with TRL's SFTTrainer, and leave a reproducible adapter in the run folder.

    runs/<name>/
      adapter_config.json, adapter_model.safetensors   the adapter (plain peft format)
      tokenizer files, chat_template.jinja             the tokenizer the run used
      lab_run.json                                      everything needed to reproduce and compare it
      events.jsonl                                      the live event log (see events.py)
      checkpoints/checkpoint-N/                         the last checkpoints (kept after a crash)
      README.md, loss.png                               the model card (lab.publish.card) and its loss curve
      evaluation.json, hub.json                         later: the latest evaluation, where it was pushed
      merged/                                           optional: base + adapter merged (--merge), own card

`train(cfg)` is the CLI's code path, and the page starts the CLI as a subprocess, so the page
and the CLI run exactly the same code. Under `accelerate launch`/`torchrun` every rank runs it;
rank 0 alone writes the run folder (see distributed.py for what the ranks agree on).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import datasets
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from peft.optimizers import create_loraplus_optimizer
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, ProgressCallback, Trainer, set_seed

from lab.data import datasets as ds
from lab.environment import LIBRARIES, compute_dtype, device_type, library_version
from lab.errors import LabError
from lab.estimate.experts import as_written
from lab.estimate.recipe import trl_trainer
from lab.files import write_json_atomic
from lab.models.construct import install
from lab.models.loading import free_memory, load_tokenizer, out_of_memory
from lab.models.precision import bnb_config, get_precision, load_kwargs
from lab.models.sources import ModelSource, hub_error, resolve_source
from lab.publish.card import write_merged_card, write_run_card
from lab.training import distributed
from lab.training.callback import StopAndLogCallback, peak_memory_bytes
from lab.training.config import TrainConfig, repetition_warning, run_dir_for, to_cli_args
from lab.training.events import RUN_FILE, STOP_FILE, EventLog
from lab.training.predicted import Prediction, StepPeak, like_for_like
from lab.training.preflight import Checked, TrainData, check_run
from lab.training.runs import acquire_lock, release_lock
from lab.vocab import COMPUTE

# At import, before the run's prediction thread starts (it imports TRL too): through the one lock (trl_trainer).
SFTConfig, SFTTrainer = trl_trainer()

SAVE_HINT = "Free disk space or check permissions; checkpoints already saved are kept."


def open_run_dir(cfg: TrainConfig, source: ModelSource) -> Path:
    """Create the run folder and take the training lock (rank 0 only; the other ranks receive the path)."""
    run_dir = run_dir_for(cfg, source)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LabError(
            f"Could not create the run folder {run_dir}: {e.strerror or e}.", "Check disk space and permissions."
        ) from e
    acquire_lock(run_dir)
    return run_dir


# --------------------------------------------------------------------------- model + data
def load_base(source: ModelSource, precision: str, device: str):
    """The base model at `precision` on this process's device (each rank its own GPU under
    accelerate launch), and its tokenizer."""
    source.require_weights()
    tokenizer = load_tokenizer(source)
    kwargs = base_load_kwargs(precision, device)
    install()  # other threads keep their dtypes while this builds (issue 20)
    try:
        model = AutoModelForCausalLM.from_pretrained(source.pretrained_id, **kwargs)
    except torch.OutOfMemoryError as e:
        free_memory()
        raise out_of_memory(source, precision, device) from e
    except OSError as e:
        raise hub_error(source, e) from e
    return model, tokenizer


def base_load_kwargs(precision: str, device: str) -> dict:
    """`from_pretrained` kwargs for the base: each data-parallel rank on its own GPU; under
    FSDP, 4-bit weights stored in the compute dtype so FSDP can shard them alongside the
    unquantized ones (peft's FSDP + QLoRA recipe) and no device_map (FSDP places the shards)."""
    kwargs = load_kwargs(precision, COMPUTE, device)
    if device == "cuda":
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    quant = kwargs.get("quantization_config")
    if distributed.fsdp_enabled() and quant is not None and quant.load_in_4bit:
        quant.bnb_4bit_quant_storage = quant.bnb_4bit_compute_dtype
        kwargs["dtype"] = quant.bnb_4bit_compute_dtype
        kwargs.pop("device_map", None)
    return kwargs


def add_lora(model, cfg: TrainConfig, quantized: bool, target_modules):
    """`target_modules`: what peft_target_modules returned (a (modules, parameters) pair for fused experts,
    trained with lora_dropout 0: peft's ParamWrapper has no dropout)."""
    parameters: list[str] = []
    if isinstance(target_modules, tuple):
        target_modules, parameters = target_modules

    if quantized:
        # Freezes the base, makes inputs require grads for checkpointing; its fp32 upcast of
        # non-quantized weights is a no-op on CPU (they are fp32 already).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    lora = LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=0.0 if parameters else cfg.dropout,
        target_modules=target_modules or None, target_parameters=parameters or None,
        use_rslora=cfg.use_rslora, use_dora=cfg.use_dora, bias="none", task_type="CAUSAL_LM",
    )
    with as_written():
        return get_peft_model(model, lora)


def make_optimizer(model, cfg: TrainConfig, args):
    """The LoRA+ optimizer (peft) when loraplus_ratio > 0, else None (the Trainer builds `args.optim`).
    The optimizer class and its arguments come from transformers' own table of `optim` names."""
    if cfg.loraplus_ratio <= 0:
        return None

    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    kwargs.pop("lr", None)
    return create_loraplus_optimizer(model, cls, lr=cfg.learning_rate, loraplus_lr_ratio=cfg.loraplus_ratio,
                                     loraplus_weight_decay=cfg.weight_decay, **kwargs)


def warmup_steps(ratio: float) -> float:
    """TrainConfig's warmup ratio as TrainingArguments.warmup_steps, which reads a float in [0, 1) as a
    fraction of the total steps and anything from 1 up as a step count (transformers 5 has no warmup_ratio).
    Refuse a ratio it would misread as steps."""
    if not 0.0 <= ratio < 1.0:
        raise LabError(f"warmup_ratio={ratio} is not a fraction in [0, 1).", TrainConfig.help("warmup_ratio"))
    return float(ratio)


def sft_config(cfg: TrainConfig, run_dir: Path, device: str, has_eval: bool):
    dtype = compute_dtype(device)
    half = device == "cuda" and cfg.precision != "fp32"
    return SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps > 0 else -1,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length,
        activation_checkpointing=cfg.gradient_checkpointing,
        optim=cfg.optimizer,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=warmup_steps(cfg.warmup_ratio),
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.eval_steps if has_eval else None,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        bf16=half and dtype == torch.bfloat16,
        fp16=half and dtype == torch.float16,
        use_cpu=device == "cpu",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        # Every LoRA weight takes part in every forward: DDP's search for unused ones is wasted work.
        ddp_find_unused_parameters=False,
    )


# --------------------------------------------------------------------------- the run
def train(cfg: TrainConfig, echo=None, checked: Checked | None = None) -> dict:
    """Run one training described by `cfg`; returns the CLI's JSON payload. Raises LabError on
    bad input or a failed run (after recording it in the run folder). `checked`: what
    lab.training.preflight.check_run already found for `cfg` (the CLI checks before it imports this module)."""
    checked = checked or check_run(cfg)
    source, device = checked.source, checked.device
    main = distributed.is_main_process()
    echo = (echo or (lambda msg: print(msg, file=sys.stderr, flush=True))) if main else (lambda msg: None)
    run_dir = distributed.from_main(lambda: open_run_dir(cfg, source), device)
    try:
        return _train_locked(cfg, source, checked.targets, checked.data, run_dir, device,
                             EventLog(run_dir) if main else None, echo)
    finally:
        if main:
            release_lock()


def _train_locked(cfg: TrainConfig, source: ModelSource, targets, data: TrainData, run_dir: Path, device: str,
                  log: EventLog | None, echo) -> dict:
    started = time.time()
    precision = get_precision(cfg.precision)
    info = run_record(cfg, source, precision.name, data, run_dir, device)
    callback = StopAndLogCallback(log, run_dir, echo=echo)
    trainer = prediction = peak = None
    status, error, hint = "failed", None, None
    with stop_on_signals(callback):
        try:
            if log:
                log.write("start", pid=os.getpid(), name=run_dir.name, config=cfg.to_dict(), command=info["command"],
                          processes=info["processes"])
                write_json_atomic(run_dir / RUN_FILE, info, SAVE_HINT)
                prediction = Prediction(cfg, device)  # computed while the base loads
            if data.train.problems:
                echo(
                    f"skipping {len(data.train.problems)} malformed row(s): {ds.describe_problems(data.train.problems)}"
                )
            repeats = repetition_warning(cfg, len(data.train.rows))
            if repeats:
                echo(f"warning: {repeats}")
            echo(f"loading {source.display_name} at {precision.label} on {device}"
                 + (f" ({info['processes']} processes)" if info["processes"] > 1 else ""))
            phase(log, f"Loading {source.display_name} at {precision.label}"
                  + (" (quantizing every Linear layer as it loads)" if precision.quantized else ""))
            trainer = build_trainer(cfg, source, targets, data, run_dir, device, info, callback, log, echo)
            peak = record_prediction(trainer, prediction, info, run_dir, device) if log else None
            status, error = run_training(trainer, callback, info)
            save_outputs(trainer, cfg, run_dir, info, log, echo)
        except Exception as e:
            status, error, hint = classify_failure(e, cfg, trainer.state.global_step if trainer else 0, run_dir)
            if not isinstance(e, (LabError, OSError, torch.OutOfMemoryError)):
                print(traceback.format_exc(), file=sys.stderr, flush=True)  # a bug: every rank shows its traceback
    result = run_result(trainer, callback, info, run_dir, status, error, hint, round(time.time() - started, 2))
    if prediction is not None:  # a probe still measuring stops now: the run is not held for its own prediction
        info["prediction"] = prediction.stop()
    if peak is not None:
        peak.close()
        info["measured_peak"] = like_for_like(cfg, device, peak.to_json())
    if log:
        finish_record(info, result, trainer, run_dir, log, echo)
    if status == "failed":
        raise LabError(f"Training failed: {error}", hint)
    return result


PREDICTION_WAIT = 10.0  # seconds the first step waits, at most, for the predicted peak still computing after the load


def record_prediction(trainer, prediction: Prediction, info: dict, run_dir: Path, device: str) -> StepPeak:
    """Before the first step: the prediction made while the base loaded goes into lab_run.json ("prediction"),
    and one steady-state step's measured peak is set up (lab.training.predicted)."""
    peak = StepPeak(device)
    peak.attach(trainer)
    info["prediction"] = prediction.peak(PREDICTION_WAIT)
    write_json_atomic(run_dir / RUN_FILE, info, SAVE_HINT)
    return peak


def phase(log: EventLog | None, message: str) -> None:
    """What the run is doing now, for the page's live panel while no step has been logged yet."""
    if log:
        log.write("phase", message=message)


def run_record(cfg: TrainConfig, source: ModelSource, precision: str, data: TrainData, run_dir: Path,
               device: str) -> dict:
    """lab_run.json as the run starts: everything needed to reproduce and compare it."""
    p = get_precision(precision)
    processes = distributed.world_size()
    command = [sys.executable, "-m", "lab", "train", *to_cli_args(cfg)]
    if processes > 1:  # the launch that reproduces it: same processes, same per-process batch
        launch = distributed.launch_command(cfg, processes, "fsdp" if distributed.fsdp_enabled() else "ddp", device)
        command = launch.argv
    train_check, eval_check = data.train, data.eval
    return {
        "name": run_dir.name, "status": "running", "error": None, "created": time.time(), "run_dir": str(run_dir),
        "base_model": {"spec": cfg.model, "display_name": source.display_name, "kind": source.kind,
                       "pretrained_id": source.pretrained_id},
        "precision": p.name, "precision_label": p.label, "device": device, "processes": processes,
        "compute_dtype": str(compute_dtype(device)).removeprefix("torch."),
        "bnb_config": _bnb_dict(p.name, device),
        "lora": {"r": cfg.r, "alpha": cfg.alpha, "dropout": cfg.dropout, "targets": cfg.targets,
                 "use_rslora": cfg.use_rslora, "use_dora": cfg.use_dora, "loraplus_ratio": cfg.loraplus_ratio},
        "dataset": {"name": ds.dataset_name(cfg.dataset), "source": cfg.dataset, "format": train_check.format,
                    "train_rows": len(train_check.rows), "test_rows": len(eval_check.rows) if eval_check else 0,
                    "eval_rows_used": min(len(eval_check.rows), cfg.max_eval_rows) if eval_check else 0,
                    "skipped_rows": [str(p) for p in train_check.problems]},
        "config": cfg.to_dict(), "command": command,
        "versions": {lib: library_version(lib) for lib in LIBRARIES},
    }


def build_trainer(cfg: TrainConfig, source: ModelSource, targets, data: TrainData, run_dir: Path, device: str,
                  info: dict, callback: StopAndLogCallback, log: EventLog | None, echo):
    """Load the base, add LoRA, tokenize the data and build the SFTTrainer; records sizes and load time in `info`."""
    datasets.disable_progress_bars()

    precision = get_precision(cfg.precision)
    # Before the model loads: a max length that leaves no answer token fails now, with what would work.
    short = ds.check_max_length(load_tokenizer(source), data.train.rows, cfg.max_length)
    if short:
        echo(f"warning: {short}")
    t0 = time.time()
    model, tokenizer = load_base(source, precision.name, device)
    set_seed(cfg.seed)  # LoRA's A matrices are initialised here, before the Trainer seeds: same seed, same run
    model = add_lora(model, cfg, precision.quantized, targets)
    trainable, total = model.get_nb_trainable_parameters()
    info["lora"].update(target_modules=sorted(model.peft_config["default"].target_modules or []),
                        trainable_params=trainable, total_params=total)
    info["durations"] = {"load_seconds": round(time.time() - t0, 2)}
    phase(log, f"Adding LoRA and tokenizing {len(data.train.rows)} training rows")
    train_ds = Dataset.from_list([ds.training_example(tokenizer, r) for r in data.train.rows])
    eval_ds = (Dataset.from_list([ds.training_example(tokenizer, r) for r in data.eval.rows[: cfg.max_eval_rows]])
               if data.eval else None)
    info["dataset"]["token_lengths"] = ds.length_stats(ds.token_lengths(tokenizer, data.train.rows), cfg.max_length)
    if log:
        log.write("loaded", seconds=info["durations"]["load_seconds"], trainable_params=trainable, total_params=total,
                  train_rows=len(train_ds), eval_rows=len(eval_ds) if eval_ds is not None else 0)
    echo(f"LoRA: {trainable:,} trainable of {total:,} parameters; {len(train_ds)} training rows")

    phase(log, "Building the trainer (TRL tokenizes and packs the examples)")
    args = sft_config(cfg, run_dir, device, eval_ds is not None)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=[callback],
        optimizers=(make_optimizer(model, cfg, args), None),
    )
    # The Trainer prints every log dict to stdout; the event log and our one-line progress replace it
    # (stdout stays clean for --json).
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if precision.quantized and device == "cpu":
        # TRL casts a quantized model's adapter weights to bf16 (the QLoRA paper's GPU recipe); on a CPU
        # bf16 matmuls are ~20x slower, so train them in float32 like the rest of the CPU compute.
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return trainer


def run_training(trainer, callback: StopAndLogCallback, info: dict) -> tuple[str, str | None]:
    """trainer.train(); (status, error): finished, or stopped on request (a second signal interrupts the step)."""
    t1 = time.time()
    phase(callback.log, "Training: the first step is running (the first steps are the slowest)")
    try:
        trainer.train()
        status, error = ("stopped" if callback.stop_reason else "finished"), None
    except KeyboardInterrupt:
        status, error = "stopped", "Interrupted (second stop signal) before the step finished."
    info["durations"]["train_seconds"] = round(time.time() - t1, 2)
    return status, error


def save_outputs(trainer, cfg: TrainConfig, run_dir: Path, info: dict, log: EventLog | None, echo) -> None:
    """The adapter and tokenizer into the run folder, then the optional merged export (rank 0)."""
    t2 = time.time()
    phase(log, "Saving the adapter")
    save_adapter(trainer, run_dir)
    if log:
        log.write("saved", adapter_dir=str(run_dir))
    info["durations"]["save_seconds"] = round(time.time() - t2, 2)
    if cfg.merge and log:
        echo("merging the adapter into the base model")
        phase(log, "Merging the adapter into the base model and exporting it")
        t3 = time.time()
        merged = merge_and_export(run_dir)
        info["merged_dir"] = str(merged)
        info["durations"]["merge_seconds"] = round(time.time() - t3, 2)
        log.write("merged", path=str(merged))


def save_adapter(trainer, run_dir: Path) -> None:
    """adapter_config.json + adapter_model.safetensors + tokenizer. Every rank calls it: under FSDP the
    adapter's shards are gathered into a full state dict first (peft's FSDP recipe); rank 0 writes."""
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(run_dir))
    if distributed.is_main_process():
        (run_dir / "training_args.bin").unlink(
            missing_ok=True
        )  # a pickle of the Trainer's arguments: lab_run.json has them


@contextmanager
def stop_on_signals(callback: StopAndLogCallback):
    """SIGTERM/SIGINT stop the run like the STOP file (finish the step, save, exit); a second one interrupts."""
    def on_signal(signum, frame):
        if callback.stop_reason:
            raise KeyboardInterrupt
        callback.stop_reason = f"signal {signal.Signals(signum).name}"

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread (tests may call train() from a thread)
            pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def classify_failure(exc: BaseException, cfg: TrainConfig, step: int, run_dir: Path) -> tuple[str, str, str | None]:
    """(status, error, hint) for an exception that ended a run: what the person sees and can do about it."""
    if isinstance(exc, torch.OutOfMemoryError):
        return ("failed", f"Out of memory at step {step} (batch size {cfg.batch_size}, max length {cfg.max_length}).",
                "Try a smaller batch size (with more gradient accumulation to keep the effective batch), a shorter max "
                "length, gradient checkpointing, or a 4-bit precision. " + _last_checkpoint_note(run_dir))
    if isinstance(exc, LabError):
        return "failed", exc.message, exc.hint
    if isinstance(exc, OSError):
        return (
            "failed",
            f"Could not write to disk: {exc.strerror or exc} ({getattr(exc, 'filename', '') or run_dir}).",
            "Free disk space or check permissions. " + _last_checkpoint_note(run_dir),
        )
    # a library error we did not anticipate: record it, never lose the run folder
    return "failed", f"{type(exc).__name__}: {exc}", _last_checkpoint_note(run_dir)


def run_result(trainer, callback: StopAndLogCallback, info: dict, run_dir: Path, status: str, error: str | None,
               hint: str | None, seconds: float) -> dict:
    """The CLI's JSON payload."""
    return {
        "adapter_dir": str(run_dir), "name": run_dir.name, "status": status, "error": error, "hint": hint,
        "steps": trainer.state.global_step if trainer else 0, "processes": info["processes"],
        "losses": list(callback.losses), "eval_losses": [loss for _, loss in callback.eval_losses],
        "final_loss": callback.losses[-1] if callback.losses else None,
        "final_eval_loss": callback.eval_losses[-1][1] if callback.eval_losses else None,
        "seconds": seconds, "train_seconds": info.get("durations", {}).get("train_seconds"),
        "tokens": callback.tokens, "tokens_per_second": round(callback.tokens_per_second, 2),
        "peak_memory_bytes": peak_memory_bytes(), "stop_reason": callback.stop_reason,
    }


SUMMARY_KEYS = (
    "steps",
    "final_loss",
    "final_eval_loss",
    "tokens",
    "tokens_per_second",
    "peak_memory_bytes",
    "stop_reason",
)


def finish_record(info: dict, result: dict, trainer, run_dir: Path, log: EventLog, echo) -> None:
    """Rank 0: the final lab_run.json, then the end event (the page reads the run as over from then on).
    A failure to record is reported, never raised: the adapter is already saved."""
    info.update(status=result["status"], error=result["error"], hint=result["hint"], finished=time.time(),
                log_history=list(trainer.state.log_history) if trainer else [],
                summary={k: result[k] for k in SUMMARY_KEYS})
    info.setdefault("durations", {})["total_seconds"] = result["seconds"]
    try:
        write_json_atomic(run_dir / RUN_FILE, info, SAVE_HINT)
    except LabError as e:
        result["error"] = result["error"] or e.message
    if result["status"] != "failed" and (run_dir / "adapter_config.json").is_file():
        write_cards(run_dir, info.get("merged_dir"), echo)
    try:
        (run_dir / STOP_FILE).unlink(missing_ok=True)
        log.write("end", status=result["status"], error=result["error"], hint=result["hint"], summary=result)
    except (LabError, OSError) as e:
        echo(f"could not record the end of the run: {e}")


def write_cards(run_dir: Path, merged_dir: str | None, echo) -> None:
    """The model cards (run folder, merged export) from the final record; a card that cannot be written is
    reported, never fatal: the adapter is saved."""

    try:
        write_run_card(run_dir)
        if merged_dir:
            write_merged_card(run_dir, Path(merged_dir))
    except Exception as e:  # a card is a convenience; the run's outcome stands
        echo(f"could not write the model card: {type(e).__name__}: {e}")


def _bnb_dict(precision: str, device: str) -> dict | None:
    cfg = bnb_config(precision, device)
    if cfg is None:
        return None
    d = cfg.to_dict()
    return {k: str(v) if isinstance(v, torch.dtype) else v for k, v in d.items()}


def _last_checkpoint_note(run_dir: Path) -> str:
    ckpts = sorted((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if ckpts:
        return f"The last checkpoint is kept: {ckpts[-1]}."
    return "No checkpoint had been saved yet."


# --------------------------------------------------------------------------- merge and export
def merge_and_export(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Reload the run's base model at 16/32-bit (never 4-bit: merging into quantized weights loses
    the update), merge the adapter into it and save a standalone model + tokenizer."""
    run_dir = Path(run_dir)
    info = json.loads((run_dir / RUN_FILE).read_text())
    source = resolve_source(info["base_model"]["spec"])
    device = device_type()
    dtype = compute_dtype(device)
    out_dir = Path(out_dir) if out_dir else run_dir / "merged"
    install()  # the server may be generating in other threads (issue 20)
    try:
        base = AutoModelForCausalLM.from_pretrained(
            source.pretrained_id, dtype=dtype, device_map="cpu" if device == "cpu" else {"": 0}
        )
    except OSError as e:
        raise hub_error(source, e) from e
    merged = PeftModel.from_pretrained(base, str(run_dir)).merge_and_unload()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(run_dir).save_pretrained(tmp)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LabError(
            f"Could not write the merged model to {out_dir}: {e.strerror or e}.",
            "Free disk space; the adapter itself is saved.",
        ) from e

    write_merged_card(run_dir, out_dir)  # its own card: a standalone model, loaded without peft
    return out_dir
