"""AppTest for the Precision & memory calculator and the LoRA estimator pages."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lab.errors import LabError
from lab.estimate.lora import estimate_lora
from lab.estimate.simulate import simulate
from lab.estimate.training import TrainingSettings
from lab.estimate.weights import estimate_weights
from lab.models.catalog import catalog_names
from lab.models.reader import read_architecture
from lab.models.sources import resolve_source
from lab.units import fmt_bytes, fmt_count
from pages._arch_ui import UPLOAD

ROOT = Path(__file__).resolve().parent.parent
CALC = str(ROOT / "pages" / "calculator.py")
LORA = str(ROOT / "pages" / "lora_estimator.py")


def run_page(path: str, **params) -> AppTest:
    at = AppTest.from_file(path, default_timeout=180)
    for k, v in params.items():
        at.query_params[k] = v
    return at.run()


def settle(at: AppTest, key: str = "calc_sim", timeout: float = 600) -> AppTest:
    """The calculator simulates in a background task while the page shows a spinner: wait for the task the
    last run started, then run the page again (the result now comes from the cache)."""
    task = at.session_state[key] if key in at.session_state else None
    deadline = time.time() + timeout
    while task is not None and task.poll().status == "running" and time.time() < deadline:
        time.sleep(0.2)
    return at.run()


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


@pytest.mark.slow
def test_calculator_reproduces_the_seed_footprints():
    """Llama-3.2-3B's get_memory_footprint() read off the page (two decimals) is the seed tutorial's 12.9 GB fp32,
    3.6 GB int8 and 2.2 GB nf4 (rest in fp16), to the tutorial's one decimal."""
    cases = (("fp32", "auto", "12.85 GB", 12.9), ("int8", "fp16", "3.61 GB", 3.6), ("nf4", "fp16", "2.20 GB", 2.2))
    for precision, dtype, expected, tutorial in cases:
        at = run_page(CALC, model="Llama-3.2-3B", precision=precision, dtype=dtype)
        assert not at.exception and not at.error
        assert metrics(at)["get_memory_footprint()"] == expected
        assert abs(float(expected.removesuffix(" GB")) - tutorial) <= 0.05 + 0.005  # each rounded to its own decimals


@pytest.mark.slow
def test_calculator_settings_come_from_the_url():
    at = settle(run_page(CALC, model="Qwen2.5-0.5B", precision="bf16", method="full", batch="2", seq="256",
                         gpu="A100 80 GB"))
    assert not at.exception and not at.error
    assert at.selectbox(key="model").value == "Qwen2.5-0.5B"
    assert at.radio(key="method").value == "full"
    assert at.number_input(key="batch").value == 2
    arch = read_architecture("Qwen2.5-0.5B")
    assert metrics(at)["True bytes"] == fmt_bytes(estimate_weights(arch, "bf16").weights_bytes)
    sim = simulate(arch, TrainingSettings(method="full", precision="bf16", batch_size=2, max_length=256))
    assert metrics(at)["Simulated training peak"] == fmt_bytes(sim.peak_bytes)
    code = at.code[0].value
    assert 'model_id = "Qwen/Qwen2.5-0.5B"' in code and "get_peft_model" not in code  # full: no LoRA


@pytest.mark.slow
def test_the_training_peak_shows_while_generation_is_still_simulated(monkeypatch):
    """A setting new to both parts (a precision change simulates both) shows the training step's peak as soon as
    it is simulated: generation, simulated after it, says "simulating…" until it is done, then shows its peak."""
    import threading

    import lab.estimate.simulate as simulation

    release, real = threading.Event(), simulation.simulate_generation

    def held(*args, **kwargs):  # generation waits until the test has seen the page with the training peak alone
        assert release.wait(300)
        return real(*args, **kwargs)

    monkeypatch.setattr(simulation, "simulate_generation", held)
    try:
        at = run_page(CALC, model="SmolLM2-135M", precision="nf4", seq="160", prompt="48")
        task = at.session_state["calc_sim"]
        deadline = time.time() + 300
        while task.poll().partial is None and task.running and time.time() < deadline:
            time.sleep(0.2)
        at.run()
        shown = metrics(at)
        arch = read_architecture("SmolLM2-135M")
        sim = simulate(arch, TrainingSettings(precision="nf4", max_length=160))
        assert not at.exception and shown["Simulated training peak"] == fmt_bytes(sim.peak_bytes)
        assert shown["Simulated generation peak"] == "simulating…" and task.running
    finally:
        release.set()  # a failed assertion must not leave the worker's task waiting out its 300 s
    shown = metrics(settle(at))
    assert not at.exception and shown["Simulated generation peak"].endswith("B")
    assert shown["Simulated training peak"] == fmt_bytes(sim.peak_bytes)


