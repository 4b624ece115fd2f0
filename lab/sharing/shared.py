"""SharedModels: what one server shares between everyone connected — the loaded models (a
reference-counted registry), one FIFO queue per device, the per-request limits — and the few
calls a page (or the CLI) makes to use them fairly:

    shared = SharedModels()                                   # once per server (st.cache_resource)
    result = shared.compare(session, "embedded", "fp32", adapters, messages, settings,
                            report=report, cancel=cancel)     # in a BackgroundTask

Each call checks the request against the limits, leases the model (loading it in its own queue
turn, after admission, when nobody has), waits its turn in the device's queue (reporting "2
requests ahead of you, about 20 s" and honouring Cancel), holds its predicted memory against the
free memory, and only then touches the model. A session keeps a *hold* on the model it last used
for each purpose (the playground's model stays loaded between its requests, and the sidebar shows
who holds what); `end_session` (or `reap` with a liveness check) gives back its holds and adapters.

`status()` is the read-only picture for an instructor: every loaded model with its bytes, holders
and adapters, and every device queue. `free_unused()` frees only what nobody holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from lab.data.prompts import build_chat_prompt
from lab.environment import compute_dtype, device_type
from lab.errors import LabError
from lab.generate.adapters import AdapterInfo
from lab.generate.bank import BankStatus, adapter_bank, identity
from lab.generate.compare import BASE_COLUMN, CompareResult, SamplingSettings, side_by_side
from lab.generate.evaluate import evaluate
from lab.inspect.load_report import available_bytes, run_loading_lab
from lab.models.loading import LoadedModel, trim_heap
from lab.models.precision import get_precision
from lab.models.reader import read_architecture
from lab.models.registry import Key, ModelLease, ModelRegistry
from lab.models.sources import resolve_source
from lab.sharing.admission import Need, check, generation_need, load_need, training_need
from lab.sharing.limits import RequestLimits
from lab.sharing.queue import DeviceQueue, Ticket
from lab.vocab import COMPUTE, DTYPES

Report = Callable[..., None]


@dataclass(frozen=True)
class SharingStatus:
    """Everything an instructor's page shows about shared models and queues (read-only)."""

    models: list[dict]  # ModelStatus.to_json() + 'adapters' (BankStatus.adapters) + 'adapter_bytes'
    queues: list[dict]  # QueueStatus.to_json() per device
    sessions: dict[str, list[str]] = field(default_factory=dict)  # owner -> ['playground: embedded@fp32', ...]
    limits: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


