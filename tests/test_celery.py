"""Celery wiring against a real Redis and a real worker."""

import logging
import socket

import pytest
from celery import Celery
from django.conf import settings
from rest_framework.test import APIClient

from celery_app import enqueue_on_commit
from tests.conftest import wait_for


@pytest.mark.django_db(transaction=True)
def test_logout_cancels_live_sessions_through_a_real_worker(redis_worker, upstream, user):
    client = APIClient()
    client.force_login(user)
    assert client.post("/api/chatkit/session/").status_code == 200
    [session_id] = list(upstream.state.sessions)

    client.logout()  # django.contrib.auth.logout, as any logout view calls it

    assert wait_for(lambda: upstream.state.get_session(session_id)["status"] == "cancelled")


def _silent_server() -> tuple[socket.socket, int]:
    """Completes TCP handshakes (the kernel does) and never answers, like a hung Redis."""
    server = socket.create_server(("127.0.0.1", 0), backlog=16)
    return server, server.getsockname()[1]


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_enqueue_with_a_dead_broker_logs_and_returns(
    kind, caplog, django_capture_on_commit_callbacks
):
    server, port = _silent_server() if kind == "silent" else (None, 9)
    dead = Celery("dead", broker=f"redis://127.0.0.1:{port}/0", set_as_current=False)
    dead.conf.update(
        broker_transport_options=settings.REDIS_BROKER_TRANSPORT_OPTIONS,
        broker_connection_timeout=settings.CELERY_BROKER_CONNECTION_TIMEOUT,
        task_publish_retry_policy=settings.CELERY_TASK_PUBLISH_RETRY_POLICY,
    )

    @dead.task(name=f"dead_{kind}.noop")
    def noop() -> None: ...

    caplog.set_level(logging.WARNING)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            enqueue_on_commit(noop)
    finally:
        if server:
            server.close()
    assert f"Could not enqueue dead_{kind}.noop" in caplog.text
