"""Inference memory: the KV cache a context of N tokens holds."""

from __future__ import annotations

from lab.models.architecture import Architecture
from lab.models.precision import resolve_dtype


def kv_cache_bytes(arch: Architecture, context: int, batch_size: int = 1, dtype: str = "auto") -> int:
    """2 (K and V) × layers × kv_heads × head_dim × tokens × bytes."""
    eb = resolve_dtype(dtype, config_dtype=arch.config_dtype).bytes
    return 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * context * batch_size * eb
