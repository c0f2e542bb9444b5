"""Beat: it starts on a fresh checkout, its schedule names real tasks, and a dead one shows."""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import time_machine
from django.conf import settings
from django.db import OperationalError
from django.utils import timezone

from audit.alerting.sweep import SWEEP_HEARTBEAT, alerts_sweep
from audit.models import AttemptMinuteStat, ErrorReport, Heartbeat, SessionAttempt
from audit.services import session_attempt_record
from celery_app import app
from tests.conftest import require_service, wait_for
from tests.factories import record_attempts
from tests.test_project import ROOT


def test_beat_starts_when_the_folder_of_its_schedule_does_not_exist(tmp_path):
    schedule = tmp_path / "var" / "not-yet" / "celerybeat-schedule"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "broker.settings_test"}
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "beat", "--schedule", str(schedule)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and beat.poll() is None:
            if list(schedule.parent.glob("celerybeat-schedule*")):
                break
            time.sleep(0.1)
        time.sleep(0.5)
        assert beat.poll() is None, beat.communicate()[0]  # still running
    finally:
        beat.send_signal(signal.SIGTERM)
        output = beat.communicate(timeout=20)[0]
    assert list(schedule.parent.glob("celerybeat-schedule*")), output
    assert "FileNotFoundError" not in output


def test_every_scheduled_task_is_registered():
    app.loader.import_default_modules()
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert scheduled == {
        "audit.tasks.aggregate_stats",
        "audit.tasks.sweep_alerts",
        "audit.tasks.send_error_report",
        "audit.tasks.prune_audit_log",
    }
    assert scheduled <= set(app.tasks)


def test_every_scheduled_run_expires_before_the_next_is_due():
    """A backlog after a worker outage must not replay stale runs one after another."""
    minute = {"aggregate-stats", "sweep-alerts"}
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        expires = entry["options"]["expires"]
        assert 0 < expires < (60 if name in minute else 24 * 3600), name


@pytest.mark.django_db
def test_the_scheduler_check_reports_a_stopped_scheduler(client):
    assert client.get("/healthz/scheduler").json() == {
        "status": "unknown",
        "last_run": None,
        "age_seconds": None,
    }
    assert client.get("/healthz/scheduler").status_code == 503  # no sweep has run yet

    swept = timezone.now()
    with time_machine.travel(swept, tick=False):
        alerts_sweep()
    with time_machine.travel(swept + timedelta(minutes=5), tick=False):
        scheduler = client.get("/healthz/scheduler")
    assert scheduler.status_code == 200
    assert scheduler.json() == {"status": "ok", "last_run": swept.isoformat(), "age_seconds": 300}

    with time_machine.travel(swept + timedelta(minutes=5, seconds=1), tick=False):
        scheduler = client.get("/healthz/scheduler")
        live, ready = client.get("/healthz"), client.get("/readyz")
    assert scheduler.status_code == 503 and scheduler.json()["age_seconds"] == 301
    # The web itself is healthy: a load balancer must keep sending it traffic.
    assert (live.status_code, ready.status_code) == (200, 200)


@pytest.mark.django_db
def test_liveness_and_readiness(client):
    assert (client.get("/healthz").status_code, client.get("/healthz").json()) == (
        200,
        {"status": "ok"},
    )
    ready = client.get("/readyz")
    assert (ready.status_code, ready.json()) == (
        200,
        {"status": "ok", "database": "ok", "cache": "ok"},
    )


@pytest.mark.django_db
def test_readiness_is_degraded_not_failed_without_the_cache(client, unreachable_cache):
    ready = client.get("/readyz")
    assert (ready.status_code, ready.json()) == (
        200,
        {"status": "degraded", "database": "ok", "cache": "unreachable"},
    )


@pytest.mark.django_db
def test_readiness_fails_without_the_database(client, monkeypatch):
    from broker import views

    def broken_cursor():
        raise OperationalError("connection refused")

    monkeypatch.setattr(views.connection, "cursor", broken_cursor)
    ready = client.get("/readyz")
    assert (ready.status_code, ready.json()) == (
        503,
        {"status": "error", "database": "unreachable"},
    )
    assert client.get("/healthz").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_each_scheduled_task_runs_on_a_real_worker(redis_worker, settings, mailoutbox):
    """What beat sends, through real Redis to a real worker, on real PostgreSQL in CI."""
    require_service("PostgreSQL", "DATABASE_URL")
    settings.ALERT_EMAIL_TO = ["ops@example.com"]
    settings.ERROR_REPORT_PERIOD = "daily"
    now = timezone.now()
    expired = record_attempts(
        1, at=now - timedelta(days=settings.AUDIT_RETENTION_DAYS + 1), workflow="wf_beat"
    )
    yesterday = [
        session_attempt_record(
            outcome="success",
            status_code=200,
            workflow_id="wf_beat",
            user_ref=f"u_{hours}",
            anonymous=False,
            started_at=now - timedelta(hours=hours),
            latency_ms=120,
        )
        for hours in (12, 24, 36)
    ]

    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        app.send_task(entry["task"])

    assert wait_for(lambda: Heartbeat.objects.filter(name=SWEEP_HEARTBEAT).exists())
    assert wait_for(lambda: not SessionAttempt.objects.filter(pk=expired[0].pk).exists())
    assert wait_for(lambda: ErrorReport.objects.filter(emailed_at__isnull=False).exists())
    report = ErrorReport.objects.get()
    assert report.period_end - report.period_start == timedelta(days=1)
    assert report.data["attempts"] == sum(
        report.period_start <= attempt.created_at < report.period_end for attempt in yesterday
    )
    assert [message.body for message in mailoutbox] == [report.text]
    assert AttemptMinuteStat.objects.filter(outcome="success").exists()  # the sweep aggregated


@pytest.mark.django_db
def test_the_scheduler_check_answers_503_when_the_database_is_unreachable(client, monkeypatch):
    def unreachable(**kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr("broker.views.heartbeat_status", unreachable)
    response = client.get("/healthz/scheduler")
    assert response.status_code == 503
    assert response.json() == {"status": "error", "database": "unreachable"}
