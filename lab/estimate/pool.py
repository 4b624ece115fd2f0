"""Simulations on the machine's other cores, in worker processes: the inverse question's searches side by side.

One process simulates one step at a time (`simulate._LOCK`: a simulation switches library code paths while it
runs) and a step is about a second of Python (fake-tensor dispatch), so threads cannot share the work: the inverse
question's three searches (batch, sequence length, rank: eight simulations for a 7B) took 7–12 s one after the
other on a 2-core machine, and every other page of the server waited behind them for its own simulation. Here each
search runs in a thread of the asking process that hands its steps to worker processes (`run`: its samples at once,
then one check at a time), so the question takes about as long as its longest search, and the server's own lock
stays free.

The workers come from a `ProcessPoolExecutor` on the "forkserver" start method: a clean process that has imported
torch and transformers (seconds) forks each worker, so no worker inherits the server's threads or locks. Each worker
hides the GPUs from itself (the simulation needs none) and simulates a tiny model once when it starts (`_warm`: the
rest of the imports and a process's first fake-tensor step, seconds of one-time setup), so its first real
simulation costs what any later one does. `start` (called by the server's warm-up, lab.estimate.warmup) makes the
pool before anyone asks; it then lives as long as the process. A process started from a script imports that script
first, as multiprocessing does: `app.py` only imports unless it runs as `__main__`.

A worker's simulations never touch the process that asked: its caches, torch's default dtype, its threads. What a
worker needs (the architecture, the settings) travels with each call, and what it simulated comes back whole (a
`Simulation` with its trace, which the search replays).

Cancelling crosses the process boundary through shared memory: each `run` holds one slot of a byte array, set when
its cancel event is, and a worker's simulation stops where its next layer or phase begins, as one in this process
does (`tracker.cancel_on` accepts anything with `is_set`). A worker that dies (killed for memory) costs its calls
nothing: they run in the asking process, and the next run makes a new pool (after two, this process stops trying).

`QLORA_LAB_SIM_PROCESSES`: how many worker processes (default: one per inverse knob, at most one per core; 0
simulates in the asking process, one search after the other, as the test suite does outside tests/test_pool.py).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import torch

from lab.errors import Cancelled, LabError
from lab.estimate.probe import TINY_SIZES
from lab.estimate.simulate import simulate
from lab.estimate.tracker import CANCELLED, cancel_on
from lab.estimate.training import TrainingSettings
from lab.models.architecture import architecture_from_config, config_from_dict

log = logging.getLogger(__name__)
ENV = "QLORA_LAB_SIM_PROCESSES"
DEFAULT_PROCESSES = min(3, os.cpu_count() or 1)  # one per inverse knob, at most one per core
SLOTS = 64  # runs in flight at once; a run finding none free simulates in its own process
# What the forkserver imports once, for every worker it forks: torch and transformers. Not bitsandbytes (nor peft and
# TRL, which import it): on a GPU machine its import initialises CUDA, and a process forked from one that has cannot
# use CUDA again. Each worker imports them itself, with the GPUs hidden (`_init_worker`).
PRELOAD = ["lab.estimate.inverse"]
POLL_SECONDS = 0.1  # how often a waiting `run` looks at its cancel event
MAX_BROKEN = 2  # pools lost to a dead worker before this process stops making new ones and simulates itself

_LOCK = threading.Lock()
_POOL: ProcessPoolExecutor | None = None
_FLAGS = None  # multiprocessing.Array of SLOTS bytes: 1 = cancel the run holding that slot
_FREE: list[int] = []
_STARTED: list = []  # the pool's first calls, one per worker: done once every worker is up and warm
_STARTER: list[threading.Thread] = []  # the thread making those calls
_BROKEN = [0]  # pools lost so far


def processes() -> int:
    """The number of worker processes asked for (0: none, simulate in this process)."""
    value = os.environ.get(ENV, "")
    try:
        return max(0, int(value)) if value.strip() else DEFAULT_PROCESSES
    except ValueError:
        raise LabError(f"{ENV}={value!r} is not a whole number.", "Set it to the number of simulation processes "
                       f"(0 for none; default {DEFAULT_PROCESSES}).") from None


def enabled() -> bool:
    return processes() > 0 and _BROKEN[0] < MAX_BROKEN


def start() -> ProcessPoolExecutor | None:
    """The pool, made (its workers started and warmed in the background) on the first call; None when disabled.
    Later calls return the same pool, or a new one after a worker died (`_forget`)."""
    global _POOL, _FLAGS
    if not enabled():
        return None
    n = processes()
    with _LOCK:
        if _POOL is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(PRELOAD)
            if _FLAGS is None:
                _FLAGS = context.Array("b", SLOTS, lock=False)
                _FREE[:] = range(SLOTS)
            _POOL = ProcessPoolExecutor(n, mp_context=context, initializer=_init_worker, initargs=(_FLAGS,))
            # A worker is forked per call that finds none idle: all n start now. Off this thread: the first fork
            # waits for the forkserver's imports (seconds), which a page's own simulation need not wait for.
            _STARTER[:] = [threading.Thread(target=_start_workers, args=(_POOL, n), name="simulation processes",
                                            daemon=True)]
            _STARTER[0].start()
        return _POOL


def _start_workers(pool: ProcessPoolExecutor, n: int) -> None:
    try:
        _STARTED[:] = [pool.submit(_ready) for _ in range(n)]
    except BrokenProcessPool:  # a worker died at once; the first run says so by running its calls here
        _STARTED[:] = []


def ready(timeout: float | None = None) -> bool:
    """Wait until every worker of the pool is up and warm (for a benchmark that times questions, not the start):
    True when they are, False when disabled or not within `timeout` seconds."""
    if start() is None:
        return False
    _STARTER[0].join(timeout)
    _done, waiting = wait(list(_STARTED), timeout=timeout)
    return bool(_STARTED) and not waiting


def shutdown() -> None:
    """Stop the pool's workers (after their current calls); the next `start` makes a new pool."""
    global _POOL
    with _LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def run(fn: Callable, calls: list[tuple], cancel: threading.Event | None = None) -> Iterator[tuple[int, object]]:
    """`fn(*args)` for each args in `calls`, in worker processes: yields (index, result) as each finishes. `fn`
    must be importable by name (a module-level function). An exception of a call is raised here as it was there;
    once `cancel` is set, every call of this run stops at its next simulated layer or phase, and Cancelled is
    raised. Without a pool (disabled, all slots taken) the calls run here, one after the other; calls a dead
    worker took with it (killed for memory) run here too, and the next run makes a new pool."""
    pool = start()
    slot = _take_slot() if pool is not None else None
    if slot is None:
        yield from _here(fn, dict(enumerate(calls)), cancel)
        return
    futures = {}
    try:
        for i, args in enumerate(calls):
            futures[pool.submit(_call, slot, fn, args)] = i
    except BrokenProcessPool:
        pass
    _release_when_done(slot, list(futures))
    lost = {i: args for i, args in enumerate(calls) if i not in futures.values()}
    pending = set(futures)
    try:
        while pending:
            done, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
            if cancel is not None and cancel.is_set():
                raise Cancelled(CANCELLED)
            for future in done:
                try:
                    result = future.result()
                except BrokenProcessPool:
                    lost[futures[future]] = calls[futures[future]]
                    continue
                yield futures[future], result
    finally:  # cancelled, failed, or abandoned by the caller: what is still queued or running stops
        if pending:
            _FLAGS[slot] = 1
    if lost:
        _forget(pool)
        yield from _here(fn, lost, cancel)


