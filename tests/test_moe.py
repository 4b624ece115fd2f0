"""Mixture-of-experts as transformers 5 builds it: fused 3-D experts, what bitsandbytes and peft do with them.

Tiny random configs (two layers, four experts) of the families people fine-tune; everything on the meta
device or a few kilobytes of real tensors. At the end, the whole path on one tiny random Mixtral: loaded at NF4,
trained from the Training page (attention and experts), and side by side with its base in the Playground.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from lab.estimate.experts import DROPOUT_NOTE, active_params, as_written, expert_groups
from lab.estimate.lora import estimate_lora, resolve_targets, target_notes
from lab.estimate.simulate import peft_targets
from lab.models.architecture import architecture_from_config

ROOT = Path(__file__).resolve().parent.parent
TRAINING_PAGE, PLAYGROUND_PAGE = str(ROOT / "pages" / "training.py"), str(ROOT / "pages" / "playground.py")
PROMPT = "Name three colours of the rainbow."
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=256, max_position_embeddings=512)
FAMILIES = {
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16),
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2, head_dim=16, layer_types=None),
    "deepseek_v3": dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_group=1, topk_group=1,
                        first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8,
                        qk_nope_head_dim=8, v_head_dim=16),
    "olmoe": dict(num_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=64),
    "phimoe": dict(num_local_experts=4, num_experts_per_tok=2),
}


def tiny_config(model_type: str):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **{**TINY, **FAMILIES[model_type]})


def peft_trainable(config, arch, targets: str, r: int) -> int:
    """peft's own count for the LoraConfig the lab writes (lab.estimate.simulate.peft_targets)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    modules, parameters = peft_targets(arch, targets, r)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(config)
        lora = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0 if parameters else 0.05,
                          target_modules=modules if isinstance(modules, str) else (list(modules) or None),
                          target_parameters=list(parameters) or None, task_type="CAUSAL_LM")
        with as_written():
            peft_model = get_peft_model(model, lora)
    trainable, _ = peft_model.get_nb_trainable_parameters()
    return trainable


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe", "gpt_oss", "deepseek_v3", "olmoe", "qwen2_moe"])
@pytest.mark.parametrize("targets", ["all-linear", "attention-experts", "attention"])
def test_lora_estimate_equals_peft_on_moe(model_type, targets):
    config = tiny_config(model_type)
    arch = architecture_from_config(config, model_type)
    r = 4
    assert estimate_lora(arch, r, targets=targets).trainable_params == peft_trainable(config, arch, targets, r)


def test_experts_are_fused_parameters_and_adapted_per_expert():
    arch = architecture_from_config(tiny_config("qwen3_moe"), "qwen3_moe")
    groups = {g.name: g for g in expert_groups(arch)}
    assert set(groups) == {"gate_up_proj", "down_proj"}
    assert groups["gate_up_proj"].experts == 4 and groups["gate_up_proj"].count == 2
    est = estimate_lora(arch, 4, targets="attention-experts")
    row = next(r for r in est.rows if r.name == "gate_up_proj")
    assert row.experts == 4
    assert row.per_expert == 4 * sum(groups["gate_up_proj"].dims)
    assert row.total == row.per_expert * 4 * 2
    # "attention" leaves the experts alone
    assert "gate_up_proj" not in resolve_targets(arch, "attention", 4)


def test_experts_stay_unquantized_in_the_weights_estimate():
    from lab.estimate.weights import estimate_weights

    arch = architecture_from_config(tiny_config("mixtral"), "mixtral")
    expert_params = sum(t.numel for t in arch.tensors if t.kind == "expert")
    assert expert_params > 0 and not any(t.quantized for t in arch.tensors if t.kind == "expert")
    w = estimate_weights(arch, "nf4", "bf16")
    comp = next(c for c in w.components if c.name.startswith("experts"))
    assert comp.params == expert_params and comp.bytes == 2 * expert_params


