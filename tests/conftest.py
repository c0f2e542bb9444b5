import contextlib
import importlib
import logging
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker
from django.conf import settings
from django.core.cache import cache
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from rest_framework.test import APIClient

from audit.alerting.coalesce import EVALUATION_PENDING_KEY
from broker.redis_breaker import redis_breaker
from celery_app import app
from emulator.server import serve_in_thread
from tests import canaries
from tests.constants import CANARY_KEY, OTHER_WORKFLOW_ID, WORKFLOW_ID


@pytest.fixture
def ops_group(db):
    """The ops group, as the migrations create it. A transactional test's flush empties every
    table, auth_group included, so a later test re-creates it the migrations' own way."""
    from django.apps import apps as installed_apps
    from django.contrib.auth.models import Group

    for name, step in (("0009_alert_hygiene", "ops_group_create"),
                       ("0010_config_check", "ops_may_run_the_check")):  # fmt: skip
        getattr(importlib.import_module(f"audit.migrations.{name}"), step)(installed_apps, None)
    return Group.objects.get(name="ops")


def require_service(name: str, variable: str) -> str:
    """The URL of a real service; skips locally when it is not configured, fails in CI."""
    url = os.environ.get(variable, "")
    if not url:
        message = f"{name} is needed: set {variable}"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI must provide every service)")
        pytest.skip(f"{message} to run this test")
    return url


@pytest.fixture(scope="session")
def emulator():
    running = serve_in_thread(api_keys=[CANARY_KEY], workflows=[WORKFLOW_ID, OTHER_WORKFLOW_ID])
    yield running
    running.stop()


canaries.install()


@pytest.fixture(scope="session", autouse=True)
def canaries_never_leak():
    """Across the whole run, the canaries reach no log line, response, task message or database
    write (tests/canaries.py), whatever test put them there."""
    yield
    leaks = canaries.leaks()
    assert not leaks, f"Secrets leaked during the run: distinct canaries per place: {leaks}"


@pytest.fixture(autouse=True)
def _sweep_attached():
    # Each test: a test that reconfigures logging (Celery's loader runs django.setup() again,
    # which replaces the root logger's handlers) must not blind the sweep for the rest.
    root = logging.getLogger()
    if canaries.LOG_LINES not in root.handlers:
        # First: it must see each record before the redacting filter of settings.LOGGING
        # rewrites it, so that it finds what the code leaked, not what that filter left.
        root.handlers.insert(0, canaries.LOG_LINES)
    seen = len(canaries.LOG_LINES.lines)
    probe = logging.getLogger("tests.canaries")
    probe.setLevel(logging.INFO)  # whatever level an earlier test left the root logger at
    probe.info("The canary sweep is watching.")
    assert len(canaries.LOG_LINES.lines) == seen + 1, "the canary sweep's handler sees nothing"
    yield


@pytest.fixture
def upstream(emulator, settings):
    """The emulator, reset, with the broker configured to use it and short timeouts."""
    emulator.state.reset()
    settings.OPENAI_API_KEY = CANARY_KEY
    settings.OPENAI_WORKFLOW_ID = WORKFLOW_ID
    settings.OPENAI_BASE_URL = emulator.base_url
    settings.CHATKIT_CONNECT_TIMEOUT = 0.5
    settings.CHATKIT_READ_TIMEOUT = 1.0
    settings.CHATKIT_TOTAL_TIMEOUT = 2.0
    yield emulator
    # Every secret this test minted joins the run's canaries.
    canaries.MINTED_SECRETS.update(
        session["client_secret"] for session in emulator.state.sessions.values()
    )


@pytest.fixture
def in_test_transaction():
    """Requests served by the real WSGI handler inside the test's transaction: as Django's test
    client does, the handler must not close the test's database connection after each one."""
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    yield
    for signal in (request_started, request_finished):
        signal.connect(close_old_connections)


@pytest.fixture
def api_client() -> APIClient:
    return APIClient(enforce_csrf_checks=True)


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user(
        username="ada", email="ada@example.com", password="correct horse battery staple"
    )


@pytest.fixture
def logged_in_client(user) -> APIClient:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    return client


@pytest.fixture
def redis_worker():
    """A real worker thread consuming from the real Redis named by REDIS_URL."""
    require_service("Redis", "REDIS_URL")
    assert app.conf.broker_url.startswith("redis://"), "settings_test uses REDIS_URL as broker"
    # Tasks and coalescing flags left by earlier tests are not this test's business.
    app.control.purge()
    cache.delete(EVALUATION_PENDING_KEY)
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        yield


@pytest.fixture(autouse=True)
def _redis_breaker_reset():
    """A test that breaks Redis must not leave the next one skipping it."""
    yield
    redis_breaker.reset()


@pytest.fixture
def unreachable_cache(settings):
    """The Redis cache on a port where nothing listens: Redis down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }


@contextlib.contextmanager
def broker_at(url: str):
    """The suite's Celery app publishes to `url` meanwhile, with production's short timeouts."""
    previous = app.conf.broker_url, app.conf.broker_transport_options
    app.conf.broker_url = url
    app.conf.broker_transport_options = settings.REDIS_BROKER_TRANSPORT_OPTIONS
    # Celery keeps its connection and producer pools for the life of the process; dropping
    # them (what Celery itself does after a fork) makes the next publish use the new URL.
    app._after_fork()
    try:
        yield
    finally:
        app.conf.broker_url, app.conf.broker_transport_options = previous
        app._after_fork()


CHROMIUM = "/usr/bin/chromium"
# As the machine's notes advise: no background traffic on a machine without internet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def chromium(live_server, monkeypatch):
    """Debian's Chromium driven by Playwright (never a downloaded browser); closed before the
    live server stops, so no request thread lingers."""
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the test's own ORM calls are
    # still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def suite_database_url() -> str:
    """The URL of the database this run's tests use (PostgreSQL), for a server or worker
    process started by a test."""
    database = settings.DATABASES["default"]
    return (
        f"postgres://{database['USER']}:{database['PASSWORD']}@{database['HOST']}:"
        f"{database['PORT'] or 5432}/{database['NAME']}"
    )


def wait_for(predicate, *, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def pytest_sessionfinish(session, exitstatus):
    # A worker thread may still hold the SQLite test database when Django deletes it, which
    # leaves its -wal and -shm files behind; they belong to this run only (the name has our pid).
    name = settings.DATABASES["default"].get("TEST", {}).get("NAME")
    if name and settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        for suffix in ("-wal", "-shm"):
            Path(f"{name}{suffix}").unlink(missing_ok=True)
