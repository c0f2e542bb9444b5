"""Delivering alert notifications: webhook over a real socket, email, claims and retries."""

import json
import logging
import random
import socket
import time
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

    with pytest.raises(NotificationDeliveryError):
        notification_deliver(notification_id=webhook.pk)
    webhook.refresh_from_db()
    assert webhook.last_error == "ValueError: ALERT_WEBHOOK_URL is not an http(s) URL."


def test_the_webhook_receiver_gets_a_json_post_with_the_whole_payload(sink, notifications):
    sink.expect_request("/hook").respond_with_data("ok")
    webhook = notifications["webhook"]
    assert notification_deliver(notification_id=webhook.pk)

    [(request, _)] = sink.log
    # The request line as sent (werkzeug's request.method upper-cases it): methods are
    # case-sensitive, and a strict receiver refuses "post".
    assert (request.environ["REQUEST_METHOD"], request.path) == ("POST", "/hook")
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == "chatkit-session-broker"
    assert json.loads(request.data) == webhook.payload


def test_a_webhook_slower_than_its_timeout_is_a_failure_to_retry(sink, notifications, settings):
    settings.ALERT_WEBHOOK_TIMEOUT = 0.2

    def stalls(request):
        time.sleep(1)
        return Response("late")

    sink.expect_request("/hook").respond_with_handler(stalls)
    webhook = notifications["webhook"]
    with pytest.raises(NotificationDeliveryError):
        notification_deliver(notification_id=webhook.pk)
    webhook.refresh_from_db()
    assert webhook.status == "pending" and "timed out" in webhook.last_error


def test_the_email_subject_is_the_first_sentence_and_the_body_the_whole_text(
    sink, notifications, mailoutbox, settings
):
    email = notifications["email"]
    assert notification_deliver(notification_id=email.pk)

    [mail] = mailoutbox
    assert mail.subject == (
        "[CRITICAL] upstream_auth: upstream 401 on wf_notify, 3 since 2026-11-28T12:00:00+00:00"
        " (threshold 3 in 5 min)"
    )
    assert mail.body == email.payload["text"]
    assert (mail.from_email, mail.to) == (settings.DEFAULT_FROM_EMAIL, ["ops@example.com"])


def test_a_long_workflow_id_is_cut_from_the_email_subject(sink, mailoutbox):
    workflow = "wf_" + "a" * 125  # the longest the audit log keeps
    record_attempts(3, at=T0, workflow=workflow)
    [email] = [n for n in alerts_evaluate(now=T0 + timedelta(minutes=1)) if n.channel == "email"]
    assert notification_deliver(notification_id=email.pk)

    [mail] = mailoutbox
    assert mail.subject == f"[CRITICAL] upstream_auth: upstream 401 on {workflow}"[:150]
    assert len(mail.subject) == 150 and workflow in mail.body


def test_the_log_channel_warns_while_firing_and_informs_when_resolved(sink, caplog):
    caplog.set_level(logging.INFO, logger="audit.alerting.notify")
    attempts = record_attempts(3, at=T0, workflow="wf_notify")
    firing = {n.channel: n for n in alerts_evaluate(now=T0 + timedelta(minutes=1))}
    alerts_evaluate(now=T0 + timedelta(minutes=6))
    resolved = {n.channel: n for n in alerts_evaluate(now=T0 + timedelta(minutes=16))}

    for notification in (firing["log"], resolved["log"]):
        assert notification_deliver(notification_id=notification.pk)
    records = [r for r in caplog.records if r.getMessage().startswith("ALERT ")]
    assert [(r.levelname, r.getMessage()) for r in records] == [
        ("WARNING", "ALERT " + firing["log"].payload["text"]),
        ("INFO", "ALERT " + resolved["log"].payload["text"]),
    ]
    # In the JSON log, the ids the failing callers were shown, to find their requests.
    assert records[0].sample_request_ids == [a.request_id for a in reversed(attempts)]


def test_a_failing_webhook_records_the_error_and_when_to_try_again(sink, notifications, caplog):
    caplog.set_level(logging.WARNING, logger="audit.alerting.notify")
    sink.expect_request("/hook").respond_with_response(Response("down", status=503))
    webhook = notifications["webhook"]
    moment = datetime.now(UTC)

    with time_machine.travel(moment, tick=False), pytest.raises(NotificationDeliveryError) as exc:
        notification_deliver(notification_id=webhook.pk)

    countdown = exc.value.countdown
    error = "HTTPError: HTTP Error 503: SERVICE UNAVAILABLE"
    webhook.refresh_from_db()
    assert (webhook.status, webhook.attempts, webhook.last_error) == ("pending", 1, error)
    assert webhook.claimed_until == moment + timedelta(seconds=countdown - 1)
    assert webhook.queued_at == moment + timedelta(seconds=countdown)
    assert webhook.sent_at is None
    assert f"Alert notification {webhook.pk} failed: {error}" in caplog.messages


