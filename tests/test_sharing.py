# ruff: noqa: F811  (pytest fixtures imported from tests/fixtures_playground.py)
"""A room full of people on one server, at library level, with threads standing in for sessions:
one copy of each model however many ask at once, a model in use is never freed, each session's
adapters stay its own, work on a device runs first come first served with honest positions and
estimates, Cancel works while queued, and requests that cannot fit are refused with what would."""

from __future__ import annotations

import threading
import time

import pytest

from lab.errors import Cancelled, LabError
from lab.generate.adapters import inspect_adapter
from lab.generate.bank import adapter_bank
from lab.generate.compare import BASE_COLUMN, SamplingSettings
from lab.models.loading import load_model
from lab.models.registry import ModelRegistry
from lab.sharing.admission import NotAdmitted
from lab.sharing.limits import RequestLimits
from lab.sharing.queue import DeviceQueue, Wait
from lab.sharing.shared import SharedModels
from lab.tasks import BackgroundTask
from tests.fixtures_playground import tiny_adapters  # noqa: F401
from tests.test_compare import reference

PROMPT = [{"role": "user", "content": "Name three colours of the rainbow."}]
N = 8


def run_threads(*fns, timeout: float = 120):
    """Run each fn in its own thread at once; return their results (re-raising the first error)."""
    results, errors = [None] * len(fns), []
    start = threading.Barrier(len(fns))

    def body(i, fn):
        try:
            start.wait()
            results[i] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a session thread hung"
    if errors:
        raise errors[0]
    return results


@pytest.fixture
def counting_registry():
    """A registry whose loads are counted and slow enough for concurrent callers to overlap."""
    calls = []

    def loader(spec, precision, dtype):
        calls.append(spec)
        time.sleep(0.3)
        return load_model(spec, precision, dtype)

    registry = ModelRegistry(loader)
    registry.calls = calls
    return registry


# ---------------------------------------------------------------------------- the registry
def test_one_copy_per_model_however_many_sessions_ask_at_once(counting_registry, tiny_model_dir):
    spec = str(tiny_model_dir)
    leases = run_threads(*[lambda i=i: counting_registry.acquire(spec, "fp32", owner=f"s{i}") for i in range(4)])
    assert len(counting_registry.calls) == 1  # one load, shared by all four
    assert len({id(lease.loaded) for lease in leases}) == 1
    (status,) = counting_registry.status()
    assert status.leases == 4 and set(status.holders) == {"s0", "s1", "s2", "s3"} and status.in_use
    assert status.bytes and status.bytes > 0


@pytest.mark.slow
def test_a_model_in_use_is_not_freed(counting_registry, tiny_model_dir, tmp_path):
    spec = str(tiny_model_dir)
    held = counting_registry.acquire(spec, "fp32", owner="alice")
    counting_registry.get(spec, "bf16")  # preloaded, held by nobody
    assert counting_registry.free_unused() == [(spec, "bf16", "compute")]  # "free all" frees only the unused one
    assert counting_registry.loaded() == [(spec, "fp32", "compute")]
    assert counting_registry.free_unused(spec, "fp32") == []  # even when named: alice holds it
    with counting_registry.acquire(spec, "fp32", owner="bob") as loaded:  # bob shares alice's copy
        assert loaded is held.loaded
    held.release()
    held.release()  # idempotent: one lease gives back once
    assert counting_registry.status()[0].leases == 0
    assert counting_registry.free_unused() == [(spec, "fp32", "compute")]
    assert counting_registry.loaded() == []


def test_a_failed_load_is_reported_to_every_waiter_and_not_kept(tmp_path):
    def loader(spec, precision, dtype):
        time.sleep(0.2)
        raise LabError(f"cannot load {spec}")

    registry = ModelRegistry(loader)
    with pytest.raises(LabError, match="cannot load x"):
        run_threads(lambda: registry.acquire("x"), lambda: registry.acquire("x"))
    assert registry.loaded() == [] and registry.status() == []


# ---------------------------------------------------------------------------- the device queue
def test_queue_runs_in_arrival_order_one_at_a_time():
    q = DeviceQueue("cpu")
    order, running, overlap = [], [], []
    tickets = [q.submit("generate", f"s{i}") for i in range(5)]  # arrival order fixed here

    def session(ticket):
        q.wait(ticket)
        running.append(ticket.owner)
        overlap.append(len(running))
        time.sleep(0.02)
        order.append(ticket.owner)
        running.remove(ticket.owner)
        q.finish(ticket)

    run_threads(*[lambda t=t: session(t) for t in reversed(tickets)])  # threads start in the opposite order
    assert order == [f"s{i}" for i in range(5)]
    assert max(overlap) == 1
    assert q.status().running is None and q.status().waiting == []


