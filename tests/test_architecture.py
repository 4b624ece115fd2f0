"""The architecture reader: real shapes from meta-device models, the catalog, caching, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from lab.errors import LabError
from lab.models.architecture import architecture_from_config
from lab.models.catalog import catalog_names
from lab.models.reader import read_architecture, read_architecture_json
from lab.models.sources import resolve_source
from tests.fixtures_architecture import TINY_CONFIGS, tiny_config

ROOT = Path(__file__).resolve().parent.parent

REQUIRED = ["Llama-3.2-1B", "Llama-3.2-3B", "Llama-3.1-8B", "Llama-3.1-70B", "Llama-2-7B", "Mistral-7B",
            "Qwen2.5-0.5B", "Qwen2.5-1.5B", "Qwen2.5-7B", "TinyLlama-1.1B", "SmolLM2-135M", "SmolLM2-360M",
            "SmolLM2-1.7B", "Phi-3-mini", "Gemma-2-2B"]


def test_catalog_has_every_required_model():
    assert set(REQUIRED) <= set(catalog_names())


@pytest.mark.parametrize("name", REQUIRED)
def test_catalog_model_reads(name):
    arch = read_architecture(name)
    config = resolve_source(name).load_config()
    assert arch.params_total == sum(t.numel for t in arch.tensors if t.kind != "buffer")
    assert arch.tie_word_embeddings == bool(config.tie_word_embeddings)
    assert arch.num_layers == config.num_hidden_layers
    assert arch.config_dtype in ("bfloat16", "float16", "float32")
    # every Linear group appears once per layer, lm_head once
    for g in arch.linears:
        assert g.count == (1 if g.paths[0] == arch.output_path else arch.num_layers)
    assert not any(g.quantized for g in arch.linears if g.paths[0] == arch.output_path)


def test_published_parameter_counts():
    """Counts the model cards publish (tied embeddings counted once)."""
    assert read_architecture("Qwen2.5-0.5B").params_total == 494_032_768
    assert read_architecture("Llama-3.2-3B").params_total == 3_212_749_824
    assert read_architecture("Llama-3.1-8B").params_total == 8_030_261_248
    assert read_architecture("SmolLM2-135M").params_total == 134_515_008


@pytest.mark.parametrize("kind", list(TINY_CONFIGS))
def test_shapes_equal_a_real_model(kind):
    """Every Linear of a real (random) model is in exactly one group with the right shape and bias."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(kind)
    arch = architecture_from_config(config, kind)
    model = AutoModelForCausalLM.from_config(config)
    from transformers.pytorch_utils import Conv1D

    def shape(m):  # Conv1D (GPT-2) stores its weight as in × out
        return (m.weight.shape[0], m.nf) if isinstance(m, Conv1D) else (m.in_features, m.out_features)

    real = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}  # FalconLinear too
    grouped = {p: g for g in arch.linears for p in g.paths}
    assert set(grouped) == set(real)
    for name, m in real.items():
        g = grouped[name]
        assert (g.in_features, g.out_features, g.bias) == (*shape(m), m.bias is not None)
    assert arch.params_total == model.num_parameters()
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    assert arch.embedding_params == embeddings


def test_fused_biased_and_tied_come_from_the_model():
    phi3 = read_architecture("Phi-3-mini")
    assert {"qkv_proj", "gate_up_proj"} <= set(phi3.linear_names) and "q_proj" not in phi3.linear_names
    qkv = next(g for g in phi3.linears if g.name == "qkv_proj")
    assert qkv.out_features == 3 * phi3.hidden_size
    qwen = read_architecture("Qwen2.5-0.5B")
    assert {g.name for g in qwen.linears if g.bias} == {"q_proj", "k_proj", "v_proj"}
    gemma = read_architecture("Gemma-2-2B")
    assert gemma.tie_word_embeddings and gemma.tied_pairs
    lm_head = next(g for g in gemma.linears if g.name == "lm_head")
    assert lm_head.tied and not lm_head.quantized


