"""A Celery worker killed (SIGKILL) in the middle of a task: nothing is counted twice, and no
alert notification is lost or delivered twice.

Real processes throughout: a `celery worker` subprocess on the real Redis and the test's
PostgreSQL database, killed with its whole process group. To kill it at a known point, the test
holds a PostgreSQL table lock that the task needs for its next write, waits until the worker's
query is seen waiting on that lock, and kills it there: mid-transaction, after the task's first
writes. A webhook sink that never answers its first request does the same for a delivery.
"""

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.cache import cache
from django.db import connection, transaction
from django.utils import timezone

from audit.alerting.coalesce import EVALUATION_PENDING_KEY
from audit.alerting.notify import REQUEUE_SECONDS
from audit.models import Alert, AlertNotification, AttemptMinuteStat, PendingMinute
from audit.stats import attempt_stats_aggregate
from audit.tasks import aggregate_stats, deliver_notification, sweep_alerts
from celery_app import app
from tests.conftest import require_service, suite_database_url, wait_for
from tests.factories import record_attempts
from tests.test_project import ROOT

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


class WorkerProcess:
    """`celery -A celery_app worker` in a process group of its own, logging to a file."""

    def __init__(self, folder, webhook_url: str) -> None:
        self.folder = folder
        self.starts = 0
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "broker.settings_test",
            "DATABASE_URL": suite_database_url(),
            "ALERT_WEBHOOK_URL": webhook_url,
            "ALERT_EMAIL_TO": "",
        }
        self.process = None

    @property
    def log_path(self):
        return self.folder / f"worker-{self.starts}.log"

    def log(self) -> str:
        return self.log_path.read_text()

    def start(self) -> None:
        self.starts += 1
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool", "solo",
                 "--loglevel", "INFO", "--without-gossip", "--without-mingle"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        assert wait_for(lambda: "ready." in self.log(), seconds=30), self.log()

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.kill()


class HoldFirstDelivery(BaseHTTPRequestHandler):
    """Takes every POST; leaves the first one unanswered until the sink is released."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        sink = self.server
        with sink.lock:
            sink.received.append(body)
            first = len(sink.received) == 1
        if first:
            sink.release.wait(30)
        try:
            self.send_response(200)
            self.end_headers()
            sink.answered.append(body)
        except OSError:
            pass  # the sender died while we held it

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def sink():
    server = ThreadingHTTPServer(("127.0.0.1", 0), HoldFirstDelivery)
    server.lock, server.release = threading.Lock(), threading.Event()
    server.received, server.answered = [], []
    server.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()


@pytest.fixture
def worker(tmp_path, sink, settings):
    require_service("PostgreSQL", "DATABASE_URL")
    require_service("Redis", "REDIS_URL")
    if connection.vendor != "postgresql":
        pytest.fail("DATABASE_URL must name PostgreSQL for this test")
    settings.ALERT_WEBHOOK_URL = sink.url  # this process creates the notification rows too
    settings.ALERT_EMAIL_TO = []
    app.control.purge()
    cache.delete(EVALUATION_PENDING_KEY)
    process = WorkerProcess(tmp_path, sink.url)
    yield process
    process.stop()


def waiting_on_a_lock(table: str) -> bool:
    """Whether another backend's write to `table` is blocked on a lock this test holds."""
    with connection.cursor() as cursor:
        # Within a transaction PostgreSQL keeps serving the first snapshot of its statistics.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock' AND query ILIKE %s",
            [f"%INSERT INTO %{table}%"],
        )
        return cursor.fetchone()[0] > 0


