"""Models loaded once per server when the app starts (QLORA_LAB_PRELOAD), in a background thread,
so the room's first request is not a cold load.

    QLORA_LAB_PRELOAD=embedded@fp32,embedded@nf4

Each entry is a model source and a precision (fp32 when left out); they load one after another,
and each one's state (waiting, loading, ready, failed with the reason) is shown on the
instructor's page. The specs go through the same checks as anyone's input (public mode included).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from lab.errors import LabError
from lab.vocab import PRECISIONS, lookup

ENV = "QLORA_LAB_PRELOAD"


@dataclass
class PreloadItem:
    spec: str
    precision: str
    status: str = "waiting"  # waiting | loading | ready | failed
    error: str | None = None
    seconds: float | None = None

    @property
    def label(self) -> str:
        return f"{self.spec}@{self.precision}"


def parse_preload(text: str | None) -> list[PreloadItem]:
    """'embedded@fp32, embedded@nf4' -> items; a LabError naming a bad precision."""
    items = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        spec, _, precision = part.rpartition("@") if "@" in part else (part, "", "fp32")
        if not spec.strip():
            raise LabError(f"{ENV} entry {part!r} names no model.", "Write model@precision, e.g. embedded@nf4.")
        items.append(
            PreloadItem(spec.strip(), lookup(PRECISIONS, precision, f"precision in {ENV} entry {part!r}").name)
        )
    return items


class Preloader:
    """Loads `items` with `load(spec, precision)` in a daemon thread, one after another."""

    def __init__(self, items: list[PreloadItem], load: Callable[[str, str], object]) -> None:
        self.items = items
        self._load = load
        self._thread = threading.Thread(target=self._run, name="lab-preload", daemon=True)
        self.started = False

    @classmethod
    def from_env(cls, load: Callable[[str, str], object], env: dict | None = None) -> Preloader:
        env = os.environ if env is None else env
        return cls(parse_preload(env.get(ENV)), load)

    def start(self) -> Preloader:
        if self.items and not self.started:
            self.started = True
            self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> Preloader:
        if self.started:
            self._thread.join(timeout)
        return self

    @property
    def done(self) -> bool:
        return all(i.status in ("ready", "failed") for i in self.items)

    def _run(self) -> None:
        for item in self.items:
            item.status = "loading"
            t0 = time.perf_counter()
            try:
                self._load(item.spec, item.precision)
                item.status = "ready"
            except LabError as e:
                item.status, item.error = "failed", str(e)
            except Exception as e:  # noqa: BLE001 - one failed preload must not stop the others
                item.status, item.error = "failed", f"{type(e).__name__}: {e}"
            item.seconds = round(time.perf_counter() - t0, 2)
