"""LoRA counts equal what peft's get_peft_model creates, on several real (tiny) architectures."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from lab.errors import LabError
from lab.estimate.lora import estimate_lora, packed_param_count, preset_targets
from lab.models.architecture import architecture_from_config
from lab.models.reader import read_architecture
from tests.fixtures_architecture import TINY_CONFIGS, tiny_config


def peft_counts(config, **lora_kwargs) -> tuple[int, int, dict[str, int]]:
    """(trainable, all, trainable params per targeted leaf name) from a real peft model."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora_kwargs))
    trainable, total = peft_model.get_nb_trainable_parameters()
    per_leaf: dict[str, int] = {}
    for name, p in peft_model.named_parameters():
        if p.requires_grad:
            parts = [x for x in name.split(".") if x != "base_layer"]
            leaf = next(parts[i - 1] for i in range(len(parts)) if parts[i].startswith("lora_") or parts[i] == "bias")
            per_leaf[leaf] = per_leaf.get(leaf, 0) + p.numel()
    return trainable, total, per_leaf


CASES = [
    dict(r=8, target_modules=["q_proj", "v_proj"]),
    dict(r=4, lora_alpha=16, target_modules="all-linear"),
    dict(r=16, target_modules="all-linear", use_dora=True),
    dict(r=8, target_modules="all-linear", use_rslora=True, bias="lora_only"),
    dict(r=3, target_modules=["o_proj", "down_proj"], bias="all"),
    dict(r=8, target_modules="all-linear", lora_bias=True),
]


@pytest.mark.parametrize("kind", list(TINY_CONFIGS))
@pytest.mark.parametrize("case", range(len(CASES)))
def test_counts_equal_peft(kind, case):
    config = tiny_config(kind)
    arch = architecture_from_config(config, f"tiny-{kind}")
    kw = dict(CASES[case])
    targets = kw.pop("target_modules")
    if isinstance(targets, list) and not all(t in arch.linear_names for t in targets):
        targets = [t for t in targets if t in arch.linear_names] or "all-linear"  # Phi-3: no q/v_proj
    est = estimate_lora(arch, kw.pop("r"), kw.pop("lora_alpha", None), targets, use_dora=kw.pop("use_dora", False),
                        use_rslora=kw.pop("use_rslora", False), bias=kw.pop("bias", "none"),
                        lora_bias=kw.pop("lora_bias", False))
    trainable, total, per_leaf = peft_counts(
        config, r=est.r, lora_alpha=est.alpha, target_modules=list(est.targets), use_dora=est.use_dora,
        use_rslora=est.use_rslora, bias=est.bias, lora_bias=est.lora_bias)
    assert est.trainable_params == trainable
    assert est.params_total + est.added_params == total
    ours: dict[str, int] = {}
    for row in est.rows:  # a leaf name can have several shapes (GPT-2's attn.c_proj and mlp.c_proj)
        ours[row.name] = ours.get(row.name, 0) + row.total
    for name, total in ours.items():
        assert total == per_leaf.pop(name)
    assert sum(per_leaf.values()) == est.other_trainable_params  # biases of untargeted layers (bias='all')


def test_fused_and_biased_architectures_are_read_from_the_model():
    phi3 = architecture_from_config(tiny_config("phi3"), "phi3")
    assert {"qkv_proj", "gate_up_proj"} <= set(phi3.linear_names)
    assert preset_targets(phi3, "attention") == ["o_proj", "qkv_proj"] or set(preset_targets(phi3, "attention")) == {
        "o_proj",
        "qkv_proj",
    }
    qwen = architecture_from_config(tiny_config("qwen2"), "qwen2")
    biased = {g.name for g in qwen.linears if g.bias}
    assert biased == {"q_proj", "k_proj", "v_proj"}
    est = estimate_lora(qwen, 8, targets="q_proj,k_proj,v_proj", bias="lora_only")
    assert all(row.unfrozen_bias_params == row.out_features for row in est.rows)


def test_seed_example_llama_3_2_3b():
    """The tutorial's hand computation: r=32 on q,k,v,o of Llama-3.2-3B -> 18,350,080 params, 73.4 MB fp32."""
    arch = read_architecture("Llama-3.2-3B")
    est = estimate_lora(arch, 32, 64, "q_proj,k_proj,v_proj,o_proj")
    h, kv, layers, r = arch.hidden_size, arch.num_kv_heads * arch.head_dim, arch.num_layers, 32
    assert est.trainable_params == layers * r * (2 * (h + h) + 2 * (h + kv))
    assert est.trainable_params == 18_350_080
    assert round(est.adapter_bytes_fp32 / 1e6, 1) == 73.4


def test_seed_example_equals_peft_on_the_meta_model():
    """peft itself, on the full-size Llama-3.2-3B built on the meta device (no memory)."""
    arch = read_architecture("Llama-3.2-3B")
    from lab.models.sources import resolve_source

    config = resolve_source("Llama-3.2-3B").load_config()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        peft_model = get_peft_model(
            model, LoraConfig(r=32, lora_alpha=64, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        )
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert trainable == estimate_lora(arch, 32, 64, "q_proj,k_proj,v_proj,o_proj").trainable_params
    assert total == arch.params_total + trainable


def test_packed_4bit_count_is_what_numel_shows(tiny_model_dir):
    """'all params: 1.8B' for a 3B model: a 4-bit model's packed uint8 tensors count half in numel()."""
    from lab.models.loading import load_model

    arch = read_architecture(str(tiny_model_dir))
    lm = load_model(str(tiny_model_dir), "nf4", "fp32", "cpu")
    assert sum(p.numel() for p in lm.model.parameters()) == packed_param_count(arch)
    assert packed_param_count(arch) < arch.params_total
    big = read_architecture("Llama-3.2-3B")
    assert f"{packed_param_count(big) / 1e9:.1f}B" == "1.8B"


@pytest.mark.parametrize(("kwargs", "needle"), [
    (dict(r=0), "r=0"),
    (dict(r=-4), "r=-4"),
    (dict(r=8, targets="foo_proj"), "'foo_proj'"),
    (dict(r=8, targets=""), "No LoRA target"),
    (dict(r=8, bias="some"), "'some'"),
    (dict(r=8, alpha=-1), "lora_alpha"),
])
def test_bad_settings_name_the_problem(kwargs, needle):
    arch = architecture_from_config(tiny_config("llama"), "tiny")
    with pytest.raises(LabError, match=needle.replace("(", r"\(")):
        estimate_lora(arch, **kwargs)


def test_cli_lora_json_and_errors(capsys, tmp_path):
    import json

    from lab.cli import main

    assert (
        main(["lora", "--model", "Llama-3.2-3B", "--r", "32", "--targets", "q_proj,k_proj,v_proj,o_proj", "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["trainable_params"] == 18_350_080 and out["adapter_bytes_fp32"] == 73_400_320
    assert [m["name"] for m in out["modules"]] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    bad = tmp_path / "config.json"
    for content, needle in (("{oops", "not valid JSON"), ('{"model_type": "vit"}', "no causal-LM class")):
        bad.write_text(content)
        assert main(["lora", "--model", str(bad), "--r", "8"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and needle in err and "\n" not in err
    assert main(["lora", "--model", "Phi-3-mini", "--r", "8", "--targets", "q_proj"]) == 2
    assert "qkv_proj" in capsys.readouterr().err  # the message lists the names the model has
