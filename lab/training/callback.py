"""The run's side of the event log: the TrainerCallback that writes it and stops when asked, and the
memory peak each logged step reports.

Apart from lab.training.events so that reading a run (pages, the queue's dispatcher processes) imports
neither torch nor transformers.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from lab.training import distributed
from lab.training.events import STOP_FILE, EventLog

_EARLIER_CUDA_PEAK = 0  # the allocator's peak before a reset_cuda_peak(): this process's peak stays process-wide


def reset_cuda_peak() -> None:
    """Reset CUDA's peak counter to measure one step (lab.training.predicted), keeping the process's peak so far."""
    global _EARLIER_CUDA_PEAK
    _EARLIER_CUDA_PEAK = max(_EARLIER_CUDA_PEAK, int(torch.cuda.max_memory_allocated()))
    torch.cuda.reset_peak_memory_stats()


def peak_memory_bytes() -> int:
    """Peak memory of this process: CUDA allocator peak on a GPU, peak resident set size on CPU."""
    if torch.cuda.is_available():
        return max(_EARLIER_CUDA_PEAK, int(torch.cuda.max_memory_allocated()))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


class StopAndLogCallback(TrainerCallback):
    """Writes log/eval/checkpoint events and stops training when asked.

    A stop request is a STOP file in the run folder (the page writes it; it survives a server
    restart) or a SIGTERM/SIGINT the runner turned into `stop_reason`. At the next step end
    `control.should_training_stop` is set: the Trainer finishes that step and returns normally,
    and the runner saves the adapter.
    """

    def __init__(self, log: EventLog | None, run_dir: Path, echo=None) -> None:
        self.log = log  # None on non-main processes (accelerate launch): they only watch for stops
        self.echo = echo  # one progress line per log (the CLI prints it on stderr)
        self.run_dir = Path(run_dir)
        self.stop_reason: str | None = None
        self._announced = False
        self.started = time.time()
        self.losses: list[float] = []
        self.eval_losses: list[tuple[int, float]] = []
        self.tokens = 0
        self.tokens_per_second = 0.0
        self.step_seconds: list[float] = []  # each optimizer step's own time, evaluations and saves left out
        self.eval_seconds: float | None = None  # the last evaluation's time
        self._step_t0: float | None = None
        self._eval_t0: float | None = None

    def _write(self, type: str, **data) -> None:
        if self.log is not None:
            self.log.write(type, **data)

    def stop_requested(self) -> str | None:
        if self.stop_reason is None and (self.run_dir / STOP_FILE).exists():
            self.stop_reason = (self.run_dir / STOP_FILE).read_text().strip() or "STOP file"
        return self.stop_reason

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.time()
        self._write("train_begin", max_steps=state.max_steps, epochs=args.num_train_epochs)

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_t0 = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_t0 is not None:
            self.step_seconds.append(time.time() - self._step_t0)
        reason = self.stop_requested()
        # Every rank must stop after the same step, or the others wait forever in the next all-reduce.
        if distributed.any_process(reason is not None, args.device) and reason is None:
            reason = self.stop_reason = "stop requested on another process"
        if reason:
            control.should_training_stop = True
            if not self._announced:
                self._announced = True
                self._write("stop_requested", step=state.global_step, reason=reason)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        step = state.global_step
        elapsed = time.time() - self.started
        if "loss" in logs:
            self.losses.append(float(logs["loss"]))
            self.tokens = int(logs.get("num_tokens", self.tokens))
            self.tokens_per_second = self.tokens / elapsed if elapsed > 0 else 0.0
            self._write(
                "log", step=step, max_steps=state.max_steps, epoch=logs.get("epoch"), loss=float(logs["loss"]),
                learning_rate=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"),
                token_accuracy=logs.get("mean_token_accuracy"), tokens=self.tokens,
                tokens_per_second=round(self.tokens_per_second, 2), elapsed=round(elapsed, 2),
                eta_seconds=self.eta(args, step, state.max_steps),
                peak_memory_bytes=peak_memory_bytes(),
            )
            self._announce_pause(control, step)
            if self.echo and self.log is not None:
                self.echo(
                    f"step {step}/{state.max_steps}  loss {logs['loss']:.4f}  lr {logs.get('learning_rate', 0):.2e}  "
                    f"{self.tokens_per_second:.0f} tok/s  {elapsed:.0f}s"
                )
        if "eval_loss" in logs:
            self.eval_losses.append((step, float(logs["eval_loss"])))
            self._write("eval", step=step, eval_loss=float(logs["eval_loss"]), elapsed=round(elapsed, 2))
            if self.echo and self.log is not None:
                self.echo(f"step {step}  eval loss {logs['eval_loss']:.4f}")

    def eta(self, args, step: int, max_steps: int) -> float | None:
        """Seconds left: the steps left at the recent steps' pace (the first, slow step left out once others
        exist) plus the evaluations still due at the last one's length. Elapsed time / steps would count the
        evaluations as steps, and the estimate would grow after each one (issue 20, papercut 1)."""
        if not self.step_seconds:
            return None
        recent = sorted((self.step_seconds[1:] or self.step_seconds)[-8:])
        per_step = recent[len(recent) // 2]
        strategy = getattr(args, "eval_strategy", "no")
        every = args.eval_steps if getattr(strategy, "value", strategy) == "steps" and args.eval_steps else 0
        evals_left = sum(1 for k in range(step + 1, max_steps + 1) if every and k % int(every) == 0)
        return round(max(max_steps - step, 0) * per_step + evals_left * (self.eval_seconds or per_step), 1)

    def _announce_pause(self, control, step: int) -> None:
        """Say in the event log what the run does between this step and the next, when it is not a step:
        the page shows it next to "step k / n" instead of a silent "0 s left"."""
        if control.should_evaluate:
            self._eval_t0 = time.time()
            self._write("phase", message=f"Evaluating the eval loss on the test split (after step {step})")
        elif control.should_save:
            self._write("phase", message=f"Saving a checkpoint (step {step})")

    def on_evaluate(self, args, state, control, **kwargs):
        if self._eval_t0 is not None:
            self.eval_seconds, self._eval_t0 = time.time() - self._eval_t0, None
        if control.should_save:
            self._write("phase", message=f"Saving a checkpoint (step {state.global_step})")

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self._write("checkpoint", step=state.global_step, path=str(path))

