"""Tiny random configs of several architectures (built in memory, no files), for the
architecture / memory / LoRA tests: a Llama, a fused-qkv Phi-3, a biased Qwen2, a Gemma-2,
GPT-2's Conv1D and Falcon's Linear subclass."""

from __future__ import annotations

from transformers import AutoConfig

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, vocab_size=512)

TINY_CONFIGS = {
    "llama": dict(model_type="llama", tie_word_embeddings=True),
    "llama-untied-bias": dict(model_type="llama", tie_word_embeddings=False, attention_bias=True, mlp_bias=True),
    "phi3": dict(model_type="phi3", tie_word_embeddings=False, pad_token_id=0),
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=True),
    "gemma2": dict(model_type="gemma2", tie_word_embeddings=True, head_dim=16, pad_token_id=0),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=256),  # Conv1D layers
    # FalconLinear subclasses nn.Linear: peft adapts it, transformers' bnb quantizer (type(m) is nn.Linear) does not
    "falcon": dict(model_type="falcon", tie_word_embeddings=True),
}


def tiny_config(kind: str):
    spec = dict(TINY_CONFIGS[kind])
    model_type = spec.pop("model_type")
    return AutoConfig.for_model(model_type, **{**TINY, **spec})
