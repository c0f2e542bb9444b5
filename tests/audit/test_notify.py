"""Delivering alert notifications: webhook over a real socket, email, claims and retries."""

import json
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from celery.exceptions import Retry
from werkzeug import Response

from audit.alerting import notify
from audit.alerting.engine import alerts_evaluate
from audit.alerting.notify import (
    MAX_ATTEMPTS,
    REQUEUE_SECONDS,
    NotificationDeliveryError,
    notification_deliver,
    notifications_redeliver,
)
from audit.models import AlertNotification
from audit.tasks import deliver_notification
from tests.factories import record_attempts

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture
def sink(httpserver, settings):
    settings.ALERT_WEBHOOK_URL = httpserver.url_for("/hook")
    settings.ALERT_EMAIL_TO = ["ops@example.com"]
    settings.ALERT_RULES = {}
    return httpserver


@pytest.fixture
def notifications(sink) -> dict[str, AlertNotification]:
    record_attempts(3, at=T0, workflow="wf_notify")
    return {n.channel: n for n in alerts_evaluate(now=T0 + timedelta(minutes=1))}


def hook_bodies(sink) -> list[dict]:
    return [json.loads(request.data) for request, _ in sink.log]


def test_webhook_receives_the_payload_once(sink, notifications):
    sink.expect_request("/hook", method="POST").respond_with_data("ok")
    webhook = notifications["webhook"]

    assert notification_deliver(notification_id=webhook.pk) is True
    assert notification_deliver(notification_id=webhook.pk) is False  # a duplicate task

    [body] = hook_bodies(sink)
    assert body["status"] == "firing" and body["rule"] == "upstream_auth"
    assert body["text"].startswith("[CRITICAL]")
    assert sink.log[0][0].headers["Content-Type"] == "application/json"
    webhook.refresh_from_db()
    assert (webhook.status, webhook.attempts) == ("sent", 1)


def test_a_claimed_notification_is_not_sent_by_a_second_worker(sink, notifications):
    sink.expect_request("/hook").respond_with_data("ok")
    webhook = notifications["webhook"]
    AlertNotification.objects.filter(pk=webhook.pk).update(
        claimed_until=datetime.now(UTC) + timedelta(minutes=1)
    )
    assert notification_deliver(notification_id=webhook.pk) is False
    assert sink.log == []


def test_failing_sink_is_retried_after_backoff_and_delivered_once(sink, notifications):
    webhook = notifications["webhook"]
    sink.expect_ordered_request("/hook").respond_with_response(Response("down", status=503))
    sink.expect_ordered_request("/hook").respond_with_data("ok")

    with pytest.raises(NotificationDeliveryError) as failure:
        notification_deliver(notification_id=webhook.pk)
    assert 4 <= failure.value.countdown <= 6
    webhook.refresh_from_db()
    assert webhook.status == "pending" and "503" in webhook.last_error
    # Before the backoff has passed nobody may try again, not even the sweep.
    assert notification_deliver(notification_id=webhook.pk) is False
    assert notifications_redeliver() == 0

    with time_machine.travel(webhook.claimed_until + timedelta(seconds=31), tick=False):
        assert notification_deliver(notification_id=webhook.pk) is True
    webhook.refresh_from_db()
    assert (webhook.status, webhook.attempts) == ("sent", 2)
    assert len(sink.log) == 2


def test_gives_up_after_max_attempts(sink, notifications):
    webhook = notifications["webhook"]
    sink.expect_request("/hook").respond_with_response(Response("down", status=500))
    for attempt in range(1, MAX_ATTEMPTS + 1):
        AlertNotification.objects.filter(pk=webhook.pk).update(claimed_until=None)
        if attempt < MAX_ATTEMPTS:
            with pytest.raises(NotificationDeliveryError):
                notification_deliver(notification_id=webhook.pk)
        else:
            assert notification_deliver(notification_id=webhook.pk) is False
    webhook.refresh_from_db()
    assert (webhook.status, webhook.attempts) == ("failed", MAX_ATTEMPTS)


