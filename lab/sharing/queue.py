"""One fair line per device: work on a shared model (generate, evaluate, perplexity, a load) waits
its turn, first come first served, and knows where it stands while it waits.

Why a queue rather than a lock: a lock makes waiters race (no order, no position to show), and a
person staring at a spinner cannot tell a busy room from a hung server. The queue answers "2
requests ahead of you, about 20 s": the estimate comes from how long recent work of the same kind
took on this device, per unit of work (new tokens × columns for a comparison, examples for an
evaluation turn), so a short request is not quoted a long one's time.

Long work (an evaluation) takes one turn per step rather than one for the whole job, so a
72-example evaluation does not hold the device while others wait: their requests run between its
examples. Cancel works while waiting (the ticket leaves the line at once) and while running (the
work itself watches the same event).

Threads only: Streamlit sessions are threads of one server process, so one DeviceQueue per device
is shared in memory (the page keeps it in `st.cache_resource`, through SharedModels).
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from lab.errors import Cancelled, LabError
from lab.units import fmt_seconds

# How often a waiting request re-reads its place, and re-reports an unchanged one (seconds).
POLL_SECONDS = 0.2
REPORT_EVERY = 2.0


@dataclass(eq=False)  # a ticket is itself: found in the line by identity
class Ticket:
    """One request in a device's line."""

    id: int
    device: str
    kind: str  # generate | evaluate | load | perplexity ...: durations are learned per kind
    owner: str  # the session that asked (a Streamlit session id, or "cli")
    units: float  # size of the work in the kind's unit (tokens x columns, examples ...)
    label: str
    submitted: float
    started: float | None = None
    state: str = "waiting"  # waiting | running | done | cancelled

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Wait:
    """Where a waiting request stands: how many requests are before it, and the estimated wait."""

    ahead: int  # requests before this one, the running one included
    seconds: float | None  # None: nothing of that kind has run here yet

    def message(self) -> str:
        if self.ahead == 0:
            return "Your turn is next."
        who = f"{self.ahead} request{'s' if self.ahead != 1 else ''} ahead of you"
        if self.seconds is None:
            return f"{who} (no estimate yet: nothing like it has run here)."
        return f"{who}, {fmt_seconds(self.seconds)}."


class WorkTimes:
    """Recent durations per kind of work, as seconds per unit, for estimates."""

    def __init__(self, keep: int = 20) -> None:
        self._rates: dict[str, deque[float]] = {}
        self._seconds: deque[float] = deque(maxlen=keep)
        self.keep = keep

    def record(self, kind: str, seconds: float, units: float) -> None:
        self._rates.setdefault(kind, deque(maxlen=self.keep)).append(seconds / max(units, 1e-9))
        self._seconds.append(seconds)

    def estimate(self, kind: str, units: float) -> float | None:
        """Median seconds per unit of this kind × units; for an unseen kind, the median duration of
        any recent work (a rough guess beats none); None before anything has run."""
        rates = self._rates.get(kind)
        if rates:
            return statistics.median(rates) * units
        return statistics.median(self._seconds) if self._seconds else None

    def to_json(self) -> dict:
        return {
            k: {"seconds_per_unit": round(statistics.median(v), 4), "samples": len(v)} for k, v in self._rates.items()
        }


@dataclass(frozen=True)
class QueueStatus:
    """A read-only picture of one device's line (for the instructor's page and the sidebar)."""

    device: str
    running: dict | None  # the running ticket (+ 'elapsed')
    waiting: list[dict]  # waiting tickets in order (+ 'ahead', 'wait_seconds')
    recent: list[dict]  # the last finished tickets (+ 'seconds')
    times: dict  # kind -> {seconds_per_unit, samples}

    def to_json(self) -> dict:
        return asdict(self)