def test_the_last_failure_marks_the_notification_failed(sink, notifications):
    sink.expect_request("/hook").respond_with_response(Response("gone", status=410))
    webhook = notifications["webhook"]
    AlertNotification.objects.filter(pk=webhook.pk).update(attempts=MAX_ATTEMPTS - 1)
    moment = datetime.now(UTC)

    with time_machine.travel(moment, tick=False):
        assert notification_deliver(notification_id=webhook.pk) is False

    webhook.refresh_from_db()
    assert (webhook.status, webhook.attempts) == ("failed", MAX_ATTEMPTS)
    assert webhook.last_error == "HTTPError: HTTP Error 410: GONE"
    assert notifications_redeliver() == 0  # never queued again
    assert webhook.queued_at > moment and webhook.sent_at is None


@pytest.mark.parametrize(
    ("failures", "shortest", "longest"),
    [(1, 4, 6), (2, 8, 12), (3, 16, 24), (7, 256, 384), (8, 480, 720), (20, 480, 720)],
)
def test_retry_delays_double_from_5_seconds_up_to_10_minutes_give_or_take_a_fifth(
    monkeypatch, failures, shortest, longest
):
    monkeypatch.setattr(random, "uniform", lambda low, high: low)
    assert notify.retry_delay(failures) == shortest
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    assert notify.retry_delay(failures) == longest


def test_a_sent_notification_records_when_and_holds_no_claim(sink, notifications):
    sink.expect_request("/hook").respond_with_data("ok")
    webhook = notifications["webhook"]
    moment = datetime.now(UTC)
    with time_machine.travel(moment, tick=False):
        assert notification_deliver(notification_id=webhook.pk)

    webhook.refresh_from_db()
    assert (webhook.status, webhook.sent_at, webhook.claimed_until) == ("sent", moment, None)


def test_an_unreachable_mail_server_leaves_the_email_to_retry(sink, notifications, settings):
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 2
    email = notifications["email"]

    with pytest.raises(NotificationDeliveryError):
        notification_deliver(notification_id=email.pk)
    email.refresh_from_db()
    assert (email.status, email.sent_at) == ("pending", None)
    assert email.last_error.startswith("ConnectionRefusedError: ")


def test_a_receivers_long_error_is_kept_to_2000_characters(sink, notifications):
    """The reason phrase of a 503 is the receiver's to choose, however long."""
    reason = "Service Unavailable: " + "maintenance window " * 200
    sink.expect_request("/hook").respond_with_response(Response("", status=f"503 {reason}"))
    webhook = notifications["webhook"]
    with pytest.raises(NotificationDeliveryError):
        notification_deliver(notification_id=webhook.pk)

    webhook.refresh_from_db()
    assert webhook.last_error == f"HTTPError: HTTP Error 503: {reason}"[:2000]
    assert len(webhook.last_error) == 2000


def test_a_sweep_queues_at_most_its_limit_and_the_rest_next_time(
    sink, notifications, monkeypatch, django_capture_on_commit_callbacks
):
    published = []
    monkeypatch.setattr(
        notify, "publish_safely", lambda task, **kw: published.append((task, kw)) or True
    )
    AlertNotification.objects.update(queued_at=None)  # all three lost

    with django_capture_on_commit_callbacks(execute=True):
        assert notifications_redeliver(limit=2) == 2
        assert notifications_redeliver(limit=2) == 1
        assert notifications_redeliver(limit=2) == 0
    # The task a worker runs, by the name it is registered under.
    assert {task for task, _ in published} == {deliver_notification.name}
    assert sorted(kw["notification_id"] for _, kw in published) == sorted(
        n.pk for n in notifications.values()
    )


def test_a_second_worker_arriving_during_the_send_sends_nothing(sink, notifications):
    """The claim outlasts the send: a duplicate task run meanwhile finds the row held."""
    log = notifications["log"]
    during_send = []

    class SecondWorker(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("ALERT "):
                held = AlertNotification.objects.get(pk=log.pk).claimed_until
                during_send.append((notification_deliver(notification_id=log.pk), held))

    moment = datetime.now(UTC)
    handler = SecondWorker()
    logging.getLogger("audit.alerting.notify").addHandler(handler)
    try:
        with time_machine.travel(moment, tick=False):
            assert notification_deliver(notification_id=log.pk) is True
    finally:
        logging.getLogger("audit.alerting.notify").removeHandler(handler)

    assert during_send == [(False, moment + timedelta(seconds=notify.CLAIM_SECONDS))]
    log.refresh_from_db()
    assert (log.status, log.attempts) == ("sent", 1)
