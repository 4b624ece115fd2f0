"""Simulations asked for by several sessions at once (lab.estimate.simulate._cached) and the calculator's warm-up
(lab.estimate.warmup): a server's first session starts it, and the calculator's first page is then answered from
the simulation cache."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import lab.estimate.simulate as sim_module
from lab.estimate import warmup
from lab.estimate.simulate import Simulation, is_cached
from lab.models.reader import read_architecture
from lab.units import fmt_bytes

ROOT = Path(__file__).resolve().parent.parent


def test_on_unless_turned_off():
    assert warmup.enabled({}) and warmup.enabled({warmup.ENV: "1"})
    assert not warmup.enabled({warmup.ENV: "0"})


def calculator_first_run() -> AppTest:
    return AppTest.from_file(str(ROOT / "pages" / "calculator.py"), default_timeout=180).run()


@pytest.mark.slow
def test_the_first_session_warms_the_calculators_first_answer_up(monkeypatch):
    from pages._ui import server_services

    sim_module._CACHE.clear()  # whatever this process simulated before: the page must owe its answer to the warm-up
    cold = calculator_first_run()
    assert not cold.exception and "Simulated training peak" not in {m.label for m in cold.metric}  # it simulates
    cold.session_state["calc_sim"].cancel()
    cold.session_state["calc_sim"].wait(120)
    sim_module._CACHE.clear()

    monkeypatch.setenv(warmup.ENV, "1")
    server_services.clear()  # a fresh server: its first session's first run starts the server's services
    try:
        assert warmup.current() is None
        home = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
        assert not home.exception
        task = warmup.current()
        assert task is not None and warmup.start() is task  # once per process
        task.wait(300)
        assert task.status == "done", task.error
        model, training, inference = warmup.calculator_defaults()
        arch = read_architecture(model)
        assert is_cached(arch, training) and is_cached(arch, inference)

        page = calculator_first_run()  # the first page a visitor opens: no spinner, the answers at once
        assert not page.exception and not page.error
        shown = {m.label: m.value for m in page.metric}
        assert isinstance(task.result.training, Simulation) and isinstance(task.result.inference, Simulation)
        assert shown["Simulated training peak"] == fmt_bytes(task.result.training.peak_bytes)
        assert "calc_sim" not in page.session_state  # answered from the cache: no background task started
    finally:
        server_services.clear()


def test_one_simulation_for_everyone_who_asks_at_once(tiny_model_dir, monkeypatch):
    """A room opening the same new setting at once (or a visitor arriving during the warm-up): one simulation, and
    everyone gets its result; a waiter whose page moved on stops waiting; if the simulating thread fails, a waiter
    simulates it itself."""
    from lab.errors import Cancelled
    from lab.estimate.simulate import simulate
    from lab.estimate.tracker import cancel_on
    from lab.estimate.training import TrainingSettings

    arch = read_architecture(str(tiny_model_dir))
    real, calls, gate = sim_module._simulate_training, [], threading.Event()

    def counted(*args, **kwargs):
        calls.append(threading.current_thread().name)
        gate.wait(30)  # held until every asker is waiting
        return real(*args, **kwargs)

    monkeypatch.setattr(sim_module, "_simulate_training", counted)
    settings = TrainingSettings(method="lora", precision="fp32", batch_size=3, max_length=40)
    results: dict[str, object] = {}

    def ask(name: str, cancel: threading.Event | None = None) -> None:
        try:
            with cancel_on(cancel):
                results[name] = simulate(arch, settings)
        except Cancelled as e:
            results[name] = e

    moved_on = threading.Event()
    threads = [threading.Thread(target=ask, args=(f"visitor {i}",), name=f"visitor {i}") for i in range(3)]
    threads.append(threading.Thread(target=ask, args=("gone", moved_on), name="gone"))
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # the others are waiting on the one simulating
    moved_on.set()
    threads[-1].join(10)
    assert isinstance(results["gone"], Cancelled)  # it stopped waiting, while the simulation still ran
    gate.set()
    for t in threads[:-1]:
        t.join(60)
    assert len(calls) == 1
    first = results["visitor 0"]
    assert isinstance(first, Simulation) and all(results[f"visitor {i}"] is first for i in range(3))

    # the simulating thread fails: the one waiting on it simulates for itself
    calls.clear()
    gate.clear()
    other = replace(settings, batch_size=5)

    def fails_once(*args, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            gate.wait(30)
            raise RuntimeError("the first asker's simulation broke")
        return real(*args, **kwargs)

    monkeypatch.setattr(sim_module, "_simulate_training", fails_once)
    errors: dict[str, object] = {}

    def ask_again(name: str) -> None:
        try:
            errors[name] = simulate(arch, other)
        except RuntimeError as e:
            errors[name] = e

    first_asker = threading.Thread(target=ask_again, args=("first",))
    first_asker.start()
    while not calls:
        time.sleep(0.01)
    second_asker = threading.Thread(target=ask_again, args=("second",))
    second_asker.start()
    time.sleep(0.3)
    gate.set()
    first_asker.join(60)
    second_asker.join(60)
    assert isinstance(errors["first"], RuntimeError) and isinstance(errors["second"], Simulation)
    assert len(calls) == 2