@pytest.mark.embedded
def test_embedded_reads_like_the_loaded_model(embedded_dir):
    from transformers import AutoModelForCausalLM

    arch = read_architecture("embedded")
    model = AutoModelForCausalLM.from_pretrained(embedded_dir, dtype=torch.float32)
    assert arch.params_total == model.num_parameters() == 134_515_008
    assert (arch.num_layers, arch.hidden_size, arch.vocab_size) == (30, 576, 49152)


def test_cached_per_config(monkeypatch):
    import lab.models.architecture as architecture

    read_architecture("Llama-3.1-70B")

    def rebuild(*args):
        raise AssertionError("the architecture was built again instead of read from the cache")

    monkeypatch.setattr(architecture, "_build", rebuild)
    a = read_architecture("Llama-3.1-70B")  # a page rerun: no rebuild
    assert a is read_architecture("llama-3.1-70b")  # case-insensitive catalog names, same cache entry


def test_uploaded_json_equals_catalog():
    text = (resolve_source("Qwen2.5-0.5B").path).read_text()
    up = read_architecture_json(text.encode(), "config.json")
    assert up.params_total == read_architecture("Qwen2.5-0.5B").params_total


@pytest.mark.parametrize(("text", "needle"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "no 'model_type'"),
    (json.dumps({"model_type": "no-such-model"}), "'no-such-model'"),
    (json.dumps({"model_type": "vit"}), "no causal-LM class"),
    (json.dumps({"model_type": "llama", "hidden_size": 100, "num_attention_heads": 7}), "cannot build"),
    (b"\xff\xfe\x00", "UTF-8"),
])
def test_bad_configs_get_one_clear_message(text, needle):
    with pytest.raises(LabError, match=needle) as e:
        read_architecture_json(text, "config.json")
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- families once refused (issue 18)
FAMILY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256, pad_token_id=0)
QLORA = dict(method="qlora", precision="nf4", dtype="bf16", max_length=32)


def family_config(model_type: str, **spec):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **{**FAMILY, **spec})


def both_steps(config, name: str):
    """The QLoRA training step and generation, simulated (on the simulation's CUDA path)."""
    from lab.estimate.simulate import InferenceSettings, simulate, simulate_generation
    from lab.estimate.training import TrainingSettings

    arch = architecture_from_config(config, name)
    inference = InferenceSettings(precision="nf4", dtype="bf16", prompt_tokens=16, new_tokens=4)
    return simulate(arch, TrainingSettings(**QLORA)), simulate_generation(arch, inference)


@pytest.mark.slow
def test_zamba2_truncated_keeps_its_hybrid_layer_and_simulates():
    from lab.estimate.simulate import truncated_config

    kinds = ["linear_attention"] * 6 + ["hybrid", "linear_attention"]
    config = family_config("zamba2", num_hidden_layers=8, layers_block_type=kinds, mamba_d_state=8, mamba_headdim=16,
                           n_mamba_heads=8, attention_head_dim=32, num_mem_blocks=1, adapter_rank=8)
    cut = truncated_config(config, 5)  # `layer_types` is Zamba2's alias of layers_block_type
    assert len(cut.layers_block_type) == 5 and cut.layers_block_type.count("hybrid") == 1
    assert cut.hybrid_layer_ids == [cut.layers_block_type.index("hybrid")]
    training, generation = both_steps(config, "tiny-zamba2")
    assert training.by_category["adapters"] > 0 and training.peak_bytes > training.by_category["weights"]
    assert generation.totals["kv_cache"] > 0


@pytest.mark.slow
def test_deepseek_v2_without_top_k_is_read_as_its_checkpoints_and_simulates():
    from lab.models.architecture import config_from_dict

    spec = dict(model_type="deepseek_v2", **FAMILY, num_hidden_layers=2, n_routed_experts=4, moe_intermediate_size=32,
                q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16)
    assert config_from_dict(spec).num_experts_per_tok == 6  # transformers' default None cannot route
    assert config_from_dict({**spec, "num_experts_per_tok": 2}).num_experts_per_tok == 2  # given: kept
    training, generation = both_steps(config_from_dict({**spec, "num_experts_per_tok": 2}), "tiny-deepseek-v2")
    assert training.peak_bytes > 0 and generation.peak_bytes > 0


