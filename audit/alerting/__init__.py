"""Alerting on the audit log: rules, the incident state machine, notifications.

The entry points Celery and the audit service call are here; the rest lives in rules.py,
engine.py and notify.py.
"""

import contextlib
import logging

from django.core.cache import cache
from django.db import transaction

from broker.redis_breaker import redis_breaker
from celery_app import publish_safely

logger = logging.getLogger(__name__)

# Set while an evaluation is queued but has not started: later failures ride along with it.
EVALUATION_PENDING_KEY = "audit:alerts:evaluation-pending"
# If that evaluation is lost (worker crash, Redis blip), the key expires and the next failure
# asks again; the minute sweep covers the gap.
EVALUATION_PENDING_TTL = 30
# The heartbeat the minute sweep records; /healthz reports it.
SWEEP_HEARTBEAT = "alerts_sweep"


def alerts_evaluation_request() -> None:
    """Ask for an alert evaluation right after commit, coalescing bursts of failures."""
    transaction.on_commit(_evaluation_request_now)


def _evaluation_request_now() -> None:
    from audit.tasks import alerts_evaluate

    if not redis_breaker.available():
        return  # Redis failed a moment ago: the minute sweep evaluates from the audit log
    try:
        first = cache.add(EVALUATION_PENDING_KEY, 1, timeout=EVALUATION_PENDING_TTL)
    except Exception as exc:  # noqa: BLE001 - a cache outage must not fail the request
        redis_breaker.failed(f"alert coalescing: {type(exc).__name__}")
        return
    if first and not publish_safely(alerts_evaluate):
        # Nothing is queued, so the flag must not hold back the next failure's request.
        with contextlib.suppress(Exception):
            cache.delete(EVALUATION_PENDING_KEY)


def alerts_evaluate_now() -> None:
    """The coalesced evaluation: failures audited from here on will ask for a new one."""
    from audit.alerting.engine import alerts_evaluate

    try:
        cache.delete(EVALUATION_PENDING_KEY)
    except Exception:  # noqa: BLE001 - the key expires on its own
        logger.warning("Cache unavailable; could not clear the evaluation-pending flag.")
    alerts_evaluate()


def alerts_sweep() -> None:
    """The minute sweep: statistics, rules, deliveries whose task was lost, unsent reports.

    It first records a heartbeat, which /healthz reports when it goes stale (beat or the worker
    stopped). Each step runs even when an earlier one fails; the first failure is raised at the
    end so the task still shows as failed.
    """
    from audit.alerting.engine import alerts_evaluate
    from audit.alerting.notify import notifications_redeliver
    from audit.reports import error_reports_email_due
    from audit.services import heartbeat_record
    from audit.stats import attempt_stats_aggregate

    heartbeat_record(name=SWEEP_HEARTBEAT)
    failure = None
    steps = (
        attempt_stats_aggregate,
        alerts_evaluate,
        notifications_redeliver,
        error_reports_email_due,
    )
    for step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - one broken step must not stop the others
            logger.exception("Sweep step %s failed; the other steps still run.", step.__name__)
            failure = failure or exc
    if failure is not None:
        raise failure
