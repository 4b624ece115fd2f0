"""One session's model building must never change another session's dtypes (issue 20, bug 0).

transformers 5 builds every model under `local_torch_dtype`, which sets torch's *process-wide*
default dtype. On a shared server the calculator builds bf16 models on the meta device while other
sessions load fp32 models and generate in other threads: loads came back with a mix of fp32 and
bf16 parameters and generation failed with "expected m1 and m2 to have the same dtype". These tests
run that mix in threads and check what each side gets.
"""

from __future__ import annotations

import threading

import pytest
import torch

from lab.estimate.simulate import meta_model
from tests.fixtures_architecture import TINY_CONFIGS, tiny_config


def _hammer(stop: threading.Event, errors: list, done: list) -> None:
    """What calculator changes do, over and over: read an architecture (an fp32 build), bare bf16
    builds, and a simulated bf16 QLoRA step (a bf16 build, quantized, prepared, run on fake tensors).
    Each round's config differs, so no cache answers it."""
    from lab.estimate.simulate import simulate
    from lab.estimate.training import TrainingSettings
    from lab.models.architecture import architecture_from_config

    try:
        settings = TrainingSettings(method="qlora", precision="nf4", dtype="bf16", batch_size=1, max_length=32)
        while not stop.is_set():
            config = tiny_config("llama")
            config.intermediate_size = 128 + 8 * len(done)
            arch = architecture_from_config(config, f"tiny {len(done)}")
            for _ in range(10):
                meta_model(config, torch.bfloat16, "eager")
            done.append(simulate(arch, settings).peak_bytes)
    except Exception as e:  # surfaced by the test, not swallowed
        errors.append(e)


@pytest.mark.slow
def test_loads_and_generation_beside_bf16_builds_keep_their_dtypes(tiny_model_dir):
    from lab.models.loading import load_model

    loaded = load_model(str(tiny_model_dir), "fp32", device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    ids = tokenizer("The cat sat on", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=6, do_sample=False)

    stop, errors, wrong, done = threading.Event(), [], [], []
    builder = threading.Thread(target=_hammer, args=(stop, errors, done), daemon=True)
    builder.start()
    try:
        for _ in range(8):
            fresh = load_model(str(tiny_model_dir), "fp32", device="cpu").model
            dtypes = {p.dtype for p in fresh.parameters()} | {b.dtype for b in fresh.buffers() if b.is_floating_point()}
            if dtypes != {torch.float32}:
                wrong.append(f"loaded with {sorted(map(str, dtypes))}")
            if torch.ones(3).dtype != torch.float32:
                wrong.append(f"torch.ones(3) is {torch.ones(3).dtype} in the loading thread")
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=6, do_sample=False)
            if not torch.equal(out, expected):
                wrong.append("generation changed")
    finally:
        stop.set()
        builder.join(60)
    assert not errors, errors
    assert done, "no simulation ran beside the loads"
    assert not wrong, f"{len(wrong)} wrong results, e.g. {wrong[:3]}"
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.slow
def test_building_never_touches_the_process_default():
    """A thread that watches the default dtype while another builds bf16 models never sees it move."""
    stop, errors, seen, done = threading.Event(), [], set(), []
    builder = threading.Thread(target=_hammer, args=(stop, errors, done), daemon=True)
    builder.start()
    try:
        while len(done) < 3 and builder.is_alive():
            seen.add(torch.get_default_dtype())
    finally:
        stop.set()
        builder.join(60)
    assert not errors, errors
    assert seen == {torch.float32}


@pytest.mark.parametrize("kind", sorted(TINY_CONFIGS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_built_dtypes_match_transformers_own_default_dtype_switch(kind, dtype):
    """The thread-local build gives every parameter and buffer the dtype transformers' own
    process-wide switch gives it (keep-in-fp32 buffers such as rotary frequencies included)."""
    from transformers import AutoModelForCausalLM, modeling_utils

    from lab.models import construct

    def dtypes(model):
        return {n: t.dtype for n, t in [*model.named_parameters(), *model.named_buffers()]}

    ours = dtypes(meta_model(tiny_config(kind), dtype, "eager"))
    patched = modeling_utils.local_torch_dtype
    modeling_utils.local_torch_dtype = construct.ORIGINAL_LOCAL_DTYPE
    try:
        with torch.device("meta"):
            built = AutoModelForCausalLM.from_config(tiny_config(kind), dtype=dtype, attn_implementation="eager")
        theirs = dtypes(built)
    finally:
        modeling_utils.local_torch_dtype = patched
    assert ours == theirs
    assert torch.get_default_dtype() == torch.float32