def test_selective_scan_stand_in_makes_the_fallbacks_shapes_and_gradients():
    """The stand-in for mamba-ssm's kernel (lab.estimate.scan) returns what transformers' own loop returns, on
    real tensors, and a gradient of each input's shape."""
    from transformers.models.jamba.modeling_jamba import mamba_selective_scan

    from lab.estimate.scan import SelectiveScan

    b, d, n, length = 2, 8, 4, 5
    leaves = [torch.randn(b, length, d, requires_grad=True) for _ in range(3)]
    leaves += [torch.randn(b, length, n, requires_grad=True) for _ in range(2)] + [torch.rand(d, n, requires_grad=True)]
    u, delta, z, B, C = (t.transpose(1, 2) for t in leaves[:5])  # strided, as Jamba passes them
    A, D, bias = -leaves[5], torch.rand(d), torch.rand(d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, ref_state = mamba_selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True,
                                              return_last_state=True)
    out, state = SelectiveScan.apply(u, delta, A, B, C, D, z, bias, True)
    assert (out.shape, out.dtype, state.shape) == (ref.shape, ref.dtype, ref_state.shape)
    out.sum().backward()
    assert all(t.grad is not None and t.grad.shape == t.shape for t in leaves)


@pytest.mark.slow
def test_jamba_simulates_with_the_scan_kernel_and_says_so():
    from lab.estimate.scan import NOTE

    config = family_config("jamba", num_hidden_layers=8, num_experts=4, num_experts_per_tok=2, mamba_d_state=8,
                           mamba_dt_rank=8)
    training, generation = both_steps(config, "tiny-jamba")
    assert NOTE in training.notes and NOTE in generation.notes
    assert training.by_category["adapters"] > 0 and generation.totals["kv_cache"] > 0


def test_wkv_stand_in_makes_the_fallbacks_shapes_and_gradients():
    """The stand-in for RWKV's WKV kernel (lab.estimate.scan.WKV) returns what transformers' CPU loop returns,
    on real tensors, state included, and a gradient of each input's shape."""
    from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

    from lab.estimate.scan import WKV

    b, length, hidden = 2, 5, 8
    decay, first = torch.rand(hidden, requires_grad=True), torch.rand(hidden, requires_grad=True)
    key, value = (torch.randn(b, length, hidden, requires_grad=True) for _ in range(2))
    ref, ref_state = rwkv_linear_attention_cpu(decay, first, key, value, return_state=True)
    out, state = WKV.apply(decay, first, key, value, None, True)
    assert (out.shape, out.dtype) == (ref.shape, ref.dtype)
    assert [s.shape for s in state] == [s.shape for s in ref_state]
    out.sum().backward()
    assert all(t.grad is not None and t.grad.shape == t.shape for t in (decay, first, key, value))


@pytest.mark.slow
def test_rwkv_simulates_with_the_wkv_kernel_and_says_so():
    """rwkv's QLoRA request passed a 300 s limit in bench_architectures (a per-token loop on fake tensors)."""
    from lab.estimate.scan import RWKV_NOTE

    config = family_config("rwkv", num_hidden_layers=4, hidden_size=64, attention_hidden_size=64,
                           intermediate_size=128, context_length=1024)
    training, generation = both_steps(config, "tiny-rwkv")
    assert RWKV_NOTE in training.notes and training.by_category["adapters"] > 0
    assert generation.peak_bytes > 0


def test_an_error_of_the_labs_own_code_is_not_passed_off_as_a_refusal(monkeypatch):
    """A bug of ours inside a simulated step stays a bug (re-raised, marked internal); the model's own code
    failing is a one-line LabError naming the model type, the step and the library file."""
    from transformers import AutoConfig

    from lab.estimate import recipe
    from lab.estimate.origin import origin
    from lab.estimate.simulate import simulate
    from lab.estimate.training import TrainingSettings

    try:
        AutoConfig.for_model("no-such-model-type")
    except ValueError as e:
        theirs = origin(e)
    assert not theirs.ours and theirs.where.startswith("transformers/")

    def broken(model):
        raise ValueError("a bug of ours")

    monkeypatch.setattr(recipe, "decoder_layers", broken)
    arch = architecture_from_config(tiny_config("llama"), "tiny-llama-internal-error")
    with pytest.raises(ValueError, match="a bug of ours") as e:
        simulate(arch, TrainingSettings(**QLORA, r=4))
    assert not isinstance(e.value, LabError)
    assert any("Internal error of QLoRA Lab" in note and "'llama'" in note and "test_architecture.py" in note
               for note in e.value.__notes__)


