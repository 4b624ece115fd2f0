"""Mixture-of-experts as transformers 5 builds it: fused 3-D experts, what bitsandbytes and peft do with them.

Tiny random configs (two layers, four experts) of the families people fine-tune; everything on the meta
device or a few kilobytes of real tensors.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from lab.estimate.experts import DROPOUT_NOTE, active_params, as_written, expert_groups
from lab.estimate.lora import estimate_lora, resolve_targets, target_notes
from lab.estimate.simulate import peft_targets
from lab.models.architecture import architecture_from_config

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


def test_qlora_on_moe_simulates_with_dropout_zero():
    from lab.estimate.simulate import resolve_recipe, simulate
    from lab.estimate.training import TrainingSettings

    arch = architecture_from_config(tiny_config("mixtral"), "mixtral")
    settings = TrainingSettings(method="qlora", precision="nf4", dtype="bf16", max_length=32, dropout=0.05)
    recipe = resolve_recipe(arch, settings)
    assert recipe.parameters == ("gate_up_proj", "down_proj") and recipe.dropout == 0.0
    sim = simulate(arch, settings)
    assert sim.by_category["adapters"] > 0 and sim.peak_bytes > 0


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


def test_tiny_moe_trains_on_attention_and_experts_and_plain_peft_loads_it(tiny_moe_dir, tmp_path):
    """The Training page's code (lab.training.runner.train) with LoRA on attention and the fused experts.
    (The playground's side-by-side columns do not take expert adapters yet: lab.generate.mixed_lora batches
    Linear LoRA only; docs/architectures.md.)"""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lab.training.config import default_config
    from lab.training.runner import train

    cfg = default_config("cpu", model=str(tiny_moe_dir), dataset="style", output=str(tmp_path / "moe"),
                         max_steps=2, batch_size=2, max_length=64, eval_steps=0, save_steps=100, logging_steps=1,
                         precision="nf4", targets="attention-experts", learning_rate=5e-2)
    r = train(cfg)
    assert r["status"] == "finished" and all(x == x for x in r["losses"])
    ac = json.loads((tmp_path / "moe" / "adapter_config.json").read_text())
    assert sorted(ac["target_parameters"]) == ["down_proj", "gate_up_proj"] and ac["lora_dropout"] == 0.0
    base = AutoModelForCausalLM.from_pretrained(tiny_moe_dir).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, tmp_path / "moe").eval()
        after = tuned(ids).logits
    assert not torch.allclose(before, after)  # the trained experts and attention change the answer