def test_only_an_experts_modules_3d_parameters_are_experts():
    """Every 3-D parameter outside a convolution was filed as a fused expert: XLNet's attention q, k, v, o, r
    (d_model × heads × head_dim), RWKV's time_mix, RecurrentGemma's gates, Zamba's Mamba projections, Gemma 3's
    vision probe. 'all-linear' then handed them to peft's ParamWrapper, which stopped. An expert lives in an
    experts module (by path or class: GraniteMoE's ParallelExperts); the real MoE families keep theirs."""
    from transformers import AutoConfig

    xlnet = architecture_from_config(AutoConfig.for_model("xlnet", d_model=64, n_layer=2, n_head=4, d_inner=128,
                                                          vocab_size=256), "xlnet")
    assert not expert_groups(xlnet) and not any(t.kind == "expert" for t in xlnet.tensors)
    assert "q" not in resolve_targets(xlnet, "all-linear", 4)
    granite = architecture_from_config(AutoConfig.for_model("granitemoe", **TINY, num_local_experts=4,
                                                            num_experts_per_tok=2), "granitemoe")
    assert {g.experts for g in expert_groups(granite)} == {4}
    for model_type in FAMILIES:
        assert {g.experts for g in expert_groups(architecture_from_config(tiny_config(model_type), model_type))} == {4}


def test_active_params_follow_top_k():
    arch = architecture_from_config(tiny_config("mixtral"), "mixtral")
    expert = sum(t.numel for t in arch.tensors if t.kind == "expert")
    assert active_params(arch) == arch.params_total - expert + expert // 2  # top-2 of 4


def test_narrow_router_gate_is_left_out_of_broad_presets_with_a_note():
    arch = architecture_from_config(tiny_config("qwen2_moe"), "qwen2_moe")
    names = resolve_targets(arch, "all-linear", 16)
    assert "shared_expert_gate" not in names and "q_proj" in names
    notes = target_notes(arch, "all-linear", 16)
    assert any("shared_expert_gate" in n and "narrower than r=16" in n for n in notes)
    assert DROPOUT_NOTE in notes


def test_a_router_that_subclasses_linear_is_left_out_and_qlora_simulates():
    """PhiMoE's router is an nn.Linear subclass whose forward returns (routing weights, expert indices): 'all-linear'
    took it, and peft's LoRA layer failed on the tuple ("'tuple' object has no attribute 'dtype'"), so the whole
    QLoRA request was refused. It is left out of broad presets with a note, and the step simulates."""
    from lab.estimate.simulate import simulate
    from lab.estimate.training import TrainingSettings

    arch = architecture_from_config(tiny_config("phimoe"), "phimoe")
    assert [g.name for g in arch.linears if not g.returns_tensor] == ["router"]
    assert "router" not in resolve_targets(arch, "all-linear", 4) and "q_proj" in resolve_targets(arch, "all-linear", 4)
    assert any(n.startswith("router is a router") for n in target_notes(arch, "all-linear", 4))
    assert estimate_lora(arch, 4, targets="all-linear").trainable_params == peft_trainable(
        tiny_config("phimoe"), arch, "all-linear", 4)
    sim = simulate(arch, TrainingSettings(method="qlora", precision="nf4", dtype="bf16", max_length=32, r=4))
    assert sim.by_category["adapters"] > 0 and sim.peak_bytes > 0


def test_qlora_on_moe_simulates_with_dropout_zero():
    from lab.estimate.simulate import resolve_recipe, simulate
    from lab.estimate.training import TrainingSettings

    arch = architecture_from_config(tiny_config("mixtral"), "mixtral")
    settings = TrainingSettings(method="qlora", precision="nf4", dtype="bf16", max_length=32, dropout=0.05)
    recipe = resolve_recipe(arch, settings)
    assert recipe.parameters == ("gate_up_proj", "down_proj") and recipe.dropout == 0.0
    sim = simulate(arch, settings)
    assert sim.by_category["adapters"] > 0 and sim.peak_bytes > 0


