"""The minute sweep: what keeps alerting right when an enqueue or a task was lost."""

import logging

from audit.alerting.engine import alerts_evaluate
from audit.alerting.notify import notifications_redeliver
from audit.reports import error_reports_email_due
from audit.services import heartbeat_record

logger = logging.getLogger(__name__)

# The heartbeat the minute sweep records; /healthz/scheduler reports it.
SWEEP_HEARTBEAT = "alerts_sweep"


def alerts_sweep() -> None:
    """Evaluate the rules, redeliver notifications whose task was lost, email unsent reports.

    It first records a heartbeat, which /healthz/scheduler reports when it goes stale (beat or
    the worker stopped). Each step runs even when an earlier one fails; the first failure is
    raised at the end so the task still shows as failed.
    """
    heartbeat_record(name=SWEEP_HEARTBEAT)
    failure = None
    for step in (alerts_evaluate, notifications_redeliver, error_reports_email_due):
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - one broken step must not stop the others
            logger.exception("Sweep step %s failed; the other steps still run.", step.__name__)
            failure = failure or exc
    if failure is not None:
        raise failure
