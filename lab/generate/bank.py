"""LoRA adapters over one shared base model, each person's set their own.

One PeftModel per loaded base model holds the adapters of everyone using that model: adapters are
small (megabytes), a second copy of the base is not. Isolation comes from names, not copies:

- A session's adapter set maps its column names ("alpha") to peft adapter names the bank picks
  ("a3"). A generation passes only the session's own peft names in `adapter_names` (peft's
  mixed-adapter batch), so another session's adapters never appear in its columns, and rows named
  "__base__" skip every adapter: nobody's adapters change anybody else's output.
- Sessions that choose the same adapter files (same folder, weights file of the same size and
  modification time) share one loaded copy. At inference an adapter is read-only, so sharing it
  changes no output; it is deleted when no session's set names it any more (the session chose
  other adapters, or ended).
- Adapter layers stay disabled between generations, so plain use of the base model (perplexity,
  a forward pass of the base) sees the base.
- The model changes (adapters loaded or deleted) only inside `use()`, which runs inside the work's
  turn in the device queue, never while another generate runs. A session that ends is `forget`-ten
  at once (bookkeeping); its adapters are deleted right away if the model is idle, else at the next
  `use()` on the model.
"""

from __future__ import annotations

import itertools
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

from lab.errors import LabError
from lab.generate.adapters import AdapterInfo, check_compatible
from lab.generate.mixed_lora import row_lora, row_lora_supported

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch
LOCAL = "local"  # the owner of adapters loaded outside any session (CLI, scripts, tests)

Identity = tuple[str, int, int]  # (resolved folder, weights file size, weights file mtime_ns)


def identity(info: AdapterInfo) -> Identity:
    """What makes two adapter choices the same loaded adapter: the same files, unchanged."""
    st = info.weights_file.stat()
    return (str(info.path.resolve()), st.st_size, st.st_mtime_ns)


@dataclass
class _Adapter:
    peft_name: str
    info: AdapterInfo
    bytes: int = 0


@dataclass(frozen=True)
class BankStatus:
    """Adapters on one base model: each with its bytes and the sessions whose set names it."""

    adapters: list[dict] = field(default_factory=list)  # {peft_name, name, source, bytes, owners}
    sets: dict[str, list[str]] = field(default_factory=dict)  # owner -> column names

    @property
    def bytes(self) -> int:
        return sum(a["bytes"] for a in self.adapters)