def test_dora_on_fused_experts_is_refused_in_one_line_and_dora_on_attention_simulates():
    """peft's ParamWrapper has no DoRA: a DoRA request that reaches the fused experts is refused before anything is
    built (the calculator, `lab memory` and a run's preflight share peft_targets), saying what to do; DoRA on the
    attention alone simulates. (peft's own ValueError, deep in a simulation, used to come back as "try --loss logits
    or --attn eager".)"""
    from dataclasses import replace

    from lab.errors import LabError
    from lab.estimate.simulate import resolve_recipe, simulate
    from lab.estimate.training import TrainingSettings

    arch = architecture_from_config(tiny_config("mixtral"), "mixtral")
    settings = TrainingSettings(method="qlora", precision="nf4", dtype="bf16", max_length=32, use_dora=True)
    with pytest.raises(LabError) as refused:
        resolve_recipe(arch, settings)
    assert refused.value.message.startswith("DoRA cannot adapt the fused experts (gate_up_proj, down_proj)")
    assert refused.value.hint.startswith("Turn DoRA off, or target 'attention'")
    with pytest.raises(LabError, match="DoRA cannot adapt"):
        peft_targets(arch, "attention-experts", 8, use_dora=True)
    assert peft_targets(arch, "attention", 8, use_dora=True)[1] == ()
    assert simulate(arch, replace(settings, targets="attention")).peak_bytes > 0


# --------------------------------------------------------------------------- the whole path on this CPU
@pytest.fixture(scope="module")
def tiny_moe_dir(tmp_path_factory, embedded_dir):
    from tests.conftest import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-mixtral"), embedded_dir, "mixtral",
                            num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False)


def test_tiny_moe_loads_at_nf4_with_experts_unquantized_measured_as_predicted(tiny_moe_dir):
    from lab.inspect.load_report import predict
    from lab.models.loading import load_model
    from lab.models.measure import measure_model
    from tests.test_measure import independent_count

    loaded = load_model(str(tiny_moe_dir), "nf4")
    experts = [p for n, p in loaded.model.named_parameters() if n.endswith("experts.gate_up_proj")]
    assert experts and all(p.dim() == 3 and p.dtype.is_floating_point for p in experts)  # bitsandbytes left them
    fp = measure_model(loaded.model)
    assert fp.total_bytes == independent_count(loaded.model)
    estimate = predict(loaded.source, "nf4", "compute", loaded.device)
    assert abs(estimate.weights_bytes - fp.total_bytes) / fp.total_bytes <= 0.01


