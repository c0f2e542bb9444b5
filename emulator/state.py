"""What the emulator remembers between requests: sessions, received requests, queued faults and
counters."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable

from emulator.faults import _normalise_fault

RECORDED_BODY_BYTES = 4096


class EmulatorState:
    """Everything the emulator remembers, bounded so a long load test cannot exhaust memory.

    The server's event loop runs in another thread than the test that inspects it, hence the
    lock around anything that is iterated.
    """

    def __init__(self, *, max_sessions: int = 100_000, max_requests: int = 1_000) -> None:
        self.max_sessions = max_sessions
        self.sessions: OrderedDict[str, dict] = OrderedDict()
        self.requests: deque[dict] = deque(maxlen=max_requests)
        self.faults: deque[dict] = deque()
        self.counters: dict = {}
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget sessions, received requests, queued faults (scripted ones too) and counters."""
        with self._lock:
            self.sessions.clear()
            self.requests.clear()
            self.faults.clear()
            self.counters = dict.fromkeys(("requests", "created", "cancelled", "faults"), 0)
            self.counters.update(dropped=0, by_status={})

    def push_faults(self, faults: Iterable[dict | str]) -> int:
        """Queue faults, each consumed by one create request; returns the queue length."""
        normalised = [_normalise_fault(fault) for fault in faults]
        with self._lock:
            self.faults.extend(normalised)
            return len(self.faults)

    def next_fault(self) -> dict | None:
        if not self.faults:  # the common case, without raising
            return None
        try:
            return self.faults.popleft()
        except IndexError:
            return None

    def record_request(self, record: dict) -> None:
        with self._lock:
            self.requests.append(record)
            self.counters["requests"] += 1

    def received(self) -> list[dict]:
        """A snapshot of the received API requests, oldest first."""
        with self._lock:
            return list(self.requests)

    def count_status(self, status: int | str) -> None:
        key = str(status)
        with self._lock:
            by_status = self.counters["by_status"]
            by_status[key] = by_status.get(key, 0) + 1

    def store_session(self, session: dict) -> None:
        with self._lock:
            self.sessions[session["id"]] = session
            self.sessions.move_to_end(session["id"])
            while len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)

    def get_session(self, session_id: str) -> dict | None:
        """The stored session with its status as of now (an active session past expiry is
        reported as expired), or None."""
        session = self.sessions.get(session_id)
        if session is None:
            return None
        if session["status"] == "active" and time.time() >= session["expires_at"]:
            return {**session, "status": "expired"}
        return session

    def stats(self) -> dict:
        with self._lock:
            return {
                **self.counters,
                "by_status": dict(self.counters["by_status"]),
                "sessions_stored": len(self.sessions),
                "faults_queued": len(self.faults),
            }
