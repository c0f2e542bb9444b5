"""Asking for an alert evaluation after a failure, coalesced so a burst queues one task."""

import contextlib
import logging

from django.core.cache import cache
from django.db import transaction

from broker.redis_breaker import redis_breaker
from celery_app import publish_safely

logger = logging.getLogger(__name__)

EVALUATE_TASK = "audit.tasks.evaluate_alerts"
# Set while an evaluation is queued but has not started: later failures ride along with it.
EVALUATION_PENDING_KEY = "audit:alerts:evaluation-pending"
# If that evaluation is lost (worker crash, Redis blip), the key expires and the next failure
# asks again; the minute sweep covers the gap.
EVALUATION_PENDING_TTL = 30


def alerts_evaluation_request() -> None:
    """Ask for an alert evaluation right after commit, coalescing bursts of failures."""
    transaction.on_commit(_evaluation_request_now)


def _evaluation_request_now() -> None:
    if not redis_breaker.available():
        return  # Redis failed a moment ago: the minute sweep evaluates from the audit log
    try:
        first = cache.add(EVALUATION_PENDING_KEY, 1, timeout=EVALUATION_PENDING_TTL)
    except Exception as exc:  # noqa: BLE001 - a cache outage must not fail the request
        redis_breaker.failed(f"alert coalescing: {type(exc).__name__}")
        return
    if first and not publish_safely(EVALUATE_TASK):
        # Nothing is queued, so the flag must not hold back the next failure's request.
        with contextlib.suppress(Exception):
            cache.delete(EVALUATION_PENDING_KEY)


def evaluation_started() -> None:
    """The queued evaluation starts: failures audited from here on ask for a new one."""
    try:
        cache.delete(EVALUATION_PENDING_KEY)
    except Exception:  # noqa: BLE001 - the key expires on its own
        logger.warning("Cache unavailable; could not clear the evaluation-pending flag.")