@pytest.fixture(scope="module")
def moe_run(tiny_moe_dir, tmp_path_factory) -> tuple[Path, dict]:
    """The tiny MoE trained once for the tests below, as the Training page trains it: the page (AppTest) gets the
    model, NF4 and the `attention-experts` preset and Train is clicked; the queued command's own arguments then run
    in this process (lab.training.runner.train, what `python -m lab train` calls) instead of a process of its own."""
    import argparse

    from lab.training import queue as Q
    from lab.training import runs as R
    from lab.training.config import add_arguments, from_args
    from lab.training.runner import train

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QLORA_LAB_RUNS", str(tmp_path_factory.mktemp("moe-runs")))
        mp.setattr(Q, "dispatch", lambda: None)  # queued, not started: run below, in this process
        at = AppTest.from_file(TRAINING_PAGE, default_timeout=120).run()
        at.text_input(key="t_model").set_value(str(tiny_moe_dir)).run()
        at.selectbox(key="t_precision").set_value("nf4")
        at.selectbox(key="t_targets").set_value("attention-experts")
        for key, value in (("t_steps", 2), ("t_batch", 2), ("t_maxlen", 64), ("t_eval", 0), ("t_lr", 5e-2)):
            at.number_input(key=key).set_value(value)
        at.run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        at.button(key="t_train").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        run_dir = Path(at.session_state["train_run_dir"])
        queued = R.read_marker(run_dir, R.QUEUE_FILE)["args"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run_dir, train(from_args(parser.parse_args([*queued, "--output", str(run_dir)])))


@pytest.mark.slow
def test_tiny_moe_trains_from_the_training_page_on_attention_and_experts(tiny_moe_dir, moe_run):
    """The Training page's run with LoRA on attention and the fused experts (ParamWrapper, lora_dropout 0), and
    plain peft loads what it saved."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir, r = moe_run
    assert r["status"] == "finished" and r["steps"] == 2 and all(x == x for x in r["losses"])
    ac = json.loads((run_dir / "adapter_config.json").read_text())
    assert sorted(ac["target_parameters"]) == ["down_proj", "gate_up_proj"] and ac["lora_dropout"] == 0.0
    assert {"q_proj", "k_proj", "v_proj", "o_proj"} <= set(ac["target_modules"])
    assert json.loads((run_dir / "lab_run.json").read_text())["config"]["precision"] == "nf4"
    base = AutoModelForCausalLM.from_pretrained(tiny_moe_dir).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, run_dir).eval()
        after = tuned(ids).logits
    assert not torch.allclose(before, after)  # the trained experts and attention change the answer


@pytest.mark.slow
def test_playground_puts_the_tiny_moe_adapter_beside_its_base(tiny_moe_dir, moe_run, monkeypatch, tmp_path):
    """The Playground page (AppTest) on the tiny MoE and its trained run: the base column is the base's own greedy
    output, the adapter column plain peft's (PeftModel.from_pretrained on a separately loaded base)."""
    from tests.test_compare import reference
    from tests.test_playground_page import generate, open_page, widget

    monkeypatch.setenv("QLORA_LAB_RUNS", str(tmp_path))  # no run preselected: the adapter is named below
    run_dir, _ = moe_run
    at = open_page(str(tiny_moe_dir))
    widget(at.text_area, "Other adapters (one per line)").set_value(str(run_dir))
    at = generate(at.run(), PROMPT)
    assert not at.exception and not at.error, [e.value for e in at.error]
    columns = at.session_state["playground_last"].columns  # the page's finished comparison (pages/playground.py)
    messages = [{"role": "user", "content": PROMPT}]
    assert columns["base"].text == reference(tiny_moe_dir, messages, n=12)
    assert columns[run_dir.name].text == reference(tiny_moe_dir, messages, run_dir, n=12)
    assert columns["base"].text != columns[run_dir.name].text  # the adapter really answers otherwise
    assert {"**base** · no adapter", f"**{run_dir.name}**"} <= {m.value for m in at.markdown}


def test_row_experts_match_peft_per_row_and_leave_other_threads_on_the_base(tiny_moe_dir, moe_run):
    """One forward pass of a base row and an adapter row through the shared model: the base row is the plain base, the
    adapter row matches peft's own forward with the adapter on (attention and experts), and a
    forward from another thread inside the block sees the plain base."""
    from lab.generate.adapters import inspect_adapter
    from lab.generate.bank import LOCAL, adapter_bank
    from lab.models.loading import load_model
    from tests.fixtures_playground import row_lora_logits

    loaded = load_model(str(tiny_moe_dir), "fp32")
    bank = adapter_bank(loaded)
    r = row_lora_logits(loaded, bank, next(iter(bank.use(LOCAL, [inspect_adapter(str(moe_run[0]))]).values())))
    base, adapted, mixed = r["base"], r["adapted"], r["mixed"]
    # Which tokens share an expert's matmul depends on every row's routing: float32 rounding, not bits (mixed_lora).
    torch.testing.assert_close(mixed[0], base[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1], adapted[1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(adapted[1], base[1], atol=1e-3)  # the adapter really changes row 1
    assert torch.equal(r["other"], base) and torch.equal(r["after"], base)
    assert not any("forward" in vars(m) for m in bank.peft_model.modules())  # every experts forward is back