def test_email_and_log_channels(sink, notifications, mailoutbox, caplog):
    assert notification_deliver(notification_id=notifications["email"].pk)
    [mail] = mailoutbox
    assert mail.to == ["ops@example.com"]
    assert "upstream 401 on wf_notify" in mail.subject
    assert "/admin/audit/sessionattempt/?" in mail.body

    assert notification_deliver(notification_id=notifications["log"].pk)
    assert "ALERT [CRITICAL] upstream_auth" in caplog.text


def test_sweep_requeues_a_lost_task_once_per_requeue_period(
    sink, notifications, monkeypatch, django_capture_on_commit_callbacks
):
    """While no worker runs, the minute sweep must not add a copy of every pending notification
    to the queue each minute: one per REQUEUE_SECONDS, each expiring after as long."""
    published = []
    monkeypatch.setattr(notify, "publish_safely", lambda *a, **kw: published.append(kw) or True)
    now = datetime.now(UTC)
    assert notifications_redeliver() == 0  # its own task was queued when it was created

    for minute in range(1, 31):  # half an hour of sweeps, a worker nowhere
        with time_machine.travel(now + timedelta(minutes=minute), tick=False):
            with django_capture_on_commit_callbacks(execute=True):
                notifications_redeliver()
    # Requeued every fourth minute (strictly more than 180 s after the last): 4, 8, … 28.
    assert len(published) == 7 * 3
    assert {kw["expires"] for kw in published} == {REQUEUE_SECONDS}
    assert {kw["notification_id"] for kw in published} == {n.pk for n in notifications.values()}


def test_a_notification_the_broker_refused_is_requeued_by_the_next_sweep(
    sink, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(notify, "publish_safely", lambda *a, **kw: False)  # Redis is down
    record_attempts(3, at=T0, workflow="wf_notify")
    with django_capture_on_commit_callbacks(execute=True):
        created = alerts_evaluate(now=T0 + timedelta(minutes=1))
    assert {n.queued_at for n in AlertNotification.objects.all()} == {None}

    monkeypatch.setattr(notify, "publish_safely", lambda *a, **kw: True)
    assert notifications_redeliver() == len(created) == 3  # at once, not ten minutes on


def test_the_retry_task_claims_the_row_when_it_arrives(sink, notifications, monkeypatch):
    """The task's countdown and the row's claim share one jittered delay, failure after failure."""
    webhook = notifications["webhook"]
    sink.expect_request("/hook").respond_with_response(Response("down", status=503))
    countdowns = []

    def retry(*, exc, countdown):
        countdowns.append(countdown)
        return Retry()

    monkeypatch.setattr(deliver_notification, "retry", retry)
    moment = datetime.now(UTC)
    for failures in range(1, MAX_ATTEMPTS):
        # Raises Retry only if it claimed the row and the send failed.
        with time_machine.travel(moment, tick=False), pytest.raises(Retry):
            deliver_notification(notification_id=webhook.pk)
        webhook.refresh_from_db()
        base = 5 * 2 ** (failures - 1)
        assert 0.8 * base - 1 < countdowns[-1] <= 1.2 * base
        assert webhook.claimed_until == moment + timedelta(seconds=countdowns[-1] - 1)
        moment += timedelta(seconds=countdowns[-1])  # when the worker runs the retry
    assert webhook.attempts == MAX_ATTEMPTS - 1


def test_a_redirecting_webhook_is_a_failure_and_is_never_followed(sink, notifications):
    # A compromised endpoint answering 302 must not aim the worker at another address.
    sink.expect_request("/hook").respond_with_response(
        Response("", status=302, headers={"Location": sink.url_for("/internal")})
    )
    sink.expect_request("/internal").respond_with_data("secret")
    webhook = notifications["webhook"]

    with pytest.raises(NotificationDeliveryError):
        notification_deliver(notification_id=webhook.pk)

    assert [request.path for request, _ in sink.log] == ["/hook"]
    webhook.refresh_from_db()
    assert webhook.status == "pending" and "302" in webhook.last_error


def test_a_webhook_that_is_not_http_is_never_opened(sink, notifications, settings, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not send")
    settings.ALERT_WEBHOOK_URL = secret.as_uri()
    webhook = notifications["webhook"]

    with pytest.raises(NotificationDeliveryError, match="not an http"):
        notification_deliver(notification_id=webhook.pk)
