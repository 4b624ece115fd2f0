"""Adapters with a real effect for the playground tests: LoRA B is initialised non-zero, so an
adapter's greedy output differs from the base's (a zero-B adapter would hide a base column that
secretly runs the adapter)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def make_adapter(base_dir: Path, folder: Path, seed: int, dora: bool = False, run: dict | None = None,
                 std: float = 0.5, r: int = 4, alpha: float = 16,
                 targets: tuple[str, ...] = ("q_proj", "v_proj", "o_proj", "down_proj")) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), use_dora=dora)
    # peft draws lora_A from torch's global generator: seed it too, or the adapter (and whether its greedy text
    # differs from the base's) changes from run to run. Unseeded, test_embedded_end_to_end failed 2 runs in 10.
    torch.manual_seed(seed)
    model = get_peft_model(base, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif "lora_magnitude_vector" in name:  # DoRA: rescale the columns too, or it stays near the base
                p.mul_(torch.rand(p.shape, generator=g) * 4)
    model.save_pretrained(folder)
    if run is not None:
        (folder / "lab_run.json").write_text(json.dumps(run))
    return folder


@pytest.fixture(scope="session")
def tiny_adapters(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "alpha": make_adapter(tiny_model_dir, root / "alpha", seed=1),
        "beta": make_adapter(tiny_model_dir, root / "beta", seed=2),
        "dora": make_adapter(tiny_model_dir, root / "dora", seed=3, dora=True, std=2.0),
    }


@pytest.fixture(scope="session")
def other_base_adapter(tmp_path_factory, embedded_dir) -> Path:
    """An adapter for a differently sized model (hidden 32): it must not fit the tiny base."""
    from tests.conftest import build_tiny_model

    other = build_tiny_model(tmp_path_factory.mktemp("other-base"), embedded_dir, hidden_size=32, intermediate_size=64)
    return make_adapter(other, tmp_path_factory.mktemp("other-adapter") / "other", seed=4)


def row_lora_logits(loaded, bank, name: str) -> dict[str, torch.Tensor]:
    """One row-wise forward (lab.generate.mixed_lora) of a base row and an adapter row on the shared model, with what
    to hold it against: 'base' (plain model), 'adapted' (peft's own forward, adapter on), 'mixed' (the row-wise
    batch), 'other' (another thread's forward inside the block) and 'after' (the model after the block)."""
    import threading

    from lab.generate.mixed_lora import row_lora, row_lora_supported

    ids = torch.tensor([[1, 5, 9, 200, 31, 7], [1, 42, 17, 3, 99, 8]])
    with torch.inference_mode():
        base = loaded.model(input_ids=ids).logits  # adapter layers are off between generations
        with bank.adapters_enabled() as peft:
            peft.set_adapter(name)
            adapted = peft(input_ids=ids).logits
        assert row_lora_supported(bank.peft_model, [name])
        other: list[torch.Tensor] = []
        with row_lora(bank.peft_model, [None, name]):
            mixed = loaded.model(input_ids=ids).logits
            t = threading.Thread(target=lambda: other.append(loaded.model(input_ids=ids).logits))
            t.start()
            t.join()
        after = loaded.model(input_ids=ids).logits
    return {"base": base, "adapted": adapted, "mixed": mixed, "other": other[0], "after": after}
