"""End to end: API → audit → Celery on real Redis → real worker → webhook over a real socket."""

import json
import shutil
import socket
import subprocess
import time
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import Alert, AttemptMinuteStat, PendingMinute, SessionAttempt
from audit.tasks import aggregate_stats, sweep_alerts
from celery_app import app
from tests.conftest import broker_at, require_service, wait_for

URL = "/api/chatkit/session/"


@pytest.fixture
def webhook_sink(httpserver, settings):
    settings.ALERT_WEBHOOK_URL = httpserver.url_for("/hook")
    settings.ALERT_EMAIL_TO = []
    settings.ALERT_RULES = {}
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    return httpserver


def received(sink) -> list[dict]:
    return [json.loads(request.data) for request, _ in sink.log]


def fail_with_401(settings, n: int) -> None:
    settings.OPENAI_API_KEY = "sk-not-the-emulators-key-" + "x" * 20
    client = APIClient()
    for _ in range(n):
        assert client.post(URL).json()["error"]["code"] == "upstream_auth_failed"


@pytest.mark.django_db(transaction=True)
def test_repeated_401s_fire_once_then_resolve_once(redis_worker, upstream, webhook_sink, settings):
    fail_with_401(settings, 3)

    assert wait_for(lambda: len(webhook_sink.log) >= 1)
    time.sleep(1)  # room for a wrongly duplicated delivery to show up
    [firing] = received(webhook_sink)
    assert (firing["status"], firing["rule"], firing["status_code"]) == (
        "firing",
        "upstream_auth",
        401,
    )
    assert firing["count"] == 3

    # Past the 5-minute window the condition is false; resolution waits for 10 quiet minutes.
    start = timezone.now()
    with time_machine.travel(start + timedelta(minutes=6)):
        sweep_alerts.delay()
        assert wait_for(lambda: Alert.objects.get().condition_false_since is not None)
    with time_machine.travel(start + timedelta(minutes=17)):
        sweep_alerts.delay()
        assert wait_for(lambda: len(webhook_sink.log) >= 2)
        time.sleep(1)
    assert [body["status"] for body in received(webhook_sink)] == ["firing", "resolved"]
    assert Alert.objects.get().state == "resolved"


# --- Redis stopped, then back --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivateRedis:
    """A redis-server of the test's own, so stopping it disturbs nobody else."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        assert wait_for(self._answers, seconds=10), "redis-server did not start"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture
def private_redis(settings):
    require_service("Redis", "REDIS_URL")  # CI provides redis-server; locally it may be absent
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed")
    redis = PrivateRedis()
    redis.start()
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": redis.url,
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    with broker_at(redis.url):
        yield redis
    if redis.process.poll() is None:
        redis.stop()


@pytest.mark.django_db(transaction=True)
def test_redis_down_loses_nothing_and_the_sweep_catches_up(
    private_redis, upstream, webhook_sink, settings
):
    from celery.contrib.testing.worker import start_worker

    settings.REDIS_PAUSE_SECONDS = 0.5
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        private_redis.stop()

        client = APIClient()
        assert client.post(URL).status_code == 200
        assert client.post(URL).status_code == 200
        fail_with_401(settings, 3)
        assert SessionAttempt.objects.count() == 5
        assert webhook_sink.log == []

        private_redis.start()
        time.sleep(0.6)  # the pause after the last Redis failure is over: this process asks again
        aggregate_stats.delay()  # what beat sends every minute
        sweep_alerts.delay()

        assert wait_for(lambda: len(webhook_sink.log) >= 1, seconds=40)
        assert wait_for(lambda: not PendingMinute.objects.exists())
    [firing] = received(webhook_sink)
    assert (firing["status"], firing["count"]) == ("firing", 3)
    buckets = AttemptMinuteStat.objects.all()
    assert sum(bucket.attempts for bucket in buckets) == 5
    assert sum(b.attempts for b in buckets if b.status_code == 401) == 3