def test_a_new_setting_never_waits_for_the_simulation_it_replaces():
    """While a step is simulated (here the simulation lock is held, as a long step holds it), a new setting reruns
    the page at once with its spinner, and the task of the setting left behind is cancelled: the page never waits
    behind a step it has left, and that step is never cached. (Before, asking whether the new setting was cached
    waited for the simulation lock: the page froze until the old step ended, and could not cancel it.)"""
    import threading

    import lab.estimate.simulate as simulation

    arch = read_architecture("SmolLM2-135M")
    old, new = TrainingSettings(max_length=176), TrainingSettings(max_length=208)
    assert not simulation.is_cached(arch, old) and not simulation.is_cached(arch, new)
    held, done, released = threading.Event(), threading.Event(), threading.Event()

    def a_long_step():  # holds the lock until the test is done with the page, or 90 s at most (a page that waits)
        with simulation._LOCK:
            held.set()
            done.wait(90)
            released.set()

    threading.Thread(target=a_long_step, daemon=True).start()
    assert held.wait(60)
    try:
        at = AppTest.from_file(CALC, default_timeout=180)
        at.query_params.update(model="SmolLM2-135M", seq="176")
        at.run()
        left = at.session_state["calc_sim"]
        at.number_input(key="seq").set_value(208).run()
        assert not released.is_set()  # the page was back while the lock was still held
        assert not at.exception and left.cancel_event.is_set()
        assert at.session_state["calc_sim"] is not left and any("results appear" in c.value for c in at.caption)
    finally:
        done.set()
    shown = metrics(settle(at))
    assert shown["Simulated training peak"] == fmt_bytes(simulate(arch, new).peak_bytes)
    assert left.wait(120).status == "cancelled" and not simulation.is_cached(arch, old)


@pytest.mark.slow
def test_calculator_widgets_change_the_numbers():
    at = settle(run_page(CALC, model="SmolLM2-360M", seq="256"))
    before = metrics(at)["Simulated training peak"]
    at.checkbox(key="gc").set_value(False).run()
    after = metrics(settle(at))["Simulated training peak"]
    assert not at.exception and before != after
    at.radio(key="method").set_value("lora").run()
    at.segmented_control(key="precision").set_value("fp32").run()
    settle(at)
    assert metrics(at)["True bytes"] == metrics(at)["get_memory_footprint()"]  # no quantization constants
    assert any("peft import LoraConfig" in c.value for c in at.code)
    assert len(at.get("plotly_chart")) >= 3  # weights, formula vs simulated, the timelines


@pytest.mark.slow
def test_calculator_bad_settings_say_why_and_show_no_stale_figures():
    at = settle(run_page(CALC, model="TinyLlama-1.1B", seq="5000"))  # TinyLlama's context: 2,048
    assert not at.exception
    assert any("2,048" in e.value for e in at.error)
    assert "Simulated training peak" not in metrics(at)
    at = settle(run_page(CALC, model="SmolLM2-135M", r="100000"))  # kept from the URL, refused with the reason
    assert at.number_input(key="r").value == 100000 and any("width" in e.value for e in at.error)


@pytest.mark.slow
def test_calculator_switches_the_method_to_fit_the_precision_and_says_so():
    """Issue 20 papercut 4: QLoRA with a 16-bit base was a red error quoting a CLI flag that hid the multi-GPU and
    inverse sections. The method follows the precision (and the precision a method picked), with a note."""
    at = settle(run_page(CALC, model="SmolLM2-135M", method="qlora", precision="bf16", seq="256"))
    assert not at.exception and not at.error
    assert at.radio(key="method").value == "lora"  # the URL's precision kept, the method switched
    assert [i.value for i in at.info] == ["Method switched from qlora to lora: a bf16 base trains with LoRA."]
    shown = metrics(at)
    assert "Simulated training peak" in shown and "Per-GPU peak on 2 × T4 16 GB" in shown
    assert any(b.label.startswith("Solve for") for b in at.button)
    at.radio(key="method").set_value("qlora").run()  # a method picked: the precision follows
    settle(at)
    assert at.segmented_control(key="precision").value == "nf4-dq" and not at.error
    assert any("Precision switched from bf16 to nf4-dq" in i.value for i in at.info)
    at.segmented_control(key="precision").set_value("fp32").run()  # a precision picked: the method follows
    settle(at)
    assert at.radio(key="method").value == "lora" and not at.error
    assert any("Method switched from qlora to lora" in i.value for i in at.info)