def test_each_device_has_its_own_line():
    cpu, gpu = DeviceQueue("cpu"), DeviceQueue("cuda")
    ran = threading.Event()

    def bob() -> None:
        with gpu.turn("generate", "bob"):
            ran.set()

    with cpu.turn("generate", "alice"):  # alice's work on the CPU is running...
        t = threading.Thread(target=bob)
        t.start()
        assert ran.wait(180), "work on another device waited for this one"
        t.join()


def test_cancel_while_queued_leaves_the_line_and_the_next_moves_up():
    q = DeviceQueue("cpu")
    busy, done = threading.Event(), threading.Event()
    heard: dict[str, list[Wait]] = {"bob": [], "carol": []}
    cancel_bob = threading.Event()
    outcome = {}

    def alice():
        with q.turn("generate", "alice"):
            busy.set()
            done.wait(600)

    def waiter(name, cancel=None):
        try:
            with q.turn("generate", name, cancel=cancel, on_wait=heard[name].append):
                outcome[name] = "ran"
        except Cancelled as e:
            outcome[name] = str(e)

    ta = threading.Thread(target=alice)
    ta.start()
    busy.wait(180)
    tb = threading.Thread(target=waiter, args=("bob", cancel_bob))
    tb.start()
    while not heard["bob"]:
        time.sleep(0.01)
    tc = threading.Thread(target=waiter, args=("carol",))
    tc.start()
    while not heard["carol"]:
        time.sleep(0.01)
    assert heard["bob"][0].ahead == 1 and heard["carol"][0].ahead == 2
    assert [t["owner"] for t in q.status().waiting] == ["bob", "carol"]
    cancel_bob.set()
    tb.join(180)
    assert "Cancelled while waiting" in outcome["bob"]
    deadline = time.time() + 180
    while heard["carol"][-1].ahead != 1 and time.time() < deadline:
        time.sleep(0.01)
    assert heard["carol"][-1].ahead == 1  # carol moved up when bob left
    assert [t["owner"] for t in q.status().waiting] == ["carol"]
    done.set()
    ta.join(180)
    tc.join(180)
    assert outcome == {"bob": outcome["bob"], "carol": "ran"}
    assert [r["owner"] for r in q.status().recent][:3] == ["carol", "alice", "bob"]


def test_wait_estimates_come_from_recent_work_of_the_same_kind():
    now = [0.0]
    q = DeviceQueue("cpu", clock=lambda: now[0])
    assert q.wait_for_new() == Wait(0, 0.0)
    t = q.submit("generate", "a", units=10)
    q.wait(t)
    now[0] += 5.0  # 10 units in 5 s: 0.5 s per unit
    q.finish(t)
    running = q.submit("generate", "a", units=10)
    q.wait(running)
    now[0] += 1.0
    waiting = [q.submit("generate", "b", units=20), q.submit("evaluate", "c", units=3)]
    # running: 10 × 0.5 − 1 s elapsed = 4 s left; b: 20 × 0.5 = 10 s; an unseen kind counts as a typical
    # recent request (5 s).
    assert q.where(waiting[0]) == Wait(1, 4.0)
    assert q.where(waiting[1]) == Wait(2, 14.0)
    assert q.wait_for_new() == Wait(3, 19.0)
    assert q.where(waiting[1]).message() == "2 requests ahead of you, about 14 s."
    assert Wait(1, None).message().startswith("1 request ahead of you (no estimate yet")
    q.finish(running, ok=False)  # cancelled work teaches no estimate
    assert q.times.to_json()["generate"]["samples"] == 1


def test_a_full_queue_refuses_with_the_wait():
    q = DeviceQueue("cpu", max_waiting=2)
    q.submit("generate", "a")
    q.submit("generate", "b")
    with pytest.raises(LabError, match="queue is full: 2 requests are waiting"):
        q.submit("generate", "c")


