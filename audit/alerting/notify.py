"""Alert notifications: what they say, and delivering each exactly once per channel.

A notification row is created once (unique per alert, event, sequence and channel) in the same
transaction as the alert change, then delivered by a Celery task. Delivery first *claims* the
row with a conditional UPDATE, so of two tasks running at once only one sends; the row becomes
`sent` only after the channel accepted it. If a worker dies between sending and recording, the
claim expires, the minute sweep queues the row again (REQUEUE_SECONDS after its task was queued)
and the message is sent again: receivers can drop repeats by the payload's `id`.
"""

import json
import logging
import random
import urllib.request
from datetime import timedelta
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone

from audit.models import Alert, AlertNotification, SessionAttempt
from celery_app import publish_safely

logger = logging.getLogger(__name__)

DELIVER_TASK = "audit.tasks.deliver_notification"
# A queued delivery task not run within this long is taken for lost (a worker died with it, or
# none runs): the sweep queues another, which expires after as long, so at most one live copy
# waits in the queue. Longer than a claim (CLAIM_SECONDS), shorter than an operator's patience.
REQUEUE_SECONDS = 180

# Longer than any single delivery can take (webhook timeout, SMTP), so a claim held by a live
# worker never expires under it.
CLAIM_SECONDS = 120
MAX_ATTEMPTS = 8


# The row's "not before" is this much earlier than the retry task's ETA, so that a task run a
# moment early (timer rounding) still finds the row claimable.
RETRY_MARGIN_SECONDS = 1


class NotificationDeliveryError(Exception):
    def __init__(self, message: str, *, countdown: int) -> None:
        super().__init__(message)
        self.countdown = countdown
        """Seconds until the retry: the task's countdown and the row's claim use this one value."""


def retry_delay(failures: int) -> int:
    """Seconds before the next try after the nth failure: 5, 10, 20 … at most 10 minutes, ±20 %."""
    return int(min(5 * 2 ** (failures - 1), 600) * random.uniform(0.8, 1.2))


def channels() -> list[str]:
    enabled = [AlertNotification.Channel.LOG]
    if settings.ALERT_WEBHOOK_URL:
        enabled.append(AlertNotification.Channel.WEBHOOK)
    if settings.ALERT_EMAIL_TO:
        enabled.append(AlertNotification.Channel.EMAIL)
    return enabled


def notifications_create(
    alert: Alert, *, event: str, sequence: int, resolved_reason: str | None = None
) -> list[AlertNotification]:
    """Queue one notification per channel; a second call for the same event changes nothing.

    resolved_reason says why a resolved incident closed: "quiet" or "rule_disabled".
    """
    payload = notification_payload(
        alert, event=event, sequence=sequence, resolved_reason=resolved_reason
    )
    created = []
    for channel in channels():
        notification, new = AlertNotification.objects.get_or_create(
            alert=alert,
            event=event,
            sequence=sequence,
            channel=channel,
            defaults={"payload": payload, "queued_at": timezone.now()},
        )
        if new:
            created.append(notification)
            _deliver_after_commit(notification.pk)
    return created


def notification_payload(
    alert: Alert, *, event: str, sequence: int, resolved_reason: str | None = None
) -> dict:
    base = settings.ALERT_ADMIN_BASE_URL.rstrip("/")
    audit_filter = {"created_at__gte": alert.first_seen.isoformat()}
    if alert.workflow_id:
        audit_filter["workflow_id"] = alert.workflow_id
    if alert.status_code is not None:
        audit_filter["status_code__exact"] = alert.status_code
    audit_url = (
        base + reverse("admin:audit_sessionattempt_changelist") + "?" + urlencode(audit_filter)
    )
    alert_url = base + reverse("admin:audit_alert_change", args=[alert.pk])
    payload = {
        # Unique per incident: the fingerprint alone repeats for every incident of a rule and
        # key, and receivers drop repeats by this id.
        "id": f"{alert.fingerprint}:{alert.pk}:{event}:{sequence}",
        "status": event,
        "rule": alert.rule,
        "severity": alert.severity,
        "status_code": alert.status_code,
        "error_code": alert.error_code,
        "workflow_id": alert.workflow_id,
        "sample_message": alert.sample_message,
        "count": alert.count,
        "threshold": alert.threshold,
        "window_seconds": alert.window_seconds,
        "min_ratio": alert.min_ratio,
        "first_seen": alert.first_seen.isoformat(),
        "last_seen": alert.last_seen.isoformat(),
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
        "resolved_reason": resolved_reason,
        "fingerprint": alert.fingerprint,
        "sample_attempt_ids": alert.sample_attempt_ids,
        # The same attempts by the id their callers were shown (and their log lines carry).
        "sample_request_ids": _request_ids(alert.sample_attempt_ids),
        "repeat": sequence if event == AlertNotification.Event.FIRING else None,
        "audit_url": audit_url,
        "alert_url": alert_url,
    }
    payload["text"] = notification_text(payload)
    return payload


def _request_ids(attempt_ids: list[int]) -> list[str]:
    ids = SessionAttempt.objects.filter(pk__in=attempt_ids).values_list("pk", "request_id")
    by_pk = dict(ids)
    return [by_pk[pk] for pk in attempt_ids if pk in by_pk]  # pruned rows drop out


