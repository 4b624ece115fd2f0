"""One shared, reference-counted home for loaded models.

A server keeps one ModelRegistry (inside `lab.sharing.SharedModels`, kept by the app with
`st.cache_resource`): every page, session and worker thread gets the same loaded copy of a model
per (model, precision, dtype), never a second one.

People *lease* models. `registry.acquire(spec, precision, owner=session)` loads the model if needed
and returns a ModelLease (a context manager); a model with a lease is never freed under its holder:
`free_unused()` frees only what nobody leases, so one person's "free" cannot pull a model out
from under another's generation. `get()` loads without leasing (preloading a model for the room):
such a model stays loaded until someone frees unused models.

Loads run outside the registry's lock, so reading the status (the sidebar, the instructor's page)
never waits behind a minute-long load; a second caller for the model being loaded waits for that
load instead of starting its own.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field

from lab.models.loading import LoadedModel, free_memory, load_model
from lab.models.measure import measure_model
from lab.vocab import COMPUTE

Key = tuple[str, str, str]  # (spec, precision, dtype)


@dataclass(frozen=True)
class ModelStatus:
    """A read-only picture of one loaded model, for the sidebar and the instructor's page."""

    spec: str
    precision: str
    dtype: str
    model: str  # display name ('' while loading)
    device: str
    state: str  # loading | ready
    bytes: int | None  # true bytes of the weights (lab.models.measure), counted once after the load
    leases: int  # open leases (one session may hold several: a page's hold plus running work)
    holders: tuple[str, ...]  # owners holding a lease (session ids, 'cli', ...), each once
    loaded_seconds: float | None  # how long ago it finished loading
    idle_seconds: float  # since its last lease was taken or given back

    @property
    def in_use(self) -> bool:
        return self.leases > 0 or self.state == "loading"

    def to_json(self) -> dict:
        return {**asdict(self), "in_use": self.in_use}


@dataclass(eq=False)  # a lease is itself: two leases of one owner are two holds
class ModelLease:
    """A hold on a loaded model. `with registry.acquire(...) as loaded:` or `lease.release()`."""

    registry: ModelRegistry
    key: Key
    owner: str
    purpose: str
    loaded: LoadedModel = field(repr=False)
    since: float = field(default_factory=time.time)
    released: bool = False

    def release(self) -> None:
        """Give the model back (idempotent). The model stays loaded; nobody holding it makes it freeable."""
        self.registry._give_back(self)

    def __enter__(self) -> LoadedModel:
        return self.loaded

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass(eq=False)
class _Entry:
    key: Key
    ready: threading.Event = field(default_factory=threading.Event)
    loaded: LoadedModel | None = None
    error: BaseException | None = None
    leases: list[ModelLease] = field(default_factory=list)
    bytes: int | None = None
    loaded_at: float | None = None
    last_used: float = field(default_factory=time.time)