# ---------------------------------------------------------------------------- sessions on one shared model
@pytest.mark.slow
def test_three_sessions_at_once_see_only_their_own_adapters(tiny_model_dir, tiny_adapters):
    shared = SharedModels(RequestLimits())
    spec = str(tiny_model_dir)
    # Two people whose (different) adapters have the same name, as runs named alike in a workshop do.
    alpha, beta = (inspect_adapter(str(tiny_adapters[n]), name="mine") for n in ("alpha", "beta"))
    s = SamplingSettings(max_new_tokens=N)
    results = run_threads(
        lambda: shared.compare("s1", spec, "fp32", [alpha], PROMPT, s),
        lambda: shared.compare("s2", spec, "fp32", [beta], PROMPT, s),
        lambda: shared.compare("s3", spec, "fp32", [], PROMPT, s),
    )
    base, a, b = (
        reference(tiny_model_dir, PROMPT, x, n=N) for x in (None, tiny_adapters["alpha"], tiny_adapters["beta"])
    )
    assert len({base, a, b}) == 3  # each adapter really changes the output
    assert [list(r.columns) for r in results] == [[BASE_COLUMN, "mine"], [BASE_COLUMN, "mine"], [BASE_COLUMN]]
    assert [r.columns[BASE_COLUMN].text for r in results] == [base] * 3  # nobody's adapters leak into a base column
    assert results[0].columns["mine"].text == a and results[1].columns["mine"].text == b
    assert shared.registry.load_count == 1  # one copy of the base for all three
    bank = adapter_bank(shared.registry.find(spec, "fp32"))
    assert bank.status().sets == {"s1": ["mine"], "s2": ["mine"]}
    assert len(bank.status().adapters) == 2
    # s1 drops its adapter: it goes (nobody else chose those files); s2's answers do not change.
    shared.compare("s1", spec, "fp32", [], PROMPT, s)
    assert [x["owners"] for x in bank.status().adapters] == [["s2"]]
    again = shared.compare("s2", spec, "fp32", [beta], PROMPT, s)
    assert again.columns["mine"].text == b and again.columns[BASE_COLUMN].text == base


def test_same_adapter_files_are_loaded_once_and_leave_with_their_last_session(tiny_model_dir, tiny_adapters):
    shared = SharedModels(RequestLimits())
    spec = str(tiny_model_dir)
    alpha = inspect_adapter(str(tiny_adapters["alpha"]))
    s = SamplingSettings(max_new_tokens=4)
    run_threads(*[lambda i=i: shared.compare(f"s{i}", spec, "fp32", [alpha], PROMPT, s) for i in range(3)])
    bank = adapter_bank(shared.registry.find(spec, "fp32"))
    (entry,) = bank.status().adapters
    assert sorted(entry["owners"]) == ["s0", "s1", "s2"] and entry["bytes"] > 0
    (model,) = shared.status().models
    assert model["leases"] == 3 and sorted(model["holders"]) == ["s0", "s1", "s2"]  # each session's hold
    assert shared.free_unused() == []  # held by three sessions: "free all" keeps it
    shared.reap(lambda owner: owner != "s0")  # s0 closed its tab
    assert sorted(bank.status().adapters[0]["owners"]) == ["s1", "s2"]
    shared.end_session("s1")
    shared.end_session("s2")
    assert bank.status().adapters == [] and bank.peft_model is None  # the base is plain again
    assert shared.status().models[0]["leases"] == 0
    assert shared.free_unused() == [(spec, "fp32", "compute")]


def test_queued_work_runs_in_order_and_cancel_while_queued_ends_the_task(tiny_model_dir):
    shared = SharedModels(RequestLimits())
    spec = str(tiny_model_dir)
    s = SamplingSettings(max_new_tokens=4)
    shared.compare("warm", spec, "fp32", [], PROMPT, s)  # loaded: the tasks below only generate
    order = []
    gate = threading.Event()

    def blocker(report, cancel):
        with shared.turn("generate", "alice", report=report, cancel=cancel):
            gate.wait(600)
            order.append("alice")

    def work(name):
        def fn(report, cancel):
            r = shared.compare(name, spec, "fp32", [], PROMPT, s, report=report, cancel=cancel)
            order.append(name)
            return r
        return fn

    first = BackgroundTask("alice", blocker).start()
    while shared.queue().status().running is None:
        time.sleep(0.01)
    tasks = {}
    for name in ("bob", "carol", "dave"):
        tasks[name] = BackgroundTask(name, work(name)).start()
        while len(shared.queue().status().waiting) < len(tasks):  # each joins the line before the next
            time.sleep(0.01)
    deadline = time.time() + 180
    while not all(t.poll().queued for t in tasks.values()) and time.time() < deadline:
        time.sleep(0.05)
    assert all(t.status == "queued" for t in tasks.values())
    assert "2 requests ahead of you" in tasks["carol"].last.message
    tasks["carol"].cancel()
    tasks["carol"].wait(180)
    assert tasks["carol"].status == "cancelled" and "nothing ran" in tasks["carol"].error
    gate.set()
    for t in (first, tasks["bob"], tasks["dave"]):
        t.wait(300)
    assert order == ["alice", "bob", "dave"]
    assert tasks["bob"].status == tasks["dave"].status == "done"


