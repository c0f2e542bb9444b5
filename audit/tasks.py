"""Celery tasks: thin, idempotent wrappers that take primitives and call a service."""

from celery import shared_task


@shared_task(soft_time_limit=120, time_limit=180)
def attempt_stats_aggregate() -> int:
    from audit.stats import attempt_stats_aggregate as aggregate

    return aggregate()


@shared_task(soft_time_limit=60, time_limit=90)
def alerts_evaluate() -> None:
    """Run soon after a failure is audited (coalesced), and by the minute sweep."""
    from audit.alerting import alerts_evaluate_now

    alerts_evaluate_now()


@shared_task(soft_time_limit=60, time_limit=90)
def alerts_sweep() -> None:
    """Every minute: catch up on anything an enqueue lost, resolve quiet alerts, redeliver."""
    from audit.alerting import alerts_sweep as sweep

    sweep()


@shared_task(bind=True, max_retries=8, soft_time_limit=30, time_limit=45)
def alert_notification_deliver(self, notification_id: int) -> None:
    from audit.alerting.notify import NotificationDeliveryError, notification_deliver

    try:
        notification_deliver(notification_id=notification_id)
    except NotificationDeliveryError as exc:
        # 5 s, 10 s, 20 s … capped at 10 minutes, with jitter so retries do not march in step;
        # the same delay the row's claim was given, so the retry can claim it when it arrives.
        raise self.retry(exc=exc, countdown=exc.countdown) from exc


@shared_task(soft_time_limit=300, time_limit=360)
def error_report_send() -> int:
    from audit.reports import error_report_create_and_send

    return error_report_create_and_send().pk


@shared_task(soft_time_limit=1800, time_limit=1900)
def audit_prune() -> int:
    from django.conf import settings

    from audit.retention import audit_prune as prune

    return prune(older_than_days=settings.AUDIT_RETENTION_DAYS).deleted
