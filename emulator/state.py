"""What the emulator remembers between requests: sessions, received requests, queued faults and
counters."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from emulator.faults import _normalise_fault

RECORDED_BODY_BYTES = 4096


class EmulatorState:
    """Everything the emulator remembers, bounded so a long load test cannot exhaust memory.

    The server's event loop runs in another thread than the test that inspects it, hence the
    lock around anything that is iterated.

    Sessions are kept as the JSON bytes the create answered with. As dicts, 100,000 of them were
    300,000 objects for Python's cycle collector to walk: in a load test its full passes paused
    every answer in flight for up to 140 ms, which showed as the upstream's own tail
    (docs/benchmarks.md). Bytes hold no references, so the collector never looks at them.
    """

    def __init__(self, *, max_sessions: int = 100_000, max_requests: int = 1_000) -> None:
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, bytes] = OrderedDict()
        self.requests: deque[dict] = deque(maxlen=max_requests)
        self.faults: deque[dict] = deque()
        self.counters: dict = {}
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget sessions, received requests, queued faults (scripted ones too) and counters."""
        with self._lock:
            self._sessions.clear()
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

    def store_session(self, session: dict) -> bytes:
        """Stores the session (replacing one with its id) and returns its JSON, to answer with."""
        body = json.dumps(session).encode()
        with self._lock:
            self._sessions[session["id"]] = body
            self._sessions.move_to_end(session["id"])
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return body

    def get_session(self, session_id: str) -> dict | None:
        """The stored session with its status as of now (an active session past expiry is
        reported as expired), or None."""
        body = self._sessions.get(session_id)
        if body is None:
            return None
        session = json.loads(body)
        if session["status"] == "active" and time.time() >= session["expires_at"]:
            session["status"] = "expired"
        return session

    @property
    def sessions(self) -> Mapping[str, dict]:
        """A read-only snapshot of the stored sessions by id, oldest first, as stored (for
        tests); read-only, so that changing it cannot look as if it changed what is stored."""
        with self._lock:
            stored = list(self._sessions.items())
        return MappingProxyType({session_id: json.loads(body) for session_id, body in stored})

    def stats(self) -> dict:
        with self._lock:
            return {
                **self.counters,
                "by_status": dict(self.counters["by_status"]),
                "sessions_stored": len(self._sessions),
                "faults_queued": len(self.faults),
            }
