"""Celery wiring against a real Redis and a real worker."""

import logging
import socket

import pytest
from rest_framework.test import APIClient

from celery_app import app, publish_safely
from tests.conftest import broker_at, wait_for


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


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_publishing_to_a_dead_broker_logs_and_returns(kind, caplog):
    server, port = _silent_server() if kind == "silent" else (None, 9)
    caplog.set_level(logging.WARNING)
    try:
        with broker_at(f"redis://127.0.0.1:{port}/0"):
            assert publish_safely("audit.tasks.sweep_alerts") is False  # never raises
    finally:
        if server:
            server.close()
    assert caplog.text.count("Could not enqueue audit.tasks.sweep_alerts") == 1


def test_publish_safely_puts_the_task_on_the_broker():
    app.control.purge()
    assert publish_safely("sessions_api.tasks.chatkit_sessions_cancel_for_user", user_id=7)
    with app.connection_for_write() as connection:
        message = connection.SimpleQueue(app.conf.task_default_queue).get(timeout=2)
    assert message.headers["task"] == "sessions_api.tasks.chatkit_sessions_cancel_for_user"
    assert message.decode()[1] == {"user_id": 7}  # (args, kwargs, embed)
    message.ack()


def test_every_task_published_by_name_is_registered():
    from audit.alerting.coalesce import EVALUATE_TASK
    from audit.alerting.notify import DELIVER_TASK
    from sessions_api.services import CANCEL_TASK

    app.loader.import_default_modules()
    assert {EVALUATE_TASK, DELIVER_TASK, CANCEL_TASK} <= set(app.tasks)
