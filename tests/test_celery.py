"""Celery wiring against a real Redis and a real worker."""

import logging
import socket

import pytest
from celery import Celery
from django.conf import settings
from rest_framework.test import APIClient

from celery_app import enqueue_on_commit, publish_safely
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
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            enqueue_on_commit(noop)  # must not raise into the request
        assert publish_safely(noop) is False
    finally:
        if server:
            server.close()
    assert len(callbacks) == 1  # published after commit, not before
    assert caplog.text.count(f"Could not enqueue dead_{kind}.noop") == 2


def test_publish_safely_puts_the_task_on_a_live_broker():
    live = Celery("live", broker="memory://", set_as_current=False)
    # Its own queue: locally the suite's app publishes to the same in-memory transport.
    live.conf.task_default_queue = "live-test"

    @live.task(name="live.echo")
    def echo(word: str) -> None: ...

    assert publish_safely(echo, word="hello") is True
    with live.connection_for_write() as connection:
        message = connection.SimpleQueue("live-test").get(timeout=2)
    assert message.headers["task"] == "live.echo"
    assert message.decode()[1] == {"word": "hello"}  # (args, kwargs, embed)
    message.ack()