# ---------------------------------------------------------------------------- admission and limits
@pytest.mark.slow
def test_a_generation_that_cannot_fit_is_refused_with_what_would(tiny_model_dir):
    free = {"bytes": 10**12}
    shared = SharedModels(RequestLimits(), free_bytes=lambda device: free["bytes"])
    spec = str(tiny_model_dir)
    shared.compare("s1", spec, "fp32", [], PROMPT, SamplingSettings(max_new_tokens=2))
    with shared.model("s1", spec, "fp32") as loaded:
        need = shared._generation_need(loaded, [], PROMPT, SamplingSettings(max_new_tokens=256)).need
        small = shared._generation_need(loaded, [], PROMPT, SamplingSettings(max_new_tokens=16)).need
    free["bytes"] = int((need.bytes + small.bytes) / 2 * shared.limits.headroom)  # room for 16 tokens, not 256
    with pytest.raises(NotAdmitted) as refused:
        shared.compare("s1", spec, "fp32", [], PROMPT, SamplingSettings(max_new_tokens=256))
    text = str(refused.value)
    assert "missing" in text and "What would fit now: max new tokens" in text
    fitting = int(text.split("max new tokens ")[1].split()[0])
    assert 16 <= fitting < 256
    shared.compare("s1", spec, "fp32", [], PROMPT, SamplingSettings(max_new_tokens=fitting))  # and it does fit


def test_a_load_that_cannot_fit_frees_unused_models_or_names_a_smaller_precision(tiny_model_dir):
    from lab.models.sources import resolve_source
    from lab.sharing.admission import load_need

    device = {"capacity": 10**12}
    # A device of fixed capacity: what is free is what the loaded models leave.
    shared = SharedModels(RequestLimits(), free_bytes=lambda _: device["capacity"] - sum(
        m.bytes or 0 for m in shared.registry.status()))
    spec = str(tiny_model_dir)
    shared.registry.get(spec, "bf16")  # preloaded, unused
    unused = shared.registry.unused_bytes()
    need = load_need(resolve_source(spec), "fp32", device="cpu")
    device["capacity"] = int(need.bytes * shared.limits.headroom) + unused // 2  # fits once the unused model goes
    with shared.model("s1", spec, "fp32"):
        pass
    assert shared.registry.loaded() == [(spec, "fp32", "compute")]  # the unused bf16 copy made room
    shared.end_session("s1")
    shared.free_unused()
    device["capacity"] = int(need.bytes * 0.75)  # bf16 (half the bytes) fits, fp32 does not
    with pytest.raises(NotAdmitted, match=r"Loading .* at .*missing.*What would fit now: .*bf16"):
        with shared.model("s1", spec, "fp32"):
            pass
    assert shared.registry.loaded() == [] and shared.registry.load_count == 2  # refused before loading


def test_limits_come_from_the_environment_and_name_their_variable():
    limits = RequestLimits.from_env({"QLORA_LAB_MAX_NEW_TOKENS": "32", "QLORA_LAB_MEMORY_HEADROOM": "1.5"})
    assert limits.max_new_tokens == 32 and limits.headroom == 1.5 and limits.max_queue == RequestLimits().max_queue
    with pytest.raises(
        LabError, match=r"Max new tokens 64 is over this server's limit of 32 \(QLORA_LAB_MAX_NEW_TOKENS\)"
    ):
        limits.check_generation(64)
    with pytest.raises(LabError, match="QLORA_LAB_MAX_STEPS='lots' is not a number"):
        RequestLimits.from_env({"QLORA_LAB_MAX_STEPS": "lots"})
    with pytest.raises(LabError, match="QLORA_LAB_MAX_QUEUE='0' is below 1"):
        RequestLimits.from_env({"QLORA_LAB_MAX_QUEUE": "0"})
    assert all(row["env"].startswith("QLORA_LAB_") and row["help"] for row in limits.rows())
    assert "QLORA_LAB_MAX_ADAPTERS" in RequestLimits.help("max_adapters")


def test_requests_over_the_limits_are_refused_before_any_work(tiny_model_dir, tiny_adapters):
    shared = SharedModels(RequestLimits(max_new_tokens=16, max_adapters=1))
    alpha, beta = (inspect_adapter(str(tiny_adapters[n])) for n in ("alpha", "beta"))
    with pytest.raises(LabError, match="QLORA_LAB_MAX_NEW_TOKENS"):
        shared.compare("s1", str(tiny_model_dir), "fp32", [], PROMPT, SamplingSettings(max_new_tokens=17))
    with pytest.raises(LabError, match=r"number of adapters 2 is over this server's limit of 1"):
        shared.compare("s1", str(tiny_model_dir), "fp32", [alpha, beta], PROMPT, SamplingSettings(max_new_tokens=4))
    assert shared.registry.load_count == 0