def notification_text(payload: dict) -> str:
    """One readable line for chat webhooks (Slack-style `text`) and the log."""
    what = f"upstream {payload['status_code']}" if payload["status_code"] else payload["rule"]
    where = f" on {payload['workflow_id']}" if payload["workflow_id"] else ""
    minutes = payload["window_seconds"] // 60
    if payload["status"] == AlertNotification.Event.RESOLVED:
        why = (
            "closed: the rule was disabled"
            if payload["resolved_reason"] == "rule_disabled"
            else "is quiet again"
        )
        return f"[RESOLVED] {payload['rule']}: {what}{where} {why}. {payload['alert_url']}"
    sample = f' Sample: "{payload["sample_message"][:200]}"' if payload["sample_message"] else ""
    return (
        f"[{payload['severity'].upper()}] {payload['rule']}: {what}{where}, "
        f"{payload['count']} since {payload['first_seen']} (threshold {payload['threshold']} "
        f"in {minutes} min).{sample} Audit log: {payload['audit_url']}"
    )


def notification_deliver(*, notification_id: int) -> bool:
    """Send one notification if it is still pending and nobody else holds it; True if sent."""
    now = timezone.now()
    claimed = (
        AlertNotification.objects.filter(
            pk=notification_id, status=AlertNotification.Status.PENDING
        )
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .update(claimed_until=now + timedelta(seconds=CLAIM_SECONDS), attempts=F("attempts") + 1)
    )
    if not claimed:
        return False
    notification = AlertNotification.objects.get(pk=notification_id)
    try:
        _send(notification)
    except Exception as exc:  # noqa: BLE001 - every channel failure is retried the same way
        countdown = retry_delay(notification.attempts)
        error = NotificationDeliveryError(f"{type(exc).__name__}: {exc}", countdown=countdown)
        gave_up = notification.attempts >= MAX_ATTEMPTS
        notification.status = (
            AlertNotification.Status.FAILED if gave_up else AlertNotification.Status.PENDING
        )
        # The claim becomes "not before": the sweep leaves it alone until the retry is due, and
        # the retry task, due a moment later, can claim it.
        notification.claimed_until = timezone.now() + timedelta(
            seconds=countdown - RETRY_MARGIN_SECONDS
        )
        # The task's retry is queued for then: the sweep counts from there.
        notification.queued_at = timezone.now() + timedelta(seconds=countdown)
        notification.last_error = str(error)[:2000]
        notification.save(update_fields=["status", "claimed_until", "queued_at", "last_error"])
        logger.warning("Alert notification %s failed: %s", notification_id, error)
        if gave_up:
            return False
        raise error from exc
    notification.status = AlertNotification.Status.SENT
    notification.sent_at = timezone.now()
    notification.claimed_until = None
    notification.save(update_fields=["status", "sent_at", "claimed_until"])
    return True


class _RedirectRefused(urllib.request.HTTPRedirectHandler):
    """A 3xx from the webhook is an error, never followed: a compromised or mistyped endpoint
    would otherwise aim this worker at any address it can reach (blind SSRF)."""

    def redirect_request(self, *args, **kwargs) -> None:
        return None  # urllib then raises HTTPError for the 3xx


_webhook_opener = urllib.request.build_opener(_RedirectRefused)


def webhook_url_valid(url: str) -> bool:
    """http(s) with a host: the only webhooks opened (audit/checks.py refuses the rest)."""
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _send(notification: AlertNotification) -> None:
    payload = notification.payload
    if notification.channel == AlertNotification.Channel.WEBHOOK:
        url = settings.ALERT_WEBHOOK_URL
        # The system check refuses anything else too, but a worker may start without it.
        if not webhook_url_valid(url):
            raise ValueError("ALERT_WEBHOOK_URL is not an http(s) URL.")
        request = urllib.request.Request(  # noqa: S310 - http(s) only, checked above
            url,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", "User-Agent": "chatkit-session-broker"},
            method="POST",
        )
        # HTTPError for 3xx, 4xx and 5xx answers, which the caller retries.
        with _webhook_opener.open(request, timeout=settings.ALERT_WEBHOOK_TIMEOUT):
            pass
    elif notification.channel == AlertNotification.Channel.EMAIL:
        subject = payload["text"].split(". ")[0][:150]
        send_mail(subject, payload["text"], None, settings.ALERT_EMAIL_TO, fail_silently=False)
    else:
        log = logger.info if payload["status"] == "resolved" else logger.warning
        # Payloads stored before sample_request_ids existed have none.
        log(
            "ALERT %s",
            payload["text"],
            extra={"sample_request_ids": payload.get("sample_request_ids")},
        )


def notifications_redeliver(*, limit: int = 200) -> int:
    """Queue delivery of pending notifications whose task was lost; returns how many.

    A notification whose task was queued less than REQUEUE_SECONDS ago is left alone, and each
    task queued here expires after as long: while no worker runs, every minute's sweep would
    otherwise add another copy of every pending notification to the queue.
    """
    now = timezone.now()
    pending = (
        AlertNotification.objects.filter(status=AlertNotification.Status.PENDING)
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .filter(
            Q(queued_at__isnull=True) | Q(queued_at__lt=now - timedelta(seconds=REQUEUE_SECONDS))
        )
        .values_list("pk", flat=True)[:limit]
    )
    ids = list(pending)
    AlertNotification.objects.filter(pk__in=ids).update(queued_at=now)
    for notification_id in ids:
        _deliver_after_commit(notification_id, expires=REQUEUE_SECONDS)
    return len(ids)


def _deliver_after_commit(notification_id: int, *, expires: float | None = None) -> None:
    """Queue the delivery task once the row is committed. If the broker refuses it, the row is
    marked not queued, so the next sweep tries again at once rather than REQUEUE_SECONDS on."""

    def publish() -> None:
        queued = publish_safely(DELIVER_TASK, expires=expires, notification_id=notification_id)
        if not queued:
            AlertNotification.objects.filter(pk=notification_id).update(queued_at=None)

    transaction.on_commit(publish)
