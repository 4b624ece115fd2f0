"""Who is connected and what each session is doing, for the instructor's page.

Pages report into one board per server (`touch(session_id, page, doing)`): the page a session
is on and what it is doing ("queued run X, 2nd in line", "generating"). Whether a session is
still connected is asked of Streamlit's runtime by the caller (its public `is_active_session`),
and closed sessions are dropped from the board when it is read. No Streamlit import here: the
board is plain data behind a lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace


@dataclass
class Activity:
    session: str  # Streamlit's session id (shown shortened; it grants nothing)
    page: str = ""
    doing: str = ""
    first_seen: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)

    @property
    def short(self) -> str:
        return self.session[:8]


class SessionBoard:
    def __init__(self) -> None:
        self._sessions: dict[str, Activity] = {}
        self._lock = threading.Lock()

    def touch(self, session: str, page: str | None = None, doing: str | None = None) -> None:
        with self._lock:
            a = self._sessions.setdefault(session, Activity(session))
            a.last_seen = time.time()
            if page is not None:
                a.page = page
            if doing is not None:
                a.doing = doing

    def snapshot(self, is_active: Callable[[str], bool] | None = None) -> list[Activity]:
        """Connected sessions (by `is_active`), most recently active first; the others are dropped."""
        with self._lock:
            if is_active is not None:
                for sid in [s for s in self._sessions if not is_active(s)]:
                    del self._sessions[sid]
            return sorted((replace(a) for a in self._sessions.values()), key=lambda a: a.last_seen, reverse=True)