class DeviceQueue:
    """First come, first served, one request running at a time on `device`."""

    def __init__(self, device: str, max_waiting: int = 64, clock: Callable[[], float] = time.monotonic) -> None:
        self.device = device
        self.max_waiting = max_waiting
        self.times = WorkTimes()
        self._clock = clock
        self._cond = threading.Condition()
        self._waiting: deque[Ticket] = deque()
        self._running: Ticket | None = None
        self._recent: deque[dict] = deque(maxlen=10)
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ the line
    def submit(self, kind: str, owner: str, units: float = 1.0, label: str = "") -> Ticket:
        """Join the line (refused when `max_waiting` requests already wait)."""
        with self._cond:
            if len(self._waiting) >= self.max_waiting:
                wait = self._wait_locked(None)
                raise LabError(f"The {self.device} queue is full: {len(self._waiting)} requests are waiting "
                               f"({'no estimate' if wait.seconds is None else fmt_seconds(wait.seconds)} of work).",
                               "Try again in a few minutes (the limit is QLORA_LAB_MAX_QUEUE).")
            ticket = Ticket(next(self._ids), self.device, kind, owner, float(units), label or kind, self._clock())
            self._waiting.append(ticket)
            self._cond.notify_all()
            return ticket

    def wait(self, ticket: Ticket, cancel: threading.Event | None = None,
             on_wait: Callable[[Wait], None] | None = None) -> None:
        """Block until `ticket` runs. `on_wait(Wait)` hears the position when it changes (and every
        few seconds); a set `cancel` takes the ticket out of the line and raises Cancelled."""
        last: tuple | None = None
        last_told = 0.0
        with self._cond:
            try:
                while not (self._running is None and self._waiting and self._waiting[0] is ticket):
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("Cancelled while waiting in the queue: nothing ran.")
                    wait = self._wait_locked(ticket)
                    shown = (wait.ahead, None if wait.seconds is None else round(wait.seconds))
                    if on_wait is not None and (shown != last or self._clock() - last_told >= REPORT_EVERY):
                        on_wait(wait)  # a report() call: puts a message in the task's queue, never blocks
                        last, last_told = shown, self._clock()
                    self._cond.wait(POLL_SECONDS)
            except BaseException:
                self._drop_locked(ticket)
                raise
            self._waiting.popleft()
            self._running, ticket.state, ticket.started = ticket, "running", self._clock()

    def finish(self, ticket: Ticket, ok: bool = True) -> None:
        """The work is over: the next request may run. Only complete work (`ok`) teaches the estimates."""
        with self._cond:
            if self._running is ticket:
                seconds = self._elapsed(ticket)
                self._running = None
                ticket.state = "done" if ok else "cancelled"
                if ok:
                    self.times.record(ticket.kind, seconds, ticket.units)
                self._recent.appendleft({**ticket.to_json(), "seconds": round(seconds, 3)})
            else:
                self._drop_locked(ticket)
            self._cond.notify_all()

    @contextmanager
    def turn(self, kind: str, owner: str, units: float = 1.0, label: str = "", cancel: threading.Event | None = None,
             on_wait: Callable[[Wait], None] | None = None) -> Iterator[Ticket]:
        """`with queue.turn(...):` — wait in line, run, and let the next one in (even on an error)."""
        ticket = self.submit(kind, owner, units, label)
        self.wait(ticket, cancel, on_wait)
        ok = False
        try:
            yield ticket
            ok = not (cancel is not None and cancel.is_set())
        finally:
            self.finish(ticket, ok)

    # ------------------------------------------------------------------ where things stand
    def where(self, ticket: Ticket) -> Wait:
        with self._cond:
            return self._wait_locked(ticket)

    def estimate(self, kind: str, units: float = 1.0) -> float | None:
        """How long work of this kind and size is expected to run here (seconds), from recent work."""
        with self._cond:
            return self.times.estimate(kind, units)

    def wait_for_new(self) -> Wait:
        """What a request joining the line now would wait."""
        with self._cond:
            return self._wait_locked(None)

    def status(self) -> QueueStatus:
        with self._cond:
            running = None
            if self._running is not None:
                running = {**self._running.to_json(), "elapsed": round(self._elapsed(self._running), 3)}
            waiting = []
            for t in self._waiting:
                w = self._wait_locked(t)
                waiting.append({**t.to_json(), "ahead": w.ahead, "wait_seconds": w.seconds})
            return QueueStatus(self.device, running, waiting, list(self._recent), self.times.to_json())

    def __len__(self) -> int:
        """Requests in the line, the running one included."""
        with self._cond:
            return len(self._waiting) + (self._running is not None)

    # ------------------------------------------------------------------ internals (lock held)
    def _wait_locked(self, ticket: Ticket | None) -> Wait:
        before = list(itertools.takewhile(lambda t: t is not ticket, self._waiting))
        seconds: float | None = 0.0
        if self._running is not None:
            est = self.times.estimate(self._running.kind, self._running.units)
            seconds = None if est is None else max(est - self._elapsed(self._running), 0.0)
        for t in before:
            est = self.times.estimate(t.kind, t.units)
            seconds = None if seconds is None or est is None else seconds + est
        return Wait(len(before) + (self._running is not None), seconds)

    def _elapsed(self, ticket: Ticket) -> float:
        return 0.0 if ticket.started is None else self._clock() - ticket.started

    def _drop_locked(self, ticket: Ticket) -> None:
        if ticket in self._waiting:
            self._waiting.remove(ticket)
            ticket.state = "cancelled"
            self._recent.appendleft({**ticket.to_json(), "seconds": 0.0})
            self._cond.notify_all()