@pytest.mark.slow
def test_calculator_answers_first_one_headline_each_detail_in_tabs():
    """Issue 20 papercuts 2 and 3: the answers (weights, simulated peaks, smallest GPU) come first, one figure per
    question; the detail sits in tabs; the QLoRA weights' fp32 upcast is explained beside the weights figure."""
    at = settle(run_page(CALC, model="Llama-3.2-3B", seq="256"))
    assert not at.exception and not at.error
    labels = [m.label for m in at.metric]
    assert labels[:4] == ["Weights at nf4-dq", "Simulated training peak", "Simulated generation peak",
                          "Smallest GPU for training"]
    assert "Formula (the explanation)" not in labels  # the formula is the explanation, in the Training step tab
    assert [t.label for t in at.tabs][:4] == ["Does it fit?", "Weights", "Training step", "Generation"]
    arch = read_architecture("Llama-3.2-3B")
    table, upcast = estimate_weights(arch, "nf4-dq", "auto"), estimate_weights(arch, "nf4-dq", "fp32")
    captions = " ".join(c.value for c in at.caption)
    assert f"Training holds {fmt_bytes(upcast.weights_bytes)} of weights" in captions
    assert f"(+{fmt_bytes(upcast.weights_bytes - table.weights_bytes)})" in captions
    assert "The hand formula" in captions  # the second figure explained beside the headline, not a rival


def test_a_hub_id_being_checked_shows_checking_never_the_previous_error(monkeypatch):
    """Issue 20 bug 1 (the page's part): while a new Hub id is checked (seconds against the Hub), the page showed
    the previous input's error greyed out. Now the check runs off the script thread and the page says
    'Checking …' where the answer will be."""
    import threading

    import pages._arch_ui as arch_ui

    release = threading.Event()

    def hub(spec):
        if spec == "someone/missing":
            raise LabError("someone/missing was not found on the Hub.")
        assert release.wait(60)  # the Hub taking its time
        return read_architecture("SmolLM2-135M")

    monkeypatch.setattr(arch_ui, "read_architecture", hub)

    def finished(at):
        if "arch_check" in at.session_state:  # still running when the page last looked
            task = at.session_state["arch_check"]
            assert task.wait(60).status in ("done", "failed")
            at.session_state[arch_ui.CHECKED] = (task.name, task.result if task.status == "done" else task.error)
        return at.run()  # AppTest runs the page's poller only with the page: store what it would have

    at = run_page(LORA, model=arch_ui.OTHER, source="someone/missing")
    at = finished(at)
    assert [e.value for e in at.error] == ["someone/missing was not found on the Hub."]
    at.text_input(key="source").set_value("someone/slow").run()
    assert not at.exception and not at.error  # the previous input's error is gone at once
    assert [i.value for i in at.info] == ["Checking someone/slow…"]
    release.set()
    at = finished(at)
    assert not at.error and "SmolLM2-135M" in " ".join(c.value for c in at.caption)


@pytest.mark.slow
@pytest.mark.parametrize("page", [CALC, LORA])
def test_every_catalog_model_renders(page):
    at = AppTest.from_file(page, default_timeout=180).run()
    for name in ["embedded", *catalog_names()]:
        at.selectbox(key="model").set_value(name).run()
        if page == CALC and name in ("embedded", "Gemma-2-2B", "Phi-3-mini", "Llama-3.1-70B"):
            settle(at)  # simulated: SDPA-less Gemma-2 (eager), fused Phi-3, the largest; the rest render the spinner
            assert "Simulated training peak" in metrics(at), name
        assert not at.exception, name
        assert not at.error, (name, [e.value for e in at.error])
        assert metrics(at), name


@pytest.mark.slow
@pytest.mark.parametrize("page", [CALC, LORA])
def test_uploaded_config_and_bad_upload(page):
    at = AppTest.from_file(page, default_timeout=180).run()
    at.selectbox(key="model").set_value(UPLOAD).run()
    text = resolve_source("Phi-3-mini").path.read_bytes()
    at.file_uploader(key="config_upload").set_value(("config.json", text, "application/json")).run()
    assert not at.exception and not at.error
    assert "3,821,079,552" in " ".join(c.value for c in at.caption)
    at.file_uploader(key="config_upload").set_value(("config.json", b"{broken", "application/json")).run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "config.json is not valid JSON (line 1, column 2: Expecting property name enclosed in double quotes)."
    ]
    bad_type = json.dumps({"model_type": "vit"}).encode()
    at.file_uploader(key="config_upload").set_value(("vit.json", bad_type, "application/json")).run()
    assert not at.exception and "no causal-LM class" in at.error[0].value


def test_lora_page_seed_example_and_peft_numbers():
    at = run_page(LORA, model="Llama-3.2-3B", r="32", alpha="64.0", preset="custom")
    at.multiselect(key="modules").set_value(["q_proj", "k_proj", "v_proj", "o_proj"]).run()
    assert not at.exception and not at.error
    m = metrics(at)
    assert m["Trainable parameters"] == "18.35M" and m["Adapter file, fp32"] == "73.40 MB"
    assert "trainable params: 18,350,080" in at.code[0].value
    table = at.dataframe[0].value
    assert list(table["module"]) == ["q_proj", "k_proj", "v_proj", "o_proj", "TOTAL"]
    assert table["total"].iloc[-1] == "18,350,080"