class SharedModels:
    def __init__(self, limits: RequestLimits | None = None, registry: ModelRegistry | None = None,
                 free_bytes: Callable[[str], int] = available_bytes) -> None:
        self.limits = limits or RequestLimits.from_env()
        self.registry = registry or ModelRegistry()
        self.free_bytes = free_bytes  # device -> bytes free now (injectable for tests)
        self._queues: dict[str, DeviceQueue] = {}
        self._holds: dict[tuple[str, str], ModelLease] = {}  # (owner, purpose) -> the session's hold
        self._held_at: dict[tuple[str, str], float] = {}  # (owner, purpose) -> when that hold was last used
        self._lock = threading.Lock()
        self._reaped_at = float("-inf")

    # ------------------------------------------------------------------ queues and admission
    def queue(self, device: str | None = None) -> DeviceQueue:
        device = device or device_type()
        with self._lock:
            if device not in self._queues:
                self._queues[device] = DeviceQueue(device, self.limits.max_queue)
            return self._queues[device]

    def precheck(self, need: Need | None) -> None:
        """Before queueing: refuse at once what cannot fit even if every unused model were freed."""
        if need is not None:
            check(need, self.free_bytes(need.device) + self.registry.unused_bytes(), self.limits.headroom)

    def admit(self, need: Need | None) -> None:
        """In the request's turn: make room by freeing unused models (least recently used first)
        if that is enough, then hold the need against the free memory."""
        if need is None:
            return
        available = self.free_bytes(need.device)
        wanted = int(need.bytes * self.limits.headroom)
        if wanted > available and self.registry.evict_for(wanted, available):
            available = self.free_bytes(need.device)
        check(need, available, self.limits.headroom, self.registry.unused_bytes())

    @contextmanager
    def turn(self, kind: str, owner: str, units: float = 1.0, label: str = "", report: Report | None = None,
             cancel: threading.Event | None = None, need: Need | None = None,
             device: str | None = None) -> Iterator[Ticket]:
        """Wait in the device's line (reporting the position as state 'queued'), then run with `need` admitted."""
        self.precheck(need)

        def on_wait(wait) -> None:
            if report is not None:
                report(wait.message(), state="queued")

        with self.queue(device).turn(kind, owner, units, label, cancel, on_wait) as ticket:
            if report is not None:
                report(f"Running: {ticket.label}", state="running")
            self.admit(need)
            try:
                yield ticket
            finally:
                trim_heap()  # what this turn freed goes back to the OS, not into its thread's malloc arena

    # ------------------------------------------------------------------ models
    @contextmanager
    def model(self, owner: str, spec: str, precision: str = "fp32", dtype: str = COMPUTE, purpose: str = "",
              report: Report | None = None, cancel: threading.Event | None = None) -> Iterator[LoadedModel]:
        """Lease the model for one piece of work; nobody can free it meanwhile. A model nobody has
        loaded is loaded in its own queue turn, after admission. `owner` keeps a hold on it for
        `purpose` afterwards (replacing its earlier hold for that purpose)."""
        lease = self.registry.try_acquire(spec, precision, dtype, owner, purpose)
        if lease is None:
            source = resolve_source(spec, weights=True)
            device = device_type()
            need = load_need(source, precision, dtype, device)
            self.precheck(need)  # what cannot fit even with every unused model freed is refused before queueing
            with self.turn(
                "load", owner, _gigabytes(need), f"loading {source.display_name} at {precision}", report, cancel
            ):
                if self.registry.find(spec, precision, dtype) is None:  # still nobody's: load it here
                    self.admit(need)
                    if report is not None:
                        report(f"Loading {source.display_name} at {get_precision(precision).label}…")
                lease = self.registry.acquire(spec, precision, dtype, owner, purpose)
        try:
            self._hold(owner, purpose, lease.key)
            yield lease.loaded
        finally:
            lease.release()

    def _hold(self, owner: str, purpose: str, key: Key) -> None:
        with self._lock:
            self._held_at[(owner, purpose)] = time.monotonic()
            old = self._holds.get((owner, purpose))
            if old is not None and old.key == key and not old.released:
                return
            self._holds[(owner, purpose)] = self.registry.acquire(*key, owner=owner, purpose=purpose)
        if old is not None:
            old.release()

    def _release_idle_holds(self) -> None:
        """Holds unused for `limits.hold_minutes` end (a tab left open over lunch keeps nothing loaded)."""
        cutoff = time.monotonic() - self.limits.hold_minutes * 60
        with self._lock:
            idle = [k for k, t in self._held_at.items() if t < cutoff and k in self._holds]
            holds = [self._holds.pop(k) for k in idle]
            for k in idle:
                del self._held_at[k]
        for lease in holds:
            lease.release()

    def free_unused(self, spec: str | None = None, precision: str | None = None, dtype: str | None = None) -> list[Key]:
        """Free the matching models nobody holds; models in use stay. Returns the keys freed."""
        return self.registry.free_unused(spec, precision, dtype)

    # ------------------------------------------------------------------ sessions
    def end_session(self, owner: str) -> None:
        """A session is gone: give back its holds, and drop its adapter sets from every model."""
        with self._lock:
            mine = [k for k in self._holds if k[0] == owner]
            holds = [self._holds.pop(k) for k in mine]
            for k in mine:
                self._held_at.pop(k, None)
        for lease in holds:
            lease.release()
        for loaded in self.registry.models():
            bank = getattr(loaded, "_adapter_bank", None)
            if bank is not None:
                bank.forget(owner)

    def owners(self) -> set[str]:
        """Sessions that hold a model or own adapters."""
        with self._lock:
            found = {owner for owner, _ in self._holds}
        for loaded in self.registry.models():
            bank = getattr(loaded, "_adapter_bank", None)
            if bank is not None:
                found |= set(bank.status().sets)
        return found

    def reap(self, is_alive: Callable[[str], bool], every: float = 0.0) -> list[str]:
        """End every session `is_alive` says is gone (a closed tab), and holds idle for longer than
        `limits.hold_minutes`. Returns the owners ended. With `every`, does nothing when the last reap
        was less than that many seconds ago (pages call it on each rerun)."""
        now = time.monotonic()
        with self._lock:
            if now - self._reaped_at < every:
                return []
            self._reaped_at = now
        self._release_idle_holds()
        gone = [o for o in self.owners() if not is_alive(o)]
        for owner in gone:
            self.end_session(owner)
        return gone

    # ------------------------------------------------------------------ work
    def compare(self, owner: str, spec: str, precision: str, adapters: list[AdapterInfo],
                messages: list[dict] | dict[str, list[dict]], settings: SamplingSettings,
                report: Report | None = None, cancel: threading.Event | None = None,
                on_update: Callable[[dict], None] | None = None) -> CompareResult:
        """The base and `owner`'s adapters side by side (lab.generate.compare.side_by_side), shared fairly."""
        self.limits.check_generation(settings.max_new_tokens, len(adapters))
        with self.model(owner, spec, precision, purpose="playground", report=report, cancel=cancel) as loaded:
            need = self._generation_need(loaded, adapters, messages, settings)
            self.limits.check("max_seq_len", need.prompt_tokens + settings.max_new_tokens, "The prompt plus new tokens")
            columns = 1 + len(adapters)
            with self.turn("generate", owner, settings.max_new_tokens * columns,
                           f"{settings.max_new_tokens} tokens × {columns} columns", report, cancel, need.need):
                return side_by_side(loaded, adapters, messages, settings, on_update, cancel, owner=owner)

    def evaluate(self, owner: str, spec: str, precision: str, adapters: list[AdapterInfo], examples: list,
                 dataset: str, settings, report: Report | None = None, cancel: threading.Event | None = None,
                 on_progress: Callable[[int, int, dict], None] | None = None):
        """lab.generate.evaluate.evaluate, one queue turn per example (others' requests run in between)."""

        self.limits.check_evaluation(len(examples), len(adapters), settings.max_new_tokens)
        with self.model(owner, spec, precision, purpose="playground", report=report, cancel=cancel) as loaded:
            longest = max((len(loaded.tokenizer(e.answer, add_special_tokens=False)["input_ids"]) for e in examples),
                          default=1)
            new = settings.max_new_tokens or min(longest + 4, 128)
            probe = [{"role": "user", "content": max((m["content"] for e in examples for m in e.messages), key=len,
                                                     default=" ")}]
            need = self._generation_need(
                loaded, adapters, probe, SamplingSettings(max_new_tokens=new), full_logits=True
            )
            self.precheck(need.need)
            columns = 1 + len(adapters)

            def turn():
                return self.turn("evaluate", owner, columns, f"one example × {columns} columns", report, cancel,
                                 need.need)

            return evaluate(loaded, adapters, examples, dataset, settings, on_progress, cancel, owner=owner, turn=turn)

    def admit_training(self, cfg, device: str | None = None) -> None:
        """Before starting a training run (a TrainConfig; the run is its own process): its size against
        the limits, and its predicted memory against the free memory, unused shared models freed
        first when that makes room. Raises a LabError (NotAdmitted: with what would fit)."""
        self.limits.check_training(cfg.max_steps, cfg.batch_size, cfg.max_length)
        self.admit(training_need(cfg, device or device_type()))

    def loading_lab(self, owner: str, spec: str, precisions: list[str], dtype: str = COMPUTE, quality=None,
                    report: Report | None = None, cancel: threading.Event | None = None) -> list[dict]:
        """lab.inspect.load_report.run_loading_lab (its own loads, measured and freed), one queue turn
        per precision after admission; unused shared models are freed first if that makes room."""

        source = resolve_source(spec, weights=True)
        device = device_type()

        def turn(precision: str):
            need = load_need(source, precision, dtype, device)
            return self.turn(
                "loading lab",
                owner,
                _gigabytes(need),
                f"loading lab: {source.display_name} at {precision}",
                report,
                cancel,
                need,
            )

        return run_loading_lab(spec, precisions, dtype, device, quality, report, cancel, turn)

    def _generation_need(self, loaded: LoadedModel, adapters: list[AdapterInfo], messages, settings: SamplingSettings,
                         full_logits: bool = False) -> _GenerationNeed:

        names = [BASE_COLUMN, *[a.name for a in adapters]]
        per_column = messages if isinstance(messages, dict) else {n: messages for n in names}
        prompt_tokens = max(len(loaded.tokenizer(build_chat_prompt(loaded.tokenizer, per_column.get(n) or [],
                                                                   settings.use_chat_template),
                                                 add_special_tokens=False)["input_ids"]) for n in names)
        bank = adapter_bank(loaded)
        # Adapters this request loads first: peft keeps adapter weights in fp32, so a bf16 file doubles.
        new_bytes = sum(2 * a.weights_file.stat().st_size for a in adapters if not bank.has(identity(a)))
        p = get_precision(loaded.precision)
        act = compute_dtype(loaded.device).itemsize if p.quantized else DTYPES[p.name].bytes
        try:
            arch = read_architecture(loaded.source)
        except LabError:
            return _GenerationNeed(None, prompt_tokens)
        need = generation_need(arch, loaded.source.display_name, loaded.device, act, len(names), prompt_tokens,
                               settings.max_new_tokens, new_bytes, full_logits)
        return _GenerationNeed(need, prompt_tokens)

    # ------------------------------------------------------------------ reading
    def status(self) -> SharingStatus:
        """Loaded models (bytes, holders, adapters), device queues, sessions' holds and the limits."""
        models = []
        for s in self.registry.status():
            loaded = self.registry.find(s.spec, s.precision, s.dtype)
            bank = getattr(loaded, "_adapter_bank", None) if loaded is not None else None
            bs = bank.status() if bank is not None else BankStatus()
            models.append({**s.to_json(), "adapters": bs.adapters, "adapter_bytes": bs.bytes})
        with self._lock:
            queues = list(self._queues.values())
            sessions: dict[str, list[str]] = {}
            for (owner, purpose), lease in self._holds.items():
                sessions.setdefault(owner, []).append(f"{purpose or 'work'}: {lease.key[0]}@{lease.key[1]}")
        return SharingStatus(models, [q.status().to_json() for q in queues], sessions, self.limits.to_json())


@dataclass(frozen=True)
class _GenerationNeed:
    need: Need | None
    prompt_tokens: int


def _gigabytes(need: Need | None) -> float:
    """Queue units of a load: its time grows with the bytes it reads (1 when unpredicted)."""
    return max(need.bytes / 1e9, 1e-3) if need is not None else 1.0
