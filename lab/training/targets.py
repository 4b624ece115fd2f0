"""Which modules LoRA can target in a model, read from its architecture without loading weights."""

from __future__ import annotations

from functools import lru_cache

import torch

from lab.sources import resolve_source


@lru_cache(maxsize=16)
def linear_module_names(spec: str) -> list[str]:
    """Distinct leaf names of the decoder's Linear layers (e.g. q_proj, ..., down_proj), built on the
    meta device from the config: instant, no weights read. lm_head is left out (peft's all-linear
    leaves it out too)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = resolve_source(spec).load_config()
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    names = {name.split(".")[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    names.discard("lm_head")
    order = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))
