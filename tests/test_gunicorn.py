"""The production server as docker-compose and `make run` start it: gunicorn with
gunicorn.conf.py, the PostgreSQL connection pool and group-committed audit rows, against the
emulator over real sockets. The rest of the suite runs Django in-process, without either.
"""

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.db import connection, connections
from django.test import Client

from audit.models import SessionAttempt
from tests.conftest import require_service, suite_database_url
from tests.constants import CANARY_KEY, WORKFLOW_ID

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def gunicorn_running(upstream, log: Path, **overrides: str):
    """A gunicorn worker with a pool of two connections; yields its base URL."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CHATKIT_"))},
        "DJANGO_SETTINGS_MODULE": "broker.settings",
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": suite_database_url(),
        "OPENAI_API_KEY": CANARY_KEY,
        "OPENAI_WORKFLOW_ID": WORKFLOW_ID,
        "OPENAI_BASE_URL": upstream.base_url,
        "CHATKIT_USER_ID_SECRET": settings.CHATKIT_USER_ID_SECRET,
        "CHATKIT_THROTTLE_USER": "",
        "CHATKIT_THROTTLE_ANON": "",
        "CHATKIT_THROTTLE_ADDRESS": "",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "DJANGO_SSL_REDIRECT": "false",  # plain http on loopback
        "WEB_CONCURRENCY": "1",
        "DB_POOL_MIN_SIZE": "1",
        "DB_POOL_MAX_SIZE": "2",
        "DB_POOL_TIMEOUT": "1",
        **overrides,
    }
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "broker.wsgi:application"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{base}/healthz", timeout=10)
                break
            except requests.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"gunicorn did not start:\n{log.read_text()}")
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def server(upstream, tmp_path):
    require_service("PostgreSQL", "DATABASE_URL")
    if connection.vendor != "postgresql":
        pytest.fail("DATABASE_URL must name PostgreSQL for this test")
    with gunicorn_running(upstream, tmp_path / "gunicorn.log") as base:
        yield base


@pytest.fixture
def silent_database():
    """A PostgreSQL that froze: it accepts connections (the kernel completes them) and never
    answers a byte. Yields its URL."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"postgres://broker:secret@127.0.0.1:{listener.getsockname()[1]}/broker"


def test_a_silent_database_costs_a_request_seconds_and_a_json_503(
    upstream, tmp_path, silent_database
):
    require_service("PostgreSQL", "DATABASE_URL")
    with gunicorn_running(upstream, tmp_path / "gunicorn.log", DATABASE_URL=silent_database,
                          DB_POOL_TIMEOUT="5") as base:  # fmt: skip
        live = requests.get(f"{base}/healthz", timeout=30)
        ready_started = time.monotonic()
        ready = requests.get(f"{base}/readyz", timeout=30)
        ready_seconds = time.monotonic() - ready_started
        started = time.monotonic()
        response = requests.post(f"{base}/api/chatkit/session/", json={}, timeout=30)
        seconds = time.monotonic() - started

    assert live.status_code == 200
    assert (ready.status_code, ready.json()["database"]) == (503, "unreachable")
    assert ready_seconds < 8
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "audit_unavailable"
    assert seconds < 8
    # The session minted before the row could not be written was cancelled upstream.
    [session] = upstream.state.sessions.values()
    assert session["status"] == "cancelled"


def test_slow_logged_in_sessions_do_not_hold_the_pool(server, upstream, django_user_model):
    # Eight logged-in callers at once, each upstream call 1.5 s, a pool of two connections that
    # a request waits 1 s for: only if each request hands its connection back while it waits
    # on the upstream do all eight get a session.
    user = django_user_model.objects.create_user(username="ada")
    browser = Client()
    browser.force_login(user)
    csrf = secrets.token_hex(16)
    cookies = {settings.SESSION_COOKIE_NAME: browser.cookies[settings.SESSION_COOKIE_NAME].value,
               settings.CSRF_COOKIE_NAME: csrf}  # fmt: skip
    upstream.state.push_faults([{"ok": True, "latency_ms": 1500}] * 8)

    def mint(_):
        return requests.post(
            f"{server}/api/chatkit/session/",
            json={},
            cookies=cookies,
            headers={"X-CSRFToken": csrf},
            timeout=30,
        )

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(mint, range(8)))

    assert [r.status_code for r in responses] == [200] * 8, responses[0].text
    secrets_given = {r.json()["client_secret"] for r in responses}
    assert len(secrets_given) == 8
    rows = SessionAttempt.objects.filter(outcome="success", user=user)
    assert rows.count() == 8
    assert {row.session_id for row in rows} == set(upstream.state.sessions)


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def test_one_worker_serves_others_while_a_request_waits_on_the_upstream(server, upstream):
    # One worker (gevent's, the default): every wait must let the worker's other requests run.
    upstream.state.push_faults([{"ok": True, "latency_ms": 3000}])
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(requests.post, f"{server}/api/chatkit/session/", json={}, timeout=30)
        wait_for(lambda: upstream.state.counters["requests"] == 1, "the slow call upstream")
        quick = requests.post(f"{server}/api/chatkit/session/", json={}, timeout=30)
        pending = not slow.done()

        assert quick.status_code == 200
        assert pending  # answered while the first still waited on the upstream
        assert slow.result().status_code == 200
    assert SessionAttempt.objects.filter(outcome="success").count() == 2


