"""Swap a library function for the simulating thread only.

The simulation takes code paths the libraries would take on a GPU (bitsandbytes, TRL) or with real
tensors (transformers' mask decisions) by replacing a few module-level functions while it runs. The
server may be generating or measuring in other threads meanwhile: they keep the original functions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def for_this_thread(module, name: str, replacement: Callable) -> Iterator[None]:
    """`module.name` is `replacement` for the calling thread while the block runs, the original for any other."""
    original = getattr(module, name)
    owner = threading.get_ident()

    def dispatch(*args, **kwargs):
        return (replacement if threading.get_ident() == owner else original)(*args, **kwargs)

    setattr(module, name, dispatch)
    try:
        yield
    finally:
        setattr(module, name, original)
