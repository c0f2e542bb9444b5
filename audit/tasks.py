"""Celery tasks: thin, idempotent wrappers that take primitives and call a service.

Task names are verbs (`evaluate_alerts`), services are named after what they act on
(`alerts_evaluate`), so the two never collide. Services publish tasks by name
(celery_app.publish_safely), so nothing imports this module but Celery.
"""

from celery import shared_task
from django.conf import settings

from audit.alerting.coalesce import evaluation_started
from audit.alerting.engine import alerts_evaluate
from audit.alerting.notify import NotificationDeliveryError, notification_deliver
from audit.alerting.sweep import alerts_sweep
from audit.reports import error_report_create_and_send
from audit.retention import audit_prune
from audit.stats import attempt_stats_aggregate


@shared_task(soft_time_limit=120, time_limit=180)
def aggregate_stats() -> int:
    """Every minute: fold newly audited minutes into the per-minute statistics."""
    return attempt_stats_aggregate()


@shared_task(soft_time_limit=60, time_limit=90)
def evaluate_alerts() -> None:
    """Soon after a failure is audited (coalesced: one for a burst)."""
    evaluation_started()
    alerts_evaluate()


@shared_task(soft_time_limit=60, time_limit=90)
def sweep_alerts() -> None:
    """Every minute: evaluate the rules, redeliver lost notifications, email unsent reports."""
    alerts_sweep()


@shared_task(bind=True, max_retries=8, soft_time_limit=30, time_limit=45)
def deliver_notification(self, notification_id: int) -> None:
    try:
        notification_deliver(notification_id=notification_id)
    except NotificationDeliveryError as exc:
        # 5 s, 10 s, 20 s … capped at 10 minutes, with jitter so retries do not march in step;
        # the same delay the row's claim was given, so the retry can claim it when it arrives.
        raise self.retry(exc=exc, countdown=exc.countdown) from exc


@shared_task(soft_time_limit=300, time_limit=360)
def send_error_report() -> int:
    return error_report_create_and_send().pk


@shared_task(soft_time_limit=1800, time_limit=1900)
def prune_audit_log() -> int:
    return audit_prune(older_than_days=settings.AUDIT_RETENTION_DAYS).deleted