def test_cli_limits_and_compare_over_a_limit(monkeypatch, capsys, tiny_model_dir):
    import json

    from lab.cli import main

    monkeypatch.setenv("QLORA_LAB_MAX_NEW_TOKENS", "8")
    assert main(["limits", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in out["limits"]}
    assert rows["max_new_tokens"]["value"] == 8 and rows["max_new_tokens"]["env"] == "QLORA_LAB_MAX_NEW_TOKENS"
    assert {r["env"] for r in out["public_limits"]} >= {"QLORA_LAB_MAX_PARAMS", "QLORA_LAB_MAX_UPLOAD_MB"}
    rc = main(["compare", "--model", str(tiny_model_dir), "--prompt", "hi", "--max-new-tokens", "9"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: Max new tokens 9 is over") and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_the_loading_lab_takes_a_turn_per_precision_and_is_admitted_first(tiny_model_dir):
    from lab.inspect.quality import QualityConfig

    quick = QualityConfig(perplexity_tokens=0, max_new_tokens=0, prompts=())
    shared = SharedModels(RequestLimits())
    results = shared.loading_lab("s1", str(tiny_model_dir), ["fp32", "bf16"], quality=quick)
    assert [r["precision"] for r in results] == ["fp32", "bf16"] and not any("error" in r for r in results)
    turns = [r for r in shared.queue().status().recent if r["kind"] == "loading lab"]
    assert [t["label"].split(" at ")[-1] for t in reversed(turns)] == ["fp32", "bf16"]
    assert {t["owner"] for t in turns} == {"s1"} and all(t["state"] == "done" for t in turns)
    tight = SharedModels(RequestLimits(), free_bytes=lambda _: 1_000_000)
    (refused,) = tight.loading_lab("s1", str(tiny_model_dir), ["fp32"], quality=quick)
    assert (
        refused["precision"] == "fp32"
        and "missing" in refused["error"]
        and "1.00 MB of RAM is free" in refused["error"]
    )


def test_a_training_run_is_held_to_the_limits_and_the_free_memory(tiny_model_dir):
    from dataclasses import replace

    from lab.training.config import TrainConfig

    cfg = TrainConfig(model=str(tiny_model_dir), max_steps=3, batch_size=8, max_length=512)
    free = {"bytes": 10**12}
    shared = SharedModels(RequestLimits(max_steps=100), free_bytes=lambda _: free["bytes"])
    shared.admit_training(cfg, "cpu")  # plenty of room
    with pytest.raises(LabError, match=r"Max steps 101 is over this server's limit of 100 \(QLORA_LAB_MAX_STEPS\)"):
        shared.admit_training(replace(cfg, max_steps=101), "cpu")
    full = cfg.memory_estimate("cpu").total_bytes
    short = replace(cfg, max_length=64).memory_estimate("cpu").total_bytes
    assert short < full
    free["bytes"] = int((full + short) / 2 * shared.limits.headroom)
    with pytest.raises(
        NotAdmitted, match=r"Training on .* missing\. What would fit now: max length (64|128|256) "
    ) as e:
        shared.admit_training(cfg, "cpu")
    length = int(str(e.value).split("max length ")[-1].split()[0])
    shared.admit_training(replace(cfg, max_length=length), "cpu")  # the suggestion is admitted


def test_an_idle_hold_ends_but_running_work_keeps_its_model(tiny_model_dir):
    shared = SharedModels(RequestLimits(hold_minutes=0))  # every hold is idle at once
    spec = str(tiny_model_dir)
    shared.compare("s1", spec, "fp32", [], PROMPT, SamplingSettings(max_new_tokens=2))
    assert list(shared.status().models[0]["holders"]) == ["s1"]  # the playground's hold after its request
    with shared.model("s2", spec, "fp32", purpose="work"):  # s2 is using it right now
        assert shared.reap(lambda owner: True) == []  # nobody left...
        (model,) = shared.status().models
        # ...but every hold was idle (0 minutes), so only s2's lease for the work it is doing stays.
        assert list(model["holders"]) == ["s2"] and model["leases"] == 1
        assert shared.free_unused() == []
    shared.reap(lambda owner: True)
    assert shared.free_unused() == [(spec, "fp32", "compute")]