class ModelRegistry:
    def __init__(self, loader=load_model) -> None:
        self._entries: dict[Key, _Entry] = {}
        self._lock = threading.RLock()
        self._loader = loader  # (spec, precision, dtype) -> LoadedModel
        self.load_count = 0  # loads ever started: one per model however many sessions ask at once

    @staticmethod
    def key(spec: str, precision: str, dtype: str = COMPUTE) -> Key:
        return (spec.strip(), precision, dtype)

    # ------------------------------------------------------------------ leasing
    def acquire(self, spec: str, precision: str = "fp32", dtype: str = COMPUTE, owner: str = "local",
                purpose: str = "") -> ModelLease:
        """Lease the model, loading it first if nobody has. Concurrent callers share one load."""
        while True:
            self._ready_entry(self.key(spec, precision, dtype))
            lease = self.try_acquire(spec, precision, dtype, owner, purpose)
            if lease is not None:
                return lease  # (None: freed between its load and this lease, so load it again)

    def try_acquire(self, spec: str, precision: str = "fp32", dtype: str = COMPUTE, owner: str = "local",
                    purpose: str = "") -> ModelLease | None:
        """Lease the model if it is loaded right now; None otherwise (never loads)."""
        key = self.key(spec, precision, dtype)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.loaded is None:
                return None
            lease = ModelLease(self, key, owner, purpose, entry.loaded)
            entry.leases.append(lease)
            entry.last_used = time.time()
            return lease

    def get(self, spec: str, precision: str = "fp32", dtype: str = COMPUTE) -> LoadedModel:
        """Load (or find) the model without leasing it: for preloading. Anything that *uses* the
        model must hold a lease (acquire), or a "free unused models" may drop it meanwhile."""
        return self._ready_entry(self.key(spec, precision, dtype)).loaded

    def _ready_entry(self, key: Key) -> _Entry:
        with self._lock:
            entry = self._entries.get(key)
            mine = entry is None
            if mine:
                entry = self._entries[key] = _Entry(key)
        if mine:
            self._load(entry)
        entry.ready.wait()
        if entry.loaded is not None:
            return entry
        raise entry.error  # the load failed: every waiter hears why (the entry is gone, so a retry reloads)

    def _load(self, entry: _Entry) -> None:
        with self._lock:
            self.load_count += 1
        try:
            loaded = self._loader(*entry.key)
            entry.bytes = _true_bytes(loaded)
            entry.loaded, entry.loaded_at = loaded, time.time()
        except BaseException as e:  # waiters see the same error; the entry goes
            entry.error = e
            with self._lock:
                if self._entries.get(entry.key) is entry:
                    del self._entries[entry.key]
        finally:
            entry.ready.set()

    def _give_back(self, lease: ModelLease) -> None:
        with self._lock:
            if lease.released:
                return
            lease.released = True
            entry = self._entries.get(lease.key)
            if entry is not None and lease in entry.leases:
                entry.leases.remove(lease)
                entry.last_used = time.time()

    def release_owner(self, owner: str) -> int:
        """Give back every lease `owner` holds (a session that ended). Returns how many."""
        with self._lock:
            mine = [lease for e in self._entries.values() for lease in e.leases if lease.owner == owner]
        for lease in mine:
            lease.release()
        return len(mine)

    # ------------------------------------------------------------------ freeing
    def free_unused(self, spec: str | None = None, precision: str | None = None, dtype: str | None = None) -> list[Key]:
        """Drop the matching models nobody holds (all unused ones when no filter) and hand their
        memory back. Models someone leases, or that are loading, stay. Returns the keys freed."""
        with self._lock:
            doomed = [k for k, e in self._entries.items()
                      if e.loaded is not None and not e.leases and _matches(k, spec, precision, dtype)]
            for k in doomed:
                del self._entries[k]
        if doomed:
            free_memory()
        return doomed

    def evict_for(self, needed_bytes: int, available: int) -> list[Key]:
        """Free unused models, least recently used first, until `needed_bytes` fits in `available`
        plus what was freed. Frees nothing when even all of them would not make room."""
        with self._lock:
            unused = sorted((e for e in self._entries.values() if e.loaded is not None and not e.leases),
                            key=lambda e: e.last_used)
            if needed_bytes <= available or available + sum(e.bytes or 0 for e in unused) < needed_bytes:
                return []
            chosen = []
            for e in unused:
                chosen.append(e.key)
                available += e.bytes or 0
                if available >= needed_bytes:
                    break
        freed = []
        for key in chosen:
            freed += self.free_unused(*key)  # re-checked under the lock: a lease taken meanwhile keeps it
        return freed

    # ------------------------------------------------------------------ reading
    def loaded(self) -> list[Key]:
        with self._lock:
            return [k for k, e in self._entries.items() if e.loaded is not None]

    def models(self) -> list[LoadedModel]:
        with self._lock:
            return [e.loaded for e in self._entries.values() if e.loaded is not None]

    def find(self, spec: str, precision: str = "fp32", dtype: str = COMPUTE) -> LoadedModel | None:
        """The loaded model, or None (never loads)."""
        with self._lock:
            entry = self._entries.get(self.key(spec, precision, dtype))
            return entry.loaded if entry is not None else None

    def unused_bytes(self) -> int:
        """True bytes of the loaded models nobody holds: what freeing unused models would hand back."""
        with self._lock:
            return sum(e.bytes or 0 for e in self._entries.values() if e.loaded is not None and not e.leases)

    def status(self) -> list[ModelStatus]:
        now = time.time()
        with self._lock:
            out = []
            for (spec, precision, dtype), e in self._entries.items():
                loaded = e.loaded
                out.append(ModelStatus(
                    spec, precision, dtype, loaded.source.display_name if loaded else "",
                    loaded.device if loaded else "", "ready" if loaded else "loading", e.bytes, len(e.leases),
                    tuple(dict.fromkeys(lease.owner for lease in e.leases)),
                    None if e.loaded_at is None else round(now - e.loaded_at, 1), round(now - e.last_used, 1)))
            return out


def _matches(key: Key, spec: str | None, precision: str | None, dtype: str | None) -> bool:
    return all(
        want is None or have == want for have, want in zip(key, (spec and spec.strip(), precision, dtype), strict=True)
    )


def _true_bytes(loaded: LoadedModel) -> int | None:

    try:
        return measure_model(loaded.model).total_bytes
    except Exception:  # a model class the measurer does not know: the status shows no figure
        return None
