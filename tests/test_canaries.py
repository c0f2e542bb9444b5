"""The run-wide canary sweep (tests/canaries.py) sees what it claims to see, and one ordinary day
of the service, with a leaky upstream, leaves the canaries nowhere an operator can read."""

import json
import secrets

import pytest
from django.db import connection

from audit.alerting.engine import alerts_evaluate
from audit.alerting.notify import DELIVER_TASK, notification_deliver
from audit.models import AlertNotification, SessionAttempt
from celery_app import publish_safely
from tests import canaries
from tests.constants import CANARY_KEY

URL = "/api/chatkit/session/"
pytestmark = pytest.mark.django_db


def test_the_sweep_records_responses_task_messages_and_database_writes(client):
    probe = str(secrets.randbelow(10**15) + 10**15)

    client.get(f"/{probe}")  # a 404 page
    # A notification that does not exist: whichever worker gets it finds nothing to send.
    assert publish_safely(DELIVER_TASK, notification_id=int(probe))
    with connection.cursor() as cursor:
        cursor.execute("UPDATE audit_heartbeat SET name = %s WHERE name = %s", [probe, probe])

    assert any(probe in response for response in canaries.RESPONSES)
    assert any(probe in message for message in canaries.PUBLISHED)
    assert any(probe in write for write in canaries.WRITES)


def test_a_minted_secret_counts_as_leaked_anywhere_but_its_own_answer(client, upstream):
    answer = client.post(URL, content_type="application/json").json()
    secret = answer["client_secret"]
    canaries.MINTED_SECRETS.add(secret)
    assert canaries.leaks() == {}  # the answer that carried it is where it belongs

    canaries.WRITES.append(f"['{secret}']")
    try:
        assert canaries.leaks() == {"database writes": 1}
    finally:
        canaries.WRITES.pop()


def test_a_day_with_an_upstream_that_echoes_the_key_leaks_it_nowhere(
    admin_client, client, upstream, httpserver, settings
):
    """Successes, refreshes and 401s whose upstream message quotes the key verbatim; the alert
    they fire, its notification payload sent to a webhook; then the pages an operator reads."""
    settings.ALERT_WEBHOOK_URL = httpserver.url_for("/hook")
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    first = client.post(URL, content_type="application/json").json()["client_secret"]
    refreshed = client.post(
        URL, data={"current_client_secret": first}, content_type="application/json"
    )
    assert refreshed.status_code == 200
    leaky = json.dumps(
        {"error": {"message": f"Incorrect API key provided: {CANARY_KEY}", "code": CANARY_KEY}}
    )
    upstream.state.push_faults([{"status": 401, "body": leaky}] * 3)
    for _ in range(3):
        refused = client.post(URL, content_type="application/json")
        assert refused.status_code == 502
        assert refused.json()["error"]["request_id"].startswith("brk_")

    alerts_evaluate()
    [webhook] = AlertNotification.objects.filter(channel="webhook")
    assert notification_deliver(notification_id=webhook.pk)
    [(delivered, _)] = httpserver.log
    assert b"upstream_auth" in delivered.data and CANARY_KEY.encode() not in delivered.data

    pages = [
        "/admin/",
        "/admin/audit/sessionattempt/",
        "/admin/audit/alert/",
        "/admin/audit/alertnotification/",
        *(f"/admin/audit/sessionattempt/{pk}/change/" for pk in _attempt_ids()),
        f"/admin/audit/alert/{webhook.alert_id}/change/",
        f"/admin/audit/alertnotification/{webhook.pk}/change/",
    ]
    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, page
        assert CANARY_KEY not in response.content.decode(), page
        assert first not in response.content.decode(), page
    # The sweep itself says so for everything above, and for the database writes and messages.
    canaries.MINTED_SECRETS.update(session["client_secret"] for session in _sessions(upstream))
    assert canaries.leaks() == {}


def _attempt_ids() -> list[int]:
    ids = list(SessionAttempt.objects.values_list("pk", flat=True))
    assert len(ids) == 5
    return ids


def _sessions(upstream) -> list[dict]:
    return list(upstream.state.sessions.values())
