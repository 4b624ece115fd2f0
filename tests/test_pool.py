"""lab.estimate.pool: the inverse question's searches in simulation processes answer exactly as one process does,
stop when the page cancels them, carry errors back whole, and survive a worker that dies."""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import replace

import pytest

from lab.errors import Cancelled, LabError
from lab.estimate import pool
from lab.estimate.gpus import Gpu
from lab.estimate.inverse import knobs_for, max_fitting, solve_all
from lab.estimate.simulate import is_cached, simulate
from lab.estimate.tracker import stop_if_cancelled
from lab.estimate.training import TrainingSettings
from lab.models.architecture import architecture_from_config, config_from_dict
from tests.conftest import STARTED_AS_MAIN

pytestmark = pytest.mark.slow  # worker processes: seconds to start

TINY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=65_536, vocab_size=512, tie_word_embeddings=True)
SETTINGS = TrainingSettings(method="lora", precision="bf16", max_length=512, gradient_checkpointing=True)


@pytest.fixture(scope="module", autouse=True)
def processes():
    """Two simulation processes for this module (the suite runs without: tests/conftest.py), started from this
    process's own main module, not from a page script an AppTest left as __main__ (see tests/conftest.py)."""
    patch = pytest.MonkeyPatch()
    patch.setenv(pool.ENV, "2")
    patch.setitem(sys.modules, "__main__", STARTED_AS_MAIN)
    assert pool.ready(timeout=300), "the simulation processes did not start"
    yield
    pool.shutdown()
    patch.undo()


def arch():
    """A model no other test simulates (by name): this process's cache has seen only what this module simulated."""
    return architecture_from_config(config_from_dict(TINY), "the pool's tiny llama")


def test_the_searches_run_in_other_processes_and_answer_as_this_one_does():
    a = arch()
    simulate(a, SETTINGS)  # the page's own step, simulated here first: the searches are handed it
    [(_, sized)] = pool.run(simulate, [(a, replace(SETTINGS, max_length=3_000))])  # (in a worker too)
    card = Gpu("RAM that holds 3,000 tokens", sized.peak_bytes, cuda=False)
    knobs = knobs_for(SETTINGS.method)
    reports = []
    side_by_side = solve_all(a, SETTINGS, card, knobs, report=lambda m, partial=None, **_: reports.append(partial))
    assert len(reports) == 1 + len(knobs) and reports[-1] == side_by_side  # each answer reported as it came
    for knob in knobs:  # the answers were simulated elsewhere: this process's cache has not seen them
        assert side_by_side[knob].value > 0 and side_by_side[knob].checked
        assert not is_cached(a, replace(SETTINGS, **{knob: side_by_side[knob].value}))
    here = {knob: max_fitting(a, SETTINGS, card, knob) for knob in knobs}
    assert side_by_side == here  # the same values, simulated at the same points with the same peaks
    pids = {pid for _, pid in pool.run(os.getpid, [(), (), ()])}
    assert os.getpid() not in pids


def _until_cancelled(seconds: float) -> str:
    """Runs in a worker: what a simulation does between its layers, for `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        stop_if_cancelled()
        time.sleep(0.01)
    return "never cancelled"


def test_a_cancelled_run_stops_its_calls_in_the_workers():
    cancel, outcome = threading.Event(), []

    def ask() -> None:
        try:
            outcome.extend(pool.run(_until_cancelled, [(600,), (600,)], cancel))
        except Cancelled as e:
            outcome.append(e)

    asker = threading.Thread(target=ask)
    asker.start()
    time.sleep(0.5)
    cancel.set()
    asker.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled)
    # the slot is given back only once both calls have ended: they stopped, rather than running their 600 s
    deadline = time.monotonic() + 120
    while len(pool._FREE) < pool.SLOTS and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(pool._FREE) == pool.SLOTS
    assert [r for _, r in pool.run(_until_cancelled, [(0,)])] == ["never cancelled"]  # the next run is not cancelled


def test_an_error_in_a_worker_arrives_whole():
    too_long = replace(SETTINGS, max_length=70_000)  # past the model's context
    with pytest.raises(LabError) as raised:
        list(pool.run(max_fitting, [(arch(), too_long, Gpu("any", 10**12, cuda=False), "batch_size", None)]))
    assert "70,000 tokens" in raised.value.message and raised.value.hint == "Use at most 65,536 tokens."


def _die_unless_in(pid: int) -> str:
    if os.getpid() != pid:
        os._exit(1)  # a worker killed (out of memory, say)
    return "here"


def test_a_dead_worker_costs_its_calls_nothing_and_the_next_run_gets_a_new_pool(monkeypatch):
    monkeypatch.setattr(pool, "_BROKEN", [0])
    before = pool.start()
    assert [r for _, r in pool.run(_die_unless_in, [(os.getpid(),)])] == ["here"]  # run here instead
    assert pool._BROKEN == [1] and pool.start() is not before
    assert all(pid != os.getpid() for _, pid in pool.run(os.getpid, [()]))


def test_a_worker_hides_the_gpus_from_itself_only():
    """A simulation needs no GPU: a worker on a GPU machine simulates as on this one, with no CUDA context of its own
    (its libraries are imported after the GPUs are hidden); the asking process keeps its GPUs."""
    [(_, hidden)] = pool.run(os.getenv, [("CUDA_VISIBLE_DEVICES",)])
    assert hidden == ""
    assert os.getenv("CUDA_VISIBLE_DEVICES") != ""
