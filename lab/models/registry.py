"""One shared, thread-safe home for loaded models.

The app keeps a single ModelRegistry (through `st.cache_resource`) so every page and worker
thread reuses the same loaded model instead of loading a second copy, and so memory can be
handed back on request.
"""

from __future__ import annotations

import threading

from lab.models.loading import LoadedModel, free_memory, load_model
from lab.vocab import COMPUTE


class ModelRegistry:
    def __init__(self) -> None:
        self._models: dict[tuple[str, str, str], LoadedModel] = {}
        self._lock = threading.RLock()

    @staticmethod
    def key(spec: str, precision: str, dtype: str = COMPUTE) -> tuple[str, str, str]:
        return (spec, precision, dtype)

    def get(self, spec: str, precision: str = "fp32", dtype: str = COMPUTE) -> LoadedModel:
        """Return the loaded model, loading it if needed (the lock makes concurrent callers wait)."""
        key = self.key(spec, precision, dtype)
        with self._lock:
            if key not in self._models:
                self._models[key] = load_model(spec, precision, dtype)
            return self._models[key]

    def loaded(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return list(self._models)

    def release(self, spec: str | None = None, precision: str | None = None) -> int:
        """Drop matching models (all when no filter) and free their memory. Returns how many."""
        with self._lock:
            doomed = [k for k in self._models if (spec is None or k[0] == spec) and (precision is None or k[1] == precision)]
            for k in doomed:
                del self._models[k]
        free_memory()
        return len(doomed)