def kill_while_writing(worker: WorkerProcess, table: str) -> None:
    """Hold `table` against writes, start the worker on the tasks queued so far, kill it at its
    blocked write, then let go. PostgreSQL rolls the dead worker's transaction back: it never
    sent COMMIT."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {table} IN SHARE MODE")
        worker.start()
        assert wait_for(lambda: waiting_on_a_lock(table), seconds=30), worker.log()
        worker.kill()


def test_aggregation_killed_mid_transaction_counts_each_attempt_once(worker):
    start = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=3)
    record_attempts(4, at=start, workflow="wf_day", status=200, outcome="success")
    record_attempts(1, at=start + timedelta(seconds=10), workflow="wf_day")
    attempt_stats_aggregate()  # this minute is folded already: 5 attempts
    record_attempts(3, at=start + timedelta(seconds=20), workflow="wf_day", status=200,
                    outcome="success")  # fmt: skip
    record_attempts(2, at=start + timedelta(seconds=30), workflow="wf_day")

    aggregate_stats.delay()
    kill_while_writing(worker, "audit_attemptminutestat")
    # The dead worker's claim of the minute is rolled back: the mark is there for the next run.
    assert wait_for(lambda: PendingMinute.objects.exists())

    worker.start()
    aggregate_stats.delay()
    assert wait_for(lambda: not PendingMinute.objects.exists())
    counted = {
        (stat.outcome, stat.status_code): stat.attempts for stat in AttemptMinuteStat.objects.all()
    }
    assert counted == {("success", 200): 7, ("upstream_error", 401): 3}


def test_evaluation_killed_mid_transaction_fires_once_and_notifies_once(worker, sink):
    sink.release.set()  # this test's webhook answers every delivery at once
    start = timezone.now() - timedelta(seconds=30)
    record_attempts(5, at=start, workflow="wf_day", status=200, outcome="success")
    # Three 401s are what the default upstream_auth rule fires on; the first failure asks for
    # an evaluation, which is killed as it writes the notifications.
    record_attempts(3, at=start + timedelta(seconds=5), workflow="wf_day")
    kill_while_writing(worker, "audit_alertnotification")
    assert wait_for(lambda: not waiting_on_a_lock("audit_alertnotification"))
    assert not Alert.objects.exists()  # rolled back with the notifications

    worker.start()
    cache.delete(EVALUATION_PENDING_KEY)  # the killed run's coalescing flag; it would expire
    sweep_alerts.delay()  # what beat sends every minute
    assert wait_for(lambda: len(sink.answered) == 1)

    [alert] = Alert.objects.all()
    assert (alert.rule, alert.state, alert.count) == ("upstream_auth", "firing", 3)
    notifications = AlertNotification.objects.all()
    assert sorted(n.channel for n in notifications) == ["log", "webhook"]
    assert all(n.status == "sent" for n in notifications)
    assert [body["count"] for body in sink.received] == [3]


def test_a_delivery_killed_mid_send_is_sent_again_under_the_same_id_and_then_never(worker, sink):
    worker.start()
    record_attempts(3, at=timezone.now() - timedelta(seconds=30), workflow="wf_day")
    assert wait_for(lambda: len(sink.received) == 1)  # the worker is inside its POST
    worker.kill()
    webhook = AlertNotification.objects.get(channel="webhook")
    assert (webhook.status, webhook.attempts) == ("pending", 1)  # claimed, never confirmed
    assert sink.answered == []

    # What ten minutes do: the dead worker's claim has expired, and its task was queued long
    # enough ago to be taken for lost, so the sweep queues another.
    AlertNotification.objects.filter(pk=webhook.pk).update(
        claimed_until=timezone.now() - timedelta(seconds=1),
        queued_at=timezone.now() - timedelta(seconds=REQUEUE_SECONDS + 1),
    )
    worker.start()
    sweep_alerts.delay()
    assert wait_for(lambda: len(sink.answered) == 1)
    webhook.refresh_from_db()
    assert (webhook.status, webhook.attempts) == ("sent", 2)

    # The killed worker's own message comes back after Redis's visibility timeout (an hour);
    # played now, like another sweep, it finds the row sent and sends nothing.
    deliver_notification.delay(notification_id=webhook.pk)
    sweep_alerts.delay()
    # This worker's tasks: the sweep, the delivery it queued, the replayed one, the sweep.
    assert wait_for(lambda: worker.log().count(" succeeded in ") == 4)
    assert len(sink.received) == 2 and len(sink.answered) == 1
    # Receivers drop repeats by the payload's id: one notification, delivered once.
    assert len({body["id"] for body in sink.received}) == 1
    assert AlertNotification.objects.filter(status="sent").count() == 2  # log and webhook


def worker_log_count(worker: WorkerProcess, word: str) -> int:
    return worker.log().count(word)