class AdapterBank:
    """The adapters loaded into one PeftModel over a shared base model, in per-owner sets."""

    def __init__(self, loaded) -> None:
        self.loaded = loaded
        self.peft_model = None
        self.lock = threading.RLock()  # held while the model changes or generates
        self._books = threading.Lock()  # guards the two dicts below (status reads never wait for a generate)
        self._adapters: dict[Identity, _Adapter] = {}
        self._sets: dict[str, dict[str, Identity]] = {}  # owner -> column name -> adapter
        self._ids = itertools.count(1)

    @property
    def model(self):
        """What to call generate on: the PeftModel once an adapter is loaded, else the base."""
        return self.peft_model if self.peft_model is not None else self.loaded.model

    # ------------------------------------------------------------------ a session's set
    def use(self, owner: str, infos: list[AdapterInfo]) -> dict[str, str]:
        """Make `owner`'s set exactly `infos` (loading what is missing, deleting what no set names
        any more). Returns column name -> peft adapter name, for `adapter_names`."""
        with self.lock:
            wanted: dict[str, Identity] = {}
            try:
                for info in infos:
                    key = identity(info)
                    if key not in self._adapters:
                        self._load(info, key)
                    wanted[info.name] = key
            except BaseException:
                self._sweep()  # adapters this call loaded before the failure are named by no set
                raise
            with self._books:
                if wanted:
                    self._sets[owner] = wanted
                else:
                    self._sets.pop(owner, None)
            self._sweep()
            return {name: self._adapters[key].peft_name for name, key in wanted.items()}

    def forget(self, owner: str) -> None:
        """`owner` (a session) is gone: drop its set now, and its adapters as soon as the model is idle."""
        with self._books:
            if self._sets.pop(owner, None) is None:
                return
        if self.lock.acquire(blocking=False):  # idle: delete now; busy: the next use() sweeps
            try:
                self._sweep()
            finally:
                self.lock.release()

    def has(self, key: Identity) -> bool:
        """Is this adapter (by `identity`) loaded, for whichever owner?"""
        with self._books:
            return key in self._adapters

    def columns(self, owner: str) -> list[str]:
        with self._books:
            return list(self._sets.get(owner, {}))

    def status(self) -> BankStatus:
        with self._books:
            owners: dict[Identity, list[str]] = {}
            for owner, chosen in self._sets.items():
                for key in chosen.values():
                    owners.setdefault(key, []).append(owner)
            adapters = [{"peft_name": a.peft_name, "name": a.info.name, "source": a.info.source, "bytes": a.bytes,
                         "owners": owners.get(key, [])} for key, a in self._adapters.items()]
            return BankStatus(adapters, {o: list(c) for o, c in self._sets.items()})

    # ------------------------------------------------------------------ loading and deleting (lock held)
    def _load(self, info: AdapterInfo, key: Identity) -> None:
        # peft: 3.4 s to import; imported where used, not with this module
        from peft import PeftConfig, PeftModel

        check_compatible(info, self.loaded.model)  # shapes first: a foreign adapter never touches the base
        name = f"a{next(self._ids)}"
        created = False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # peft asks transformers a deprecated question
                if self.peft_model is None:
                    config = PeftConfig.from_pretrained(str(info.path))
                    config.inference_mode = True
                    # Construct, then load weights (what PeftModel.from_pretrained does), keeping the
                    # handle so a failure below can be undone.
                    self.peft_model, created = PeftModel(self.loaded.model, config, adapter_name=name), True
                self.peft_model.load_adapter(str(info.path), adapter_name=name)
        except Exception as e:
            self._undo(name, created)
            if isinstance(e, LabError):
                raise
            raise LabError(f"Adapter {info.name} ({info.path}) could not be loaded: {type(e).__name__}: {e}",
                           "Check that it was trained for this base model and that its files are complete.") from e
        with self._books:
            self._adapters[key] = _Adapter(name, info, _adapter_bytes(self.peft_model, name))
        self.peft_model.eval()
        self.peft_model.base_model.disable_adapter_layers()  # the shared base stays the base between generations

    def _undo(self, name: str, created: bool) -> None:
        if self.peft_model is None:
            return
        if created or not self._adapters:
            self.peft_model.unload()  # removes every LoRA layer: the base model is as loaded
            self.peft_model = None
        elif name in self.peft_model.peft_config:
            self.peft_model.delete_adapter(name)

    def _sweep(self) -> None:
        """Delete the adapters no owner's set names."""
        with self._books:
            named = {key for chosen in self._sets.values() for key in chosen.values()}
            doomed = [key for key in self._adapters if key not in named]
            for key in doomed:
                name = self._adapters.pop(key).peft_name
                if not self._adapters:
                    self.peft_model.unload()  # the last one: take every LoRA layer out
                    self.peft_model = None
                else:
                    with warnings.catch_warnings():  # "a1 was active, now a2": generation names its adapters anyway
                        warnings.simplefilter("ignore", UserWarning)
                        self.peft_model.delete_adapter(name)

    def clear(self) -> None:
        """Every set and adapter out: the model is the plain base again."""
        with self.lock:
            with self._books:
                self._sets.clear()
            self._sweep()

    # ------------------------------------------------------------------ generating
    @contextmanager
    def adapters_enabled(self):
        """Adapter layers on for the duration of one generate (they are off otherwise)."""
        with self.lock:
            if self.peft_model is None:
                yield self.loaded.model
                return
            self.peft_model.base_model.enable_adapter_layers()
            try:
                yield self.peft_model
            finally:
                self.peft_model.base_model.disable_adapter_layers()

    @contextmanager
    def mixed_batch(self, row_adapters: list[str | None]):
        """Yields (model, extra generate kwargs, route) for one batch whose row i runs the adapter
        with peft name `row_adapters[i]` (None: the base)."""
        with self.lock:
            names = [n for n in row_adapters if n]
            if self.peft_model is None or not names:
                yield self.loaded.model, {}, "plain"
            elif row_lora_supported(self.peft_model, names):
                with row_lora(self.peft_model, row_adapters):  # adapter layers stay off: see mixed_lora
                    yield self.loaded.model, {}, "row-lora"
            else:
                with self.adapters_enabled() as model:
                    yield model, {"adapter_names": [n or BASE for n in row_adapters]}, "peft-mixed"

    def activate(self, peft_name: str) -> None:
        """Make one adapter the active one, for a generate without `adapter_names` (DoRA)."""
        self.peft_model.set_adapter(peft_name)


def _adapter_bytes(peft_model, name: str) -> int:
    tag = f".{name}."
    return sum(p.numel() * p.element_size() for n, p in peft_model.named_parameters() if tag in n)


_MAKING = threading.Lock()


def adapter_bank(loaded) -> AdapterBank:
    """The AdapterBank of a loaded model (made on first use; lives and dies with the LoadedModel)."""
    with _MAKING:  # two sessions' first generations at once must not make two banks
        bank = getattr(loaded, "_adapter_bank", None)
        if bank is None:
            bank = AdapterBank(loaded)
            loaded._adapter_bank = bank
        return bank