def statements_waiting_on_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def test_one_worker_serves_others_while_a_request_waits_on_postgresql(server, upstream):
    requests.post(f"{server}/api/chatkit/session/", json={}, timeout=30)  # connects the writer
    blocker = connections.create_connection("default")
    try:
        with blocker.cursor() as cursor:
            # The audit statement's minute marks wait on this lock.
            cursor.execute("BEGIN; LOCK TABLE audit_pendingminute IN ACCESS EXCLUSIVE MODE")
            with ThreadPoolExecutor(1) as pool:
                post = pool.submit(
                    requests.post, f"{server}/api/chatkit/session/", json={}, timeout=30
                )
                wait_for(lambda: statements_waiting_on_a_lock() == 1, "the audit row waiting")
                live = requests.get(f"{server}/healthz", timeout=30)
                pending = not post.done()
                cursor.execute("ROLLBACK")

                assert live.status_code == 200
                assert pending  # answered while the audit row waited on PostgreSQL
                assert post.result().status_code == 200
    finally:
        blocker.close()
    assert SessionAttempt.objects.filter(outcome="success").count() == 2


def test_a_burst_of_anonymous_sessions_is_audited_row_for_row(server, upstream):
    def mint(_):
        return requests.post(f"{server}/api/chatkit/session/", json={}, timeout=30)

    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(mint, range(200)))

    assert [r.status_code for r in responses] == [200] * 200
    assert SessionAttempt.objects.filter(outcome="success").count() == 200
    assert set(SessionAttempt.objects.values_list("session_id", flat=True)) == set(
        upstream.state.sessions
    )


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test's own, to freeze (SIGSTOP) and thaw; yields (URL, process)."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is needed (CI must provide every service)")
        pytest.skip("redis-server is needed to run this test")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        process.wait(timeout=10)


def test_a_frozen_redis_costs_a_mint_little_and_loses_no_row(upstream, tmp_path, private_redis):
    """Redis accepts connections but never answers: minting and auditing go on."""
    require_service("PostgreSQL", "DATABASE_URL")
    url, redis_server = private_redis

    def mint(fault: dict | None = None) -> tuple[int, float]:
        if fault:
            upstream.state.push_faults([fault])
        started = time.monotonic()
        response = requests.post(f"{base}/api/chatkit/session/", json={}, timeout=30)
        return response.status_code, time.monotonic() - started

    redis = {"REDIS_URL": url, "CELERY_BROKER_URL": url, "CHATKIT_THROTTLE_ADDRESS": "1000/min"}
    with gunicorn_running(upstream, tmp_path / "gunicorn.log", **redis) as base:
        mint()  # the worker's first request pays for imports and connections
        # Normal times, with Redis well: a mint, and a failure (which asks for an alert).
        normal = [mint() for _ in range(3)]
        normal_failure = mint({"status": 401})
        redis_server.send_signal(signal.SIGSTOP)
        try:
            frozen = mint()
            frozen_failure = mint({"status": 401})
            later = [mint() for _ in range(5)]  # within REDIS_PAUSE_SECONDS (5 s)
        finally:
            redis_server.send_signal(signal.SIGCONT)

    usual = sorted(seconds for _, seconds in normal)[1]
    assert frozen[0] == 200 and frozen[1] < usual + 0.5, (frozen, normal)
    assert frozen_failure[0] == 502 and frozen_failure[1] < normal_failure[1] + 2
    assert all(status == 200 and seconds < usual + 0.5 for status, seconds in later), later
    # One timeout, then Redis is skipped for the pause instead of costing every request one.
    log = (tmp_path / "gunicorn.log").read_text()
    assert log.count("Redis failed") == 1, log
    assert SessionAttempt.objects.filter(outcome="success").count() == 1 + 3 + 1 + 5
    assert SessionAttempt.objects.filter(api_error_code="upstream_auth_failed").count() == 2
