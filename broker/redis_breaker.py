"""Skip Redis for a few seconds after it fails once, in this process.

Redis carries the throttle's counters, the coalescing flag of alert evaluations and the Celery
queue; none of them is needed to mint a session and audit it. A Redis that accepts connections
but never answers would otherwise cost every request a socket timeout per use, a second or more
each. After one failure (a timeout, a refused connection) every user skips Redis for
REDIS_PAUSE_SECONDS: the throttle allows, alert evaluations are left to the minute sweep, which
reads the audit log. The first use after the pause tries again.
"""

import logging
import threading
import time
from collections.abc import Callable

from django.conf import settings

from broker import metrics

logger = logging.getLogger(__name__)


class RedisBreaker:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._skip_until = 0.0

    def available(self) -> bool:
        return self._clock() >= self._skip_until

    def reset(self) -> None:
        """Forget the last failure: the next use asks Redis again."""
        self._skip_until = 0.0

    def failed(self, what: str) -> None:
        """Redis failed for `what`: skip it for the pause, saying so once per pause."""
        pause = settings.REDIS_PAUSE_SECONDS
        with self._lock:
            tripped = self.available()
            self._skip_until = self._clock() + pause
        # "throttle: TimeoutError" counts as "throttle": the use, not the exception, is a label.
        metrics.redis_failure_count(what.split(":")[0], pause=pause)
        if tripped:
            logger.warning(
                "Redis failed (%s); skipping it for %g s: throttles allow, alerts wait for the "
                "minute sweep.",
                what,
                pause,
            )


redis_breaker = RedisBreaker()
