"""What a run predicted about itself and what it measured, like for like, for lab_run.json (issue 18.6, 19).

- `Prediction`: when the run starts, the simulation's peak for the run's exact settings (`TrainConfig.
  simulate_memory`), then the time model's tokens/s (`lab.estimate.plan.predict_run`), computed in a thread
  while the base loads and the trainer is built. The first step waits for the peak only (a second or two);
  the tokens/s joins the record when the run ends (lab_run.json is written at the start and at the end). On a CPU
  that prediction probes the machine for a few seconds (lab.estimate.probe), beside the load and possibly the
  first steps: waiting for it before the first step would add those seconds to every run's start. A run that
  ends while its probe still measures (a run shorter than the probe, ~6 s on a 2-core CPU) stops the probe
  (`Prediction.stop`, within one measurement) rather than wait for it: the record then has the predicted peak
  and a `speed_note` instead of tokens/s. Its status is never held back by its own prediction, and the probe's
  matmuls stop taking the CPU from whatever runs next. (The thread must end before the process does: a thread
  left inside torch at exit aborts it.)
- `StepPeak`: the measured figure the simulation predicts, over one real steady-state step (the second: the
  optimizer state exists, as in the simulated step). On CUDA `torch.cuda.max_memory_allocated()` over that
  step; on a CPU the tensors' live bytes, counted by the simulation's own tracker (`LiveBytes`) over the real
  tensors — not the process's RSS, which adds Python and its libraries.
- `like_for_like`: the simulation again at the measured step's shape (its batch's padded length is usually
  shorter than max_length), so the error says how well the simulation did, not how long the rows were.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from types import SimpleNamespace

import torch
from transformers import TrainerCallback

from lab.errors import Cancelled, LabError
from lab.estimate.plan import predict_run
from lab.estimate.recipe import register_model
from lab.estimate.tracker import LiveBytes
from lab.training import callback
from lab.training.config import TrainConfig

COUNTS = {"cuda": "torch.cuda.max_memory_allocated over the step (tensors, CUDA context excluded)",
          "cpu": "live tensor bytes over the step, counted by the simulation's tracker over the real tensors "
                 "(the process's RSS adds Python and its libraries)"}


SPEED_NOT_PROBED = ("no tokens/s predicted: the run ended before this CPU's probe did (it measures for a few "
                    "seconds beside the run's start)")


class Prediction:
    """The run's predicted peak, then its tokens/s, computed in a thread from the run's start."""

    def __init__(self, cfg: TrainConfig, device: str) -> None:
        self.cfg, self.device = cfg, device
        self.result: dict = {"batch_size": cfg.batch_size, "max_length": cfg.max_length}
        self._peak_known = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lab-prediction", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            self.result["peak_bytes"] = self.cfg.simulate_memory(self.device).peak_bytes
            self._peak_known.set()
            speed = predict_run(self.cfg.to_dict(), self.device, cancel=self._stop)  # a CPU: a probe of seconds
            self.result.update(tokens_per_second=speed["tokens_per_second"], step_seconds=speed["step_seconds"],
                               timed_on=speed["device"])
        except Cancelled:  # not an error of the prediction: the run was shorter than this CPU's probe
            self.result["speed_note"] = SPEED_NOT_PROBED
        except LabError as e:  # a model the simulation cannot run: the run goes on, the record says why
            self.result["error"] = str(e)
        except Exception as e:  # a prediction must never fail a run
            self.result["error"] = f"{type(e).__name__}: {e}"
        self.result["seconds"] = round(time.perf_counter() - t0, 2)
        self._peak_known.set()

    def peak(self, timeout: float) -> dict:
        """What is known once the predicted peak is (waiting at most `timeout` seconds): the tokens/s may follow."""
        self._peak_known.wait(timeout)
        return dict(self.result)

    def stop(self) -> dict:
        """The run has ended: everything known, once a probe still measuring has stopped (`speed_note` says so).
        A simulation still running is waited for (it is not interruptible, and the first step waited for it)."""
        self._stop.set()
        self._thread.join()
        return dict(self.result)


class StepPeak(TrainerCallback):
    """The measured peak of one real training step (the second, or the first of a one-step run)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.step: int | None = None  # the optimizer step measured
        self.shape: tuple[int, int] = (0, 0)  # rows and (padded) tokens of its longest micro-batch
        self.peak_bytes: int | None = None
        self._tracker: LiveBytes | None = None
        self._active = False

    def attach(self, trainer) -> None:
        """Follow `trainer`: its callbacks, and its training_step to see the measured step's batch."""
        trainer.add_callback(self)
        original = trainer.training_step

        def training_step(model, inputs, *args, **kwargs):
            if self._active:
                self._saw(inputs)
            return original(model, inputs, *args, **kwargs)

        trainer.training_step = training_step

    def _saw(self, inputs) -> None:
        ids = inputs.get("input_ids") if isinstance(inputs, dict) else None
        if isinstance(ids, torch.Tensor) and ids.dim() == 2:
            self.shape = max(self.shape, tuple(ids.shape), key=lambda s: s[0] * s[1])
        if self._tracker is not None:
            for t in (inputs.values() if isinstance(inputs, dict) else ()):
                if isinstance(t, torch.Tensor):
                    self._tracker.register(t, "inputs")

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.step is not None or state.global_step + 1 != min(2, max(1, state.max_steps)):
            return
        self.step, self._active = state.global_step + 1, True
        if self.device == "cuda":
            callback.reset_cuda_peak()
            return
        self._tracker = LiveBytes(fake=False)  # exact bytes: a CPU has no allocator rounding
        register_model(model, self._tracker, SimpleNamespace(method="lora"))  # trainable = adapters
        for state_ in (optimizer.state.values() if optimizer is not None else ()):
            for v in state_.values():
                if isinstance(v, torch.Tensor):
                    self._tracker.register(v, "optimizer")
        self._tracker.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if not self._active:
            return
        self._active = False
        if self._tracker is not None:
            self._tracker.__exit__(None, None, None)
            self.peak_bytes, self._tracker = self._tracker.peak, None
        else:
            self.peak_bytes = int(torch.cuda.max_memory_allocated())

    def close(self) -> None:
        """Leave the tracker if the measured step never ended (the run failed or was interrupted inside it)."""
        if self._tracker is not None:
            self._tracker.__exit__(None, None, None)
            self._tracker, self._active = None, False

    def to_json(self) -> dict | None:
        if self.peak_bytes is None:
            return None
        return {"measured_peak_bytes": self.peak_bytes, "counts": COUNTS[self.device], "step": self.step,
                "batch_size": self.shape[0], "tokens": self.shape[1]}


def like_for_like(cfg: TrainConfig, device: str, measured: dict | None) -> dict | None:
    """`measured` with the simulation of the measured step's own shape beside it, and the error."""
    if not measured or not measured.get("batch_size"):
        return measured
    shaped = replace(cfg, batch_size=measured["batch_size"], max_length=measured["tokens"])
    try:
        sim = shaped.simulate_memory(device).peak_bytes
    except Exception as e:  # recorded, never fatal: the run's outcome stands
        return {**measured, "simulated_error": f"{type(e).__name__}: {e}"}
    return {**measured, "simulated_peak_bytes": sim,
            "error_pct": round(100.0 * (sim - measured["measured_peak_bytes"]) / measured["measured_peak_bytes"], 2)}
