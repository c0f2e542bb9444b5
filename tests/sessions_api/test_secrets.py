"""The OpenAI key and minted client secrets never leave the server."""

import json
import logging

import pytest

from audit.models import SessionAttempt
from tests.constants import CANARY_KEY

pytestmark = pytest.mark.django_db

URL = "/api/chatkit/session/"


def audit_dump() -> str:
    return json.dumps(list(SessionAttempt.objects.values()), default=str)


@pytest.fixture
def all_logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


def test_key_and_secret_stay_out_of_logs_and_audit_on_success(api_client, upstream, all_logs):
    response = api_client.post(URL)
    secret = response.json()["client_secret"]

    for leaked in (CANARY_KEY, secret):
        assert leaked not in all_logs.text
        assert leaked not in audit_dump()
    assert CANARY_KEY not in response.content.decode()


@pytest.mark.parametrize("debug", [False, True])
def test_key_echoed_by_upstream_is_redacted_everywhere(
    api_client, upstream, settings, all_logs, debug
):
    settings.DEBUG = debug
    message = f"Incorrect API key provided: {CANARY_KEY}. Authorization: Bearer {CANARY_KEY}"
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}})
    upstream.state.push_faults([{"status": 401, "body": body, "content_type": "application/json"}])

    response = api_client.post(URL)

    assert response.status_code == 502
    assert CANARY_KEY not in response.content.decode()
    assert CANARY_KEY not in all_logs.text
    assert CANARY_KEY not in audit_dump()
    stored = SessionAttempt.objects.get().error_message
    assert stored.startswith("Incorrect API key provided: [REDACTED]")


def test_error_responses_never_echo_the_client_secret(api_client, upstream):
    secret = "ek_" + "9" * 40
    response = api_client.post(
        URL,
        data=json.dumps({"current_client_secret": secret, "workflow_id": 5}),
        content_type="application/json",
    )
    assert response.status_code == 400
    assert secret not in response.content.decode()
    assert secret not in audit_dump()
