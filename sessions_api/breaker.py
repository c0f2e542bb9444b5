"""A circuit breaker per process in front of the upstream.

While OpenAI is down every call waits for its timeouts and retries, seconds each, and holds a
thread meanwhile; a storm of them fills every thread. After `failures` calls in a row that
failed for the upstream's sake (5xx answers, timeouts, connection failures; a 4xx is the
request's fault and never counts), the breaker opens: calls fail at once, without a request,
for `cooldown` seconds. Then one call goes through as a probe, the others still fail at once:
its success closes the breaker, its failure opens it again. State changes are logged, and
handed to `on_state` ("closed", "half_open", "open"; for the metrics), under the breaker's lock.

Per process, on purpose: it needs no shared state to be correct, and each process learns of an
outage from its own few failures.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refusal:
    """Why a call may not go through, and for how much longer."""

    failures: int
    seconds_left: float


class CircuitBreaker:
    def __init__(
        self,
        *,
        failures: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
        on_state: Callable[[str], None] = lambda state: None,
    ) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self._clock = clock
        self._on_state = on_state
        self._lock = threading.Lock()
        self._failures = 0  # in a row
        self._open_until: float | None = None  # None: closed
        self._probing = False

    def refusal(self) -> Refusal | None:
        """None when the call may go through (and is the probe, if the cool-down is over)."""
        with self._lock:
            if self._open_until is None:
                return None
            left = self._open_until - self._clock()
            if left > 0 or self._probing:
                return Refusal(self._failures, max(left, 0.0))
            self._probing = True
            logger.warning("Upstream circuit half-open: one call goes through as a probe.")
            self._on_state("half_open")
            return None

    def succeeded(self) -> None:
        with self._lock:
            if self._open_until is not None:
                logger.warning("Upstream circuit closed: the probe succeeded.")
                self._on_state("closed")
            self._failures, self._open_until, self._probing = 0, None, False

    def failed(self) -> None:
        with self._lock:
            self._failures += 1
            probe_failed = self._probing
            if probe_failed or (self._open_until is None and self._failures >= self.threshold):
                self._open_until = self._clock() + self.cooldown
                self._probing = False
                logger.warning(
                    "Upstream circuit open for %g s after %d failed calls in a row%s.",
                    self.cooldown,
                    self._failures,
                    " (the probe failed)" if probe_failed else "",
                )
                self._on_state("open")