def test_lora_page_alpha_follows_r_until_set():
    at = run_page(LORA, model="SmolLM2-135M")
    assert at.number_input(key="alpha").value == 32.0
    at.number_input(key="r").set_value(8).run()
    assert at.number_input(key="alpha").value == 16.0  # 2·r
    at.number_input(key="alpha").set_value(5.0).run()
    at.number_input(key="r").set_value(32).run()
    assert at.number_input(key="alpha").value == 5.0  # a value someone chose stays
    at.number_input(key="r").set_value(5000).run()
    assert any("width" in w.value for w in at.warning)


def test_lora_page_alpha_keeps_following_r_after_a_large_r():
    """Issue 20 bug 2: r = 5000 made alpha 10000, above the widget's bound: alpha collapsed to 0.5 and stopped
    following r while the URL said alpha=10000.0."""
    at = run_page(LORA, model="SmolLM2-135M")
    at.number_input(key="r").set_value(5000).run()
    assert at.number_input(key="alpha").value == 10000.0
    at.number_input(key="r").set_value(16).run()
    assert not at.exception and at.number_input(key="alpha").value == 32.0
    assert at.query_params["alpha"] in ("32.0", ["32.0"])


def test_lora_page_presets_dora_and_fused_modules():
    at = run_page(LORA, model="Phi-3-mini", preset="all-linear", r="8", dora="true")
    assert not at.exception and not at.error
    assert at.multiselect(key="modules").value == ["o_proj", "qkv_proj", "gate_up_proj", "down_proj"]
    arch = read_architecture("Phi-3-mini")
    est = estimate_lora(arch, 8, 16.0, ["o_proj", "qkv_proj", "gate_up_proj", "down_proj"], use_dora=True)
    assert metrics(at)["Trainable parameters"] == fmt_count(est.trainable_params)
    assert "use_dora=True" in at.code[0].value
    at.segmented_control(key="preset").set_value("qv").run()
    assert at.multiselect(key="modules").value == ["qkv_proj"]  # Phi-3 keeps q and v inside qkv_proj
    assert any("qkv_proj" in i.value and "fused" in i.value for i in at.info)  # and the page says so


def test_lora_page_bad_rank_shows_the_cli_message():
    at = run_page(LORA, model="SmolLM2-135M", preset="custom")
    at.multiselect(key="modules").set_value([]).run()
    assert not at.exception
    assert at.error[0].value.startswith("No LoRA target modules given.")


@pytest.mark.slow
def test_calculator_inverse_runs_in_the_background():
    at = settle(run_page(CALC, model="SmolLM2-135M", method="lora", precision="bf16", seq="256", inv_gpu="T4 16 GB"))
    at.button[0].click().run()  # "Solve for T4 16 GB"
    task = at.session_state["calc_inverse"]
    deadline = time.time() + 900
    while task.poll().running and time.time() < deadline:
        time.sleep(0.5)
    # the poller stores the answers when it sees the task end; AppTest runs fragments only with the page
    at.session_state["calc_inverse_result"] = (task.name, task.result)
    at.run()
    shown = metrics(at)
    assert {"max batch size", "max seq len", "max r"} <= set(shown)
    # each answer reached the page as soon as it was known: the partial results grew one knob at a time
    assert [list(p.partial) for p in task.progress] == [[], ["batch_size"], ["batch_size", "max_length"],
                                                        ["batch_size", "max_length", "r"]]
    from lab.estimate.gpus import get_gpu
    from lab.estimate.inverse import max_fitting

    arch = read_architecture("SmolLM2-135M")
    settings = TrainingSettings(method="lora", precision="bf16", max_length=256, targets="all-linear")
    assert shown["max seq len"] == f"{max_fitting(arch, settings, get_gpu('T4'), 'max_length').value:,}"


@pytest.mark.slow
def test_calculator_fsdp_settings_move_the_per_gpu_peak():
    """The multi-GPU tab's FSDP settings reach lab.estimate.parallel: CPU offload on (the lab's launch) by default;
    off, each GPU holds its shard of the model state again."""
    at = settle(run_page(CALC, model="SmolLM2-135M", seq="128"))
    assert not at.exception and not at.error
    label = "Per-GPU peak on 2 × T4 16 GB"
    on = metrics(at)[label]
    assert "in CPU RAM (offload)" in " ".join(c.value for c in at.caption)
    at.toggle(key="cpu_offload").set_value(False).run()
    assert not at.exception and metrics(at)[label] != on
    assert "held by the other GPUs" in " ".join(c.value for c in at.caption)
