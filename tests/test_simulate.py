"""Memory by simulation: fake-tensor steps against the same steps on real tensors, five simulated layers
against every layer, the recipe against the Training page's, and the multi-GPU and inverse answers."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import torch

from lab.errors import Cancelled, LabError
from lab.estimate import compose
from lab.estimate.check import compare, measure_real_inference, measure_real_training
from lab.estimate.gpus import Gpu, gpu_verdict
from lab.estimate.recipe import Recipe, decoder_layers, prepare_for_training
from lab.estimate.simulate import (
    InferenceRecipe,
    InferenceSettings,
    fake_model,
    resolve_recipe,
    simulate,
    simulate_generation,
    simulate_inference,
    simulate_training,
)
from lab.estimate.training import TrainingSettings
from lab.estimate.weights import estimate_weights
from lab.models.architecture import architecture_from_config, config_from_dict
from lab.models.reader import read_architecture
from lab.models.sources import resolve_source
from tests.conftest import build_tiny_model

F32, BF16 = torch.float32, torch.bfloat16
# layers big enough that the decoder, not the head, decides the peak; seven layers: three repeated ones
SHAPE = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, vocab_size=256, hidden_size=128, intermediate_size=512,
             num_hidden_layers=7, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)


def config(model_type: str = "llama", **overrides):
    extra = {"head_dim": 32} if model_type == "gemma2" else {}
    return config_from_dict({"model_type": model_type, **SHAPE, **extra, **overrides}, f"tiny {model_type}")


def recipe(method="lora", precision="bf16", gc=False, optimizer="adamw_torch", attn="sdpa", device="cuda", **kw):
    half = precision != "fp32" and device == "cuda"
    dtype = F32 if precision == "fp32" or device == "cpu" else BF16
    adapter = BF16 if method == "qlora" and device == "cuda" else F32
    return Recipe(method, precision, dtype, BF16 if half else None, adapter, True, gc, optimizer, kw.pop("batch", 2),
                  kw.pop("seq", 128), attn=attn, device=device, **kw)


# --------------------------------------------------------------------------- five layers stand for all of them
@pytest.mark.parametrize(("model_type", "rec"), [
    ("llama", recipe("lora", "bf16")),
    ("llama", recipe("qlora", "nf4-dq", gc=True, optimizer="paged_adamw_8bit", attn="eager")),
    ("qwen2", recipe("qlora", "int8", optimizer="adamw_8bit")),
    ("phi3", recipe("full", "fp32", gc=True, optimizer="adafactor")),
    ("mistral", recipe("lora", "bf16", use_dora=True, optimizer="sgd")),
    ("gemma2", recipe("lora", "bf16", attn="eager")),
    ("llama", recipe("lora", "bf16", loss="logits")),
    ("llama", replace(recipe("lora", "bf16", loss="logits", dropout=0.0), autocast=None)),  # a plain bf16 loop
])
@pytest.mark.slow
def test_composed_peak_equals_simulating_every_layer(model_type, rec):
    cfg = config(model_type)
    scaled, every = simulate_training(cfg, rec), simulate_training(cfg, rec, every_layer=True)
    assert scaled.simulated_layers == compose.SIMULATED_LAYERS < every.simulated_layers == 7
    assert scaled.peak_bytes == every.peak_bytes
    assert scaled.by_category == every.by_category
    assert scaled.totals == every.totals


@pytest.mark.parametrize("precision", ["bf16", "nf4-dq", "int8"])
@pytest.mark.slow
def test_composed_generation_equals_every_layer(precision):
    cfg, rec = config("llama"), InferenceRecipe(precision, BF16, 2, 100, 50)
    assert simulate_inference(cfg, rec).peak_bytes == simulate_inference(cfg, rec, every_layer=True).peak_bytes


# --------------------------------------------------------------------------- simulated vs real on this CPU
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, embedded_dir):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-sim"), embedded_dir, num_hidden_layers=6)


@pytest.mark.parametrize("rec", [
    recipe("lora", "fp32", device="cpu", batch=2, seq=48),
    recipe("lora", "fp32", gc=True, attn="eager", device="cpu", batch=2, seq=48),
    recipe("full", "fp32", device="cpu", batch=2, seq=48),
    recipe("qlora", "nf4", device="cpu", batch=2, seq=48),
    recipe("qlora", "int8", optimizer="sgd", device="cpu", batch=2, seq=48),
    recipe("lora", "fp32", loss="logits", device="cpu", batch=2, seq=48),
    # DoRA dequantizes the 4-bit or 8-bit base weight: peft tells it by its class, which a fake weight lacks
    recipe("qlora", "nf4", use_dora=True, device="cpu", batch=2, seq=48),
    recipe("qlora", "int8", use_dora=True, optimizer="sgd", device="cpu", batch=2, seq=48),
])
@pytest.mark.slow
def test_simulation_matches_the_real_step_within_3_percent(tiny_dir, rec):
    cfg = resolve_source(str(tiny_dir)).load_config()
    result = compare(simulate_training(cfg, rec), measure_real_training(str(tiny_dir), rec))
    assert abs(result["error_pct"]) <= 3.0, result


@pytest.mark.parametrize("precision", ["fp32", "nf4"])
def test_generation_matches_real_generation_within_3_percent(tiny_dir, precision):
    cfg = resolve_source(str(tiny_dir)).load_config()
    rec = InferenceRecipe(precision, F32, 2, 40, 10, device="cpu")
    result = compare(simulate_inference(cfg, rec), measure_real_inference(str(tiny_dir), rec))
    assert abs(result["error_pct"]) <= 3.0, result


@pytest.mark.embedded
def test_embedded_model_step_matches_within_3_percent(embedded_dir):
    """The embedded SmolLM2-135M at its full 30 layers: five simulated, 30 run for real."""
    cfg = resolve_source(str(embedded_dir)).load_config()
    rec = recipe("lora", "fp32", device="cpu", batch=1, seq=32)
    sim, real = simulate_training(cfg, rec), measure_real_training(str(embedded_dir), rec)
    assert sim.full_layers == 30 and sim.simulated_layers == compose.SIMULATED_LAYERS
    assert abs(compare(sim, real)["error_pct"]) <= 3.0


@pytest.mark.embedded
def test_embedded_model_generation_matches_within_3_percent(embedded_dir):
    cfg = resolve_source(str(embedded_dir)).load_config()
    rec = InferenceRecipe("fp32", F32, 1, 64, 16, device="cpu")
    result = compare(simulate_inference(cfg, rec), measure_real_inference(str(embedded_dir), rec))
    assert abs(result["error_pct"]) <= 3.0, result


@pytest.mark.slow
def test_autocast_off_keeps_fp32_copies_of_the_adapted_inputs():
    """A plain loop on a bf16 model (peft's MetaMathQA benchmark: use_amp=false): peft's fp32 adapters cast
    each adapted layer's input to fp32 and keep it for the backward; under autocast they compute in bf16."""
    arch = architecture_from_config(config("llama"), "tiny llama")
    base = TrainingSettings(method="lora", precision="bf16", batch_size=2, max_length=128, gradient_checkpointing=False,
                            optimizer="adamw_torch", r=8, targets=("q_proj", "v_proj"), adapter_dtype="fp32",
                            dropout=0.0, loss="logits")
    on, off = resolve_recipe(arch, base), resolve_recipe(arch, replace(base, autocast=False))
    assert (on.autocast, off.autocast, off.dropout) == (BF16, None, 0.0)
    sim_on, sim_off = simulate(arch, base), simulate(arch, replace(base, autocast=False))
    # at least one fp32 copy (2 B more than bf16 per value) of the input of q_proj and of v_proj in every layer
    extra = 7 * 2 * (2 * 128) * 128 * 2
    assert sim_off.by_category["activations"] - sim_on.by_category["activations"] >= extra
    assert sim_off.peak_bytes > sim_on.peak_bytes
    for bad in (-0.1, 1.0, True, "0.1"):
        with pytest.raises(LabError, match="lora_dropout"):
            resolve_recipe(arch, replace(base, dropout=bad))
    with pytest.raises(LabError, match="autocast"):
        resolve_recipe(arch, replace(base, autocast="off"))


# --------------------------------------------------------------------------- the recipe is the Training page's
@pytest.mark.slow
def test_simulated_weights_are_the_weights_estimate_byte_for_byte():
    arch = read_architecture("SmolLM2-135M")
    for precision in ("nf4", "nf4-dq", "int8", "fp4"):
        settings = TrainingSettings(method="qlora", precision=precision, dtype="bf16", upcast_for_kbit=False)
        sim = simulate(arch, settings, device="cpu")
        assert sim.totals["weights"] == estimate_weights(arch, precision, "bf16").weights_bytes, precision


def test_recipe_prepares_the_model_as_the_runner_does(tiny_dir):
    from transformers import AutoModelForCausalLM

    from lab.models.precision import load_kwargs
    from lab.training.config import TrainConfig
    from lab.training.runner import add_lora

    cfg = TrainConfig(model=str(tiny_dir), precision="nf4", r=8, targets="all-linear")
    ours = prepare_for_training(AutoModelForCausalLM.from_pretrained(tiny_dir, **load_kwargs("nf4", "fp32", "cpu")),
                                recipe("qlora", "nf4", device="cpu", r=8, alpha=32.0, dropout=cfg.dropout))
    theirs = add_lora(AutoModelForCausalLM.from_pretrained(tiny_dir, **load_kwargs("nf4", "fp32", "cpu")), cfg, True,
                      "all-linear")

    def trainable(model):
        return sorted((n, tuple(p.shape), p.dtype) for n, p in model.named_parameters() if p.requires_grad)

    assert trainable(ours) == trainable(theirs)
    assert {n: p.dtype for n, p in ours.named_parameters()} == {n: p.dtype for n, p in theirs.named_parameters()}


def test_fake_model_has_the_truncated_depth_and_tied_weights():
    model, _ = fake_model(config("llama", tie_word_embeddings=True), recipe(), 5)
    assert len(decoder_layers(model)) == 5
    base = model.get_base_model()
    assert base.lm_head.weight is base.model.embed_tokens.weight


# --------------------------------------------------------------------------- what the step shows
@pytest.mark.slow
def test_timeline_marks_the_peak_and_paged_state_is_set_apart():
    arch = read_architecture("SmolLM2-135M")
    sim = simulate(arch, TrainingSettings(optimizer="paged_adamw_8bit", max_length=256, r=128))  # B: 1536 × 128 ≥ 1e5
    assert max(p["bytes"] for p in sim.timeline) == sim.peak_bytes
    assert {p["phase"] for p in sim.timeline} >= {"forward", "backward", "optimizer step"}
    assert sum(sim.by_category.values()) == sim.peak_bytes
    unpaged = simulate(arch, TrainingSettings(optimizer="adamw_8bit", max_length=256, r=128))
    assert sim.excluded["paged"] > 0 and not unpaged.excluded.get("paged")
    assert unpaged.totals["optimizer"] == sim.totals["optimizer"] + sim.excluded["paged"]


@pytest.mark.slow
def test_eager_attention_grows_with_the_square_of_the_sequence():
    arch = read_architecture("SmolLM2-135M")
    base = TrainingSettings(gradient_checkpointing=False, attn="eager", max_length=512)
    grow = [simulate(arch, replace(base, max_length=n)).peak_bytes for n in (512, 1024, 2048)]
    assert grow[2] - grow[1] > 2.5 * (grow[1] - grow[0])  # a linear term alone would give 2×
    sdpa = [simulate(arch, replace(base, attn="sdpa", max_length=n)).peak_bytes for n in (512, 1024, 2048)]
    assert sdpa[2] < grow[2]


def test_layer_table_names_the_modules_of_one_layer():
    from lab.estimate.explain import module_rows

    sim = simulate(read_architecture("SmolLM2-135M"), TrainingSettings(gradient_checkpointing=False, max_length=128))
    names = {r["module"] for r in module_rows(sim)}
    assert {"self_attn.q_proj", "mlp.down_proj", "input_layernorm"} <= names
    assert any(r["kept_for_backward_bytes"] > 0 for r in module_rows(sim))


# --------------------------------------------------------------------------- bad settings
@pytest.mark.parametrize(("overrides", "needle"), [
    ({"max_length": 100_000}, "max_position_embeddings"),
    ({"r": 100_000}, "width"),
    ({"batch_size": 0}, "batch size"),
    ({"precision": "bf16"}, "'bf16'"),
    ({"method": "lora", "precision": "nf4"}, "'nf4'"),
    ({"attn": "flash"}, "'flash'"),
    ({"adapter_dtype": "fp8"}, "'fp8'"),
])
def test_bad_settings_name_the_bad_value(overrides, needle):
    arch = read_architecture("SmolLM2-135M")
    with pytest.raises(LabError, match=needle):
        resolve_recipe(arch, TrainingSettings(**overrides))


def test_sdpa_on_a_model_without_it_is_refused_and_default_falls_back():
    arch = read_architecture("Gemma-2-2B")
    with pytest.raises(LabError, match="eager"):
        resolve_recipe(arch, TrainingSettings(attn="sdpa"))
    assert resolve_recipe(arch, TrainingSettings()).attn == "eager"


@pytest.mark.slow
def test_absurd_configs_answer_or_refuse():
    with pytest.raises(LabError, match="100,000"):
        architecture_from_config(config(num_hidden_layers=100_000), "deep")
    wide = architecture_from_config(config(hidden_size=10**6, intermediate_size=4 * 10**6, num_hidden_layers=2), "wide")
    sim = simulate(wide, TrainingSettings(max_length=16))
    assert sim.peak_bytes > 10**12  # an estimate (terabytes), not a hang


def test_generation_settings_checked_against_the_context():
    arch = read_architecture("TinyLlama-1.1B")
    with pytest.raises(LabError, match="2,048"):
        simulate_generation(arch, InferenceSettings(prompt_tokens=2000, new_tokens=100))


def test_a_model_that_cannot_checkpoint_is_simulated_without_it_and_says_so():
    """GPT-1 (and XLNet, XLM, JetMoE, ...) has no gradient checkpointing in transformers: QLoRA with the lab's
    defaults (checkpointing on) was refused with a traceback's last line and "try --loss logits or --attn eager".
    The step is simulated without checkpointing, as with it off, and a note says why."""
    from transformers import AutoConfig

    from lab.estimate.simulate import NO_CHECKPOINTING
    from lab.models.architecture import architecture_from_config

    arch = architecture_from_config(AutoConfig.for_model("openai-gpt", n_layer=2, n_embd=64, n_head=4, vocab_size=256,
                                                         n_positions=128), "openai-gpt")
    on = simulate(arch, TrainingSettings(method="lora", max_length=32, gradient_checkpointing=True))
    off = simulate(arch, TrainingSettings(method="lora", max_length=32, gradient_checkpointing=False))
    assert on.peak_bytes == off.peak_bytes > 0 and on.work == off.work
    assert NO_CHECKPOINTING.format(name=arch.name, cls=arch.model_class) in on.notes and not off.notes


def test_a_context_of_minus_one_is_no_limit():
    """XLNet's config writes max_position_embeddings=-1 (relative positions, no fixed context): 512 tokens were
    refused as "beyond xlnet's context of -1. Use at most -1 tokens"."""
    from dataclasses import replace

    from lab.estimate.simulate import _check_context

    _check_context(replace(read_architecture("TinyLlama-1.1B"), max_position_embeddings=-1), 512, "The sequence")


# --------------------------------------------------------------------------- several GPUs, and the inverse
def test_multi_gpu_peaks():
    from lab.estimate.parallel import per_gpu_peak, smallest_fitting

    sim = simulate(read_architecture("SmolLM2-360M"), TrainingSettings(method="full", optimizer="adamw_torch",
                                                                       precision="bf16", max_length=256))
    fsdp = [per_gpu_peak(sim, n, "fsdp").per_gpu_peak_bytes for n in (1, 2, 4, 8)]
    assert fsdp[0] == sim.peak_bytes and fsdp == sorted(fsdp, reverse=True)
    ddp = per_gpu_peak(sim, 4, "ddp")
    assert ddp.per_gpu_peak_bytes == sim.peak_bytes + sim.totals["gradients"]
    small = Gpu("small", int(fsdp[2] * 1.3) + 2 * 10**9)
    n = smallest_fitting(sim, small, "fsdp")
    assert n is not None and gpu_verdict(per_gpu_peak(sim, n, "fsdp").per_gpu_peak_bytes, small).fits
    assert n == 1 or not gpu_verdict(per_gpu_peak(sim, n - 1, "fsdp").per_gpu_peak_bytes, small).fits
    assert smallest_fitting(sim, Gpu("tiny", 10**9), "ddp") is None


@pytest.mark.parametrize("knob", ["max_length"])  # the quadratic one; the page test solves the batch size
@pytest.mark.slow
def test_inverse_answer_fits_and_one_more_does_not(knob):
    from lab.estimate.inverse import max_fitting

    arch = read_architecture("SmolLM2-135M")
    settings = TrainingSettings(max_length=512, gradient_checkpointing=False)
    gpu = Gpu("a 5 GB card", 5 * 10**9)
    answer = max_fitting(arch, settings, gpu, knob)
    assert answer.value >= 1 and answer.checked
    assert gpu_verdict(simulate(arch, replace(settings, **{knob: answer.value})).peak_bytes, gpu).fits
    over = answer.value + max(1, answer.value // 50)
    assert not gpu_verdict(simulate(arch, replace(settings, **{knob: over})).peak_bytes, gpu).fits


@pytest.mark.slow
def test_inverse_past_every_sample_still_finds_the_largest():
    """Every sample fits (the answer lies beyond the largest, 8192 tokens) and the tiny model's peak bends the other
    way (it grows more slowly with the sequence as it grows): the search gets past the answer and closes in from
    both ends. Stepping 2% at a time (Qwen2.5-7B on an A10G did, nine simulations and no value known not to fit)
    stopped here at 10,598 tokens, 12% short; the lines through simulated points get within 5%."""
    from lab.estimate.gpus import Gpu
    from lab.estimate.inverse import MAX_CHECKS, SAMPLES, max_fitting
    from lab.models.architecture import architecture_from_config

    arch = architecture_from_config(config("llama", max_position_embeddings=65_536), "tiny llama")
    settings = TrainingSettings(method="lora", precision="bf16", max_length=512, gradient_checkpointing=True)
    card = Gpu("RAM that holds 12,000 tokens", simulate(arch, replace(settings, max_length=12_000)).peak_bytes,
               cuda=False)
    answer = max_fitting(arch, settings, card, "max_length")
    assert answer.checked and len(answer.points) <= len(SAMPLES["max_length"]) + MAX_CHECKS
    assert gpu_verdict(simulate(arch, replace(settings, max_length=answer.value)).peak_bytes, card).fits
    assert any(p > answer.budget_bytes for _, p in answer.points)  # a value known not to fit: the answer is bracketed
    assert 12_000 * 0.95 <= answer.value <= 12_000
    # the curve bends hard (its slope falls off past 8,192 tokens): the checks run out 6% apart, and the answer says so
    assert answer.above is not None and answer.value < answer.above
    assert answer.settled == (answer.above <= answer.value * 1.02 + 1)
    assert answer.settled or answer.gap_note().startswith(f"at least {answer.value:,}: {answer.above:,} does not fit")


@pytest.mark.slow
def test_an_inverse_search_out_of_checks_says_what_it_left_open(monkeypatch):
    """With no checks left after the samples (a curve that bends hard can use them all up), the answer is the largest
    sample that fits, and it says it is not settled and which value did not fit, instead of passing for the largest."""
    from lab.estimate import inverse
    from lab.estimate.gpus import Gpu
    from lab.models.architecture import architecture_from_config

    arch = architecture_from_config(config("llama", max_position_embeddings=65_536), "tiny llama")
    settings = TrainingSettings(method="lora", precision="bf16", max_length=512, gradient_checkpointing=True)
    card = Gpu("RAM that holds 3,000 tokens", simulate(arch, replace(settings, max_length=3_000)).peak_bytes,
               cuda=False)
    monkeypatch.setattr(inverse, "MAX_CHECKS", 0)
    cut_short = inverse.max_fitting(arch, settings, card, "max_length")
    assert inverse.SAMPLES["max_length"] == (2048, 4096)  # the samples: 2,048 fits, 4,096 does not
    assert (cut_short.value, cut_short.above, cut_short.settled) == (2048, 4096, False)
    assert cut_short.gap_note().startswith("at least 2,048: 4,096 does not fit")
    assert cut_short.to_json()["note"] == cut_short.gap_note()  # `lab memory --json` carries it in words
    monkeypatch.undo()
    answer = inverse.max_fitting(arch, settings, card, "max_length")
    assert answer.settled and 2048 < answer.value <= 3_000 < answer.above and answer.gap_note() == ""


@pytest.mark.parametrize("knob", ["batch_size", "max_length", "r"])
@pytest.mark.slow
def test_inverse_on_a_card_too_small_for_anything_is_zero_at_once(knob):
    """Not even the smallest value fits: 0, after the smallest sample and 1 (Qwen3-30B-A3B's bf16 experts overfill
    an 80 GB card: three zeros took 17 simulations, now 5)."""
    from lab.estimate.gpus import Gpu
    from lab.estimate.inverse import SAMPLES, max_fitting
    from lab.models.architecture import architecture_from_config

    arch = architecture_from_config(config("llama"), "tiny llama")
    settings = TrainingSettings(method="lora", precision="bf16", max_length=64)
    answer = max_fitting(arch, settings, Gpu("1 MB", 10**6, cuda=False), knob)
    assert answer.value == 0 and answer.checked
    smallest = min(*SAMPLES[knob], answer.upper)  # a sample past the model's context is taken at the context
    if knob == "r":
        smallest = settings.r  # the current rank (16, simulated already) stands for the smallest sample (8)
    assert [x for x, _ in answer.points] == ([1] if knob == "batch_size" else [1, smallest])
    assert all(p > 10**6 for _, p in answer.points)


@pytest.mark.slow
@pytest.mark.parametrize(("model_type", "method", "precision"), [
    ("llama", "qlora", "nf4"),
    ("qwen2", "qlora", "nf4"),  # q/k/v biases, which bitsandbytes recasts once
    ("llama", "lora", "bf16"),  # frees in a row in another order
])
def test_a_reused_model_gives_what_a_fresh_one_gives(model_type, method, precision):
    """The fake model is kept between simulations that differ in batch, sequence or optimizer only: a step on it
    is the step on a fresh one, tensor for tensor, so that the two replay into each other (lab.estimate.replay) —
    a search in a simulation process (lab.estimate.pool) starts on a fresh model where this process reused one.
    Before, a Linear4bit's first forward recast its fp32 bias (one more tensor, weights in fp32), and frees in a row
    came in another order."""
    from lab.estimate import simulate as sim_module

    cfg = config(model_type)
    first = simulate_training(cfg, recipe(method, precision, gc=True, batch=1, seq=64))
    again = simulate_training(cfg, recipe(method, precision, gc=True, batch=3, seq=96, optimizer="adamw_8bit"))
    sim_module._MODELS.clear()
    sim_module._CACHE.clear()
    fresh = simulate_training(cfg, recipe(method, precision, gc=True, batch=3, seq=96, optimizer="adamw_8bit"))
    assert again.peak_bytes == fresh.peak_bytes and again.by_category == fresh.by_category
    assert again.totals == fresh.totals
    assert again.trace.shape == fresh.trace.shape and again.trace.raw == fresh.trace.raw
    assert first.peak_bytes < again.peak_bytes


class SetAfter(threading.Event):
    """An event that reads as set from its n-th look on: a cancel that lands mid-step, at the same point every run."""

    def __init__(self, n: int):
        super().__init__()
        self.looks, self.n = 0, n

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks > self.n


def test_a_cancelled_simulation_stops_mid_step_caches_nothing_and_leaves_the_model_clean():
    """A page whose settings changed stops its old step where its next layer or phase begins (cancel_on): nothing
    is cached, the half-stepped fake model is not reused, and the same settings simulated afterwards give what a
    fresh process gives."""
    from lab.estimate import simulate as sim_module
    from lab.estimate.tracker import cancel_on

    cfg, rec = config("llama"), recipe("qlora", "nf4", gc=True, batch=2, seq=64)
    sim_module._MODELS.clear()
    sim_module._CACHE.clear()
    fresh = simulate_training(cfg, rec)
    sim_module._CACHE.clear()  # the model stays: the cancelled step runs on the kept one, as a page's would
    # looked at once under the lock, then where each layer and phase begins: the 11th look is the backward of the
    # last simulated layer (of 17 in this step)
    cancel = SetAfter(10)
    with cancel_on(cancel), pytest.raises(Cancelled, match="cancelled"):
        simulate_training(cfg, rec)
    assert cancel.looks == 11  # stopped where the event was first seen set, not at the end of the step
    assert not sim_module._CACHE and not sim_module._MODELS
    again = simulate_training(cfg, rec)
    assert (again.peak_bytes, again.by_category, again.timeline) == (fresh.peak_bytes, fresh.by_category,
                                                                      fresh.timeline)


def test_a_page_simulation_cancelled_midway_ends_cancelled_not_failed():
    """simulate_page lets Cancelled through (lab.tasks ends the task "cancelled", not with an error on the page);
    a simulation cancelled while it waited for the lock never begins. Neither is cached."""
    from lab.estimate.simulate import is_cached, simulate_page
    from lab.estimate.tracker import cancel_on

    arch = architecture_from_config(config("llama"), "tiny llama")
    settings = TrainingSettings(method="lora", precision="bf16", max_length=48)
    with pytest.raises(Cancelled):
        simulate_page(arch, settings, InferenceSettings("bf16", "auto", 1, 16, 4), cancel=SetAfter(4))
    cancel = threading.Event()
    cancel.set()
    with cancel_on(cancel), pytest.raises(Cancelled):
        simulate(arch, replace(settings, max_length=40))
    assert not is_cached(arch, settings) and not is_cached(arch, replace(settings, max_length=40))


def test_library_paths_are_swapped_for_the_simulating_thread_only():
    """A generation in another server thread keeps transformers' own mask decisions while a simulation runs."""
    import threading

    import transformers.masking_utils as mu

    from lab.estimate.patch import for_this_thread

    packed = torch.tensor([[0, 1, 2, 0, 1]])
    seen = []
    with for_this_thread(mu, "find_packed_sequence_indices", lambda position_ids: None):
        worker = threading.Thread(target=lambda: seen.append(mu.find_packed_sequence_indices(packed)))
        worker.start()
        worker.join()
        assert mu.find_packed_sequence_indices(packed) is None
    assert seen[0].tolist() == [[0, 0, 0, 1, 1]]
    assert mu.find_packed_sequence_indices(packed).tolist() == [[0, 0, 0, 1, 1]]  # restored