# --------------------------------------------------------------------------- kept on disk for the next process
@pytest.mark.parametrize("kind", ["llama", "phi3", "gpt2"])
def test_a_kept_architecture_reads_back_equal_to_the_one_built(kind, tmp_path, monkeypatch):
    import lab.models.architecture as A

    monkeypatch.setenv("QLORA_LAB_CACHE", str(tmp_path))
    config = tiny_config(kind)
    built = A._build(config, kind)
    assert A.architecture_from_json(json.loads(json.dumps(A.architecture_to_json(built)))) == built
    key = kind + "\n" + config.to_json_string(use_diff=False)
    A._keep(A._kept_path(key), built)
    kept = A._read_kept(A._kept_path(key))
    assert kept == built and kept.linears[0].paths == built.linears[0].paths
    # JSON keys are strings (id2label's 0 comes back "0"): the config transformers makes of it is the same
    same = [A.config_from_dict(a.config).to_json_string(use_diff=False) for a in (kept, built)]
    assert same[0] == same[1]
    assert [t.shape for t in kept.tensors] == [t.shape for t in built.tensors]
    other = A._kept_path(key.replace(kind, kind + "-other", 1))  # another name (or config): not this one
    assert A._read_kept(other) is None
    A._kept_path(key).write_text('{"name": "truncated"')  # a damaged file is built again, not trusted
    assert A._read_kept(A._kept_path(key)) is None


@pytest.mark.slow
def test_a_second_cli_process_reads_the_kept_architecture_without_transformers_modelling(tmp_path):
    """`python -m lab memory` builds the model on the meta device once; the next process reads what was kept and
    imports none of transformers' modelling code (about 2 of its 4.8 s) nor its config classes (transformers
    indexes every model folder for them: ~0.3-0.7 s), with the same answer. The weights alone are arithmetic: that
    second process imports neither torch nor transformers at all (3.2 s -> 0.2 s on a 2-core machine)."""
    code = ("import io, sys, contextlib; from lab.cli import main; out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out): code = main(['memory', '--model', 'Qwen2.5-7B', '--json'])\n"
            "print(json.dumps({'code': code, 'out': out.getvalue(), "
            "'modelling': 'transformers.modeling_utils' in sys.modules, "
            "'configs': 'transformers.models.auto.configuration_auto' in sys.modules, "
            "'torch': 'torch' in sys.modules, 'transformers': 'transformers' in sys.modules}))")
    env = {**os.environ, "QLORA_LAB_CACHE": str(tmp_path), "QLORA_LAB_PUBLIC": "0"}
    runs = [json.loads(subprocess.run([sys.executable, "-c", "import json\n" + code], cwd=ROOT, env=env, text=True,
                                      capture_output=True, timeout=300, check=True).stdout) for _ in range(2)]
    assert [r["code"] for r in runs] == [0, 0] and runs[0]["out"] == runs[1]["out"]
    assert [r["modelling"] for r in runs] == [True, False]
    # a catalog model is kept by its config.json's text too: the next process needs no config class to find it
    assert [r["configs"] for r in runs] == [True, False]
    assert (runs[1]["torch"], runs[1]["transformers"]) == (False, False)
    assert len(list((tmp_path / "architectures").glob("*.json"))) == 2  # by the config, and by the file's text


def test_a_public_server_keeps_no_architecture_on_disk(tmp_path, monkeypatch):
    import lab.models.architecture as A

    monkeypatch.setenv("QLORA_LAB_CACHE", str(tmp_path))
    monkeypatch.setenv("QLORA_LAB_PUBLIC", "1")
    A._keep(A._kept_path("llama\n{}"), A._build(tiny_config("llama"), "llama"))
    assert not (tmp_path / "architectures").exists()