def _here(fn, calls: dict[int, tuple], cancel) -> Iterator[tuple[int, object]]:
    for i, args in sorted(calls.items()):
        with cancel_on(cancel):
            result = fn(*args)
        yield i, result


def _take_slot() -> int | None:
    with _LOCK:
        return _FREE.pop() if _FREE else None


def _release_when_done(slot: int, futures: list) -> None:
    """Free the slot, its flag cleared, once every call of its run has ended (a cancelled run's calls may still be
    reading the flag; a slot reused before they end would let them run on)."""
    if not futures:
        _free(slot)
        return
    left = [len(futures)]

    def one_done(_future) -> None:
        with _LOCK:
            left[0] -= 1
            last = left[0] == 0
        if last:
            _free(slot)

    for future in futures:
        future.add_done_callback(one_done)


def _free(slot: int) -> None:
    with _LOCK:
        _FLAGS[slot] = 0
        _FREE.append(slot)


def _forget(pool: ProcessPoolExecutor) -> None:
    """A broken pool (a worker died) is dropped: the next `start` makes a new one."""
    global _POOL
    with _LOCK:
        if _POOL is pool:
            _POOL = None
            _BROKEN[0] += 1
            if _BROKEN[0] >= MAX_BROKEN:
                log.warning("simulation processes died %d times: simulating in this process from now on", _BROKEN[0])
    pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- in the worker
_WORKER_FLAGS = None


class _Flag:
    """A run's shared cancel flag, read like a threading.Event (tracker.stop_if_cancelled calls `is_set`)."""

    def __init__(self, slot: int) -> None:
        self.slot = slot

    def is_set(self) -> bool:
        return bool(_WORKER_FLAGS[self.slot])


def _init_worker(flags) -> None:
    global _WORKER_FLAGS
    _WORKER_FLAGS = flags
    # A simulation runs on fake tensors on the CPU and takes the GPU's code paths by itself (lab.estimate.fake_quant):
    # it needs no GPU, and a worker on a GPU machine then simulates exactly as on a machine without one (as every
    # test does) and holds no CUDA context of its own. This process only, before anything initialises CUDA.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    torch.set_num_threads(1)  # fake tensors compute nothing; one thread each keeps the workers off each other's core
    _warm()


# a two-layer Llama at the probe's tiny sizes: the calculator's default recipe on it sets up what any model's step
# then reuses
_TINY = dict(model_type="llama", **TINY_SIZES, num_hidden_layers=2, max_position_embeddings=256)


def _warm() -> None:
    """One tiny simulated step: the process's one-time fake-tensor setup, paid before any real question."""
    arch = architecture_from_config(config_from_dict(_TINY, "pool warm-up"), "pool warm-up")
    simulate(arch, TrainingSettings(max_length=64))


def _ready() -> bool:
    return True


def _call(slot: int, fn: Callable, args: tuple):
    if _WORKER_FLAGS[slot]:
        raise Cancelled(CANCELLED)
    with cancel_on(_Flag(slot)):
        return fn(*args)
