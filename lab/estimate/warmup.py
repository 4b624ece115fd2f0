"""A server's first calculator answer, simulated before anyone asks.

The first simulation in a process pays for imports (transformers' modelling code, peft, TRL, bitsandbytes) and for
torch's first fake-tensor dispatches: the calculator's default page took 4.6 s in a fresh process here, against
0.7 s for the next setting (`benchmarks/bench_latency.py`, "first"; 9–11 s on a slower machine). Without a
warm-up the first attendee to open the calculator on a fresh Space waits for all of it. `start` simulates the
calculator's default page once, in the background, when the server's first session opens the app (the instructor,
usually, before the room arrives): the answer is then in the simulation cache, and every later setting starts warm.
It also starts the simulation processes the inverse question's searches run in (lab.estimate.pool), whose start
(the libraries imported once more, each worker warmed) would otherwise be the first question's wait.

On by default; `QLORA_LAB_WARMUP=0` turns it off (the test suite does, for its own servers: each would spend
seconds of CPU on an answer most tests never ask for).
"""

from __future__ import annotations

import os
import threading

from lab.estimate import pool
from lab.estimate.simulate import InferenceSettings, PageSimulations, simulate_page
from lab.estimate.training import TrainingSettings
from lab.models.reader import read_architecture
from lab.tasks import BackgroundTask

ENV = "QLORA_LAB_WARMUP"
# What the calculator shows before anything is changed: its widgets' defaults (pages/_calc_inputs.py,
# pages/_arch_ui.py) come from here, so the warm-up's answer is the page's first one.
CALCULATOR_MODEL = "Llama-3.2-3B"
CALCULATOR_PRECISION = "nf4-dq"

_LOCK = threading.Lock()
_TASK: BackgroundTask | None = None


def calculator_defaults() -> tuple[str, TrainingSettings, InferenceSettings]:
    """The model, training step and generation the calculator simulates when nothing has been changed (the settings'
    own defaults, "auto" dtype included, are the page's widgets' defaults)."""
    return (CALCULATOR_MODEL, TrainingSettings(precision=CALCULATOR_PRECISION),
            InferenceSettings(precision=CALCULATOR_PRECISION))


def enabled(env: dict | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get(ENV, "1") != "0"


def start() -> BackgroundTask:
    """Start the warm-up once per process (later calls return the same task)."""
    global _TASK
    with _LOCK:
        if _TASK is None:
            _TASK = BackgroundTask("warm-up", _warm_up).start()
        return _TASK


def current() -> BackgroundTask | None:
    """This process's warm-up, if one was started."""
    return _TASK


def _warm_up(report, cancel) -> PageSimulations:
    model, training, inference = calculator_defaults()
    report("starting the simulation processes")
    pool.start()  # returns at once: the processes start and warm in the background
    report(f"simulating the calculator's default page ({model})")
    return simulate_page(read_architecture(model), training, inference, report=report, cancel=cancel)
