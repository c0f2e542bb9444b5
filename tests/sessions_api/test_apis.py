import json

import pytest

from audit.models import SessionAttempt
from tests.constants import CANARY_KEY, OTHER_WORKFLOW_ID, WORKFLOW_ID

pytestmark = pytest.mark.django_db

URL = "/api/chatkit/session/"


def post(client, body=None, *, url=URL, raw=None, content_type="application/json", **extra):
    data = raw if raw is not None else json.dumps(body if body is not None else {})
    return client.post(url, data=data, content_type=content_type, **extra)


def only_attempt() -> SessionAttempt:
    attempts = list(SessionAttempt.objects.all())
    assert len(attempts) == 1, attempts
    return attempts[0]


def test_success_returns_secret_and_expiry_and_audits(api_client, upstream):
    response = post(api_client)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"client_secret", "expires_at"}
    assert body["client_secret"].startswith("ek_")
    assert response["Cache-Control"] == "no-store"
    session = next(iter(upstream.state.sessions.values()))
    assert body["expires_at"] == session["expires_at"]

    attempt = only_attempt()
    assert attempt.outcome == "success"
    assert attempt.kind == "initial"
    assert attempt.status_code == 200
    assert attempt.session_id == session["id"]
    assert attempt.workflow_id == WORKFLOW_ID
    assert attempt.upstream_request_id.startswith("req_")
    assert attempt.attempts == 1
    assert attempt.latency_ms is not None
    assert attempt.expires_at.timestamp() == session["expires_at"]
    assert attempt.anonymous is True
    assert attempt.user_ref == session["user"]


def test_upstream_receives_key_beta_header_workflow_and_user(api_client, upstream, settings):
    settings.CHATKIT_EXPIRES_AFTER_SECONDS = 120
    settings.CHATKIT_RATE_LIMIT_PER_MINUTE = 5

    assert post(api_client).status_code == 200

    [request] = upstream.state.received()
    assert request["path"] == "/v1/chatkit/sessions"
    assert request["headers"]["Authorization"] == f"Bearer {CANARY_KEY}"
    assert request["headers"]["OpenAI-Beta"] == "chatkit_beta=v1"
    assert request["json"]["workflow"] == {"id": WORKFLOW_ID}
    assert request["json"]["user"].startswith("anon_")
    assert request["json"]["expires_after"] == {"anchor": "created_at", "seconds": 120}
    assert request["json"]["rate_limits"] == {"max_requests_per_1_minute": 5}


@pytest.mark.parametrize("url", ["/api/api/chatkit/session/", "/api/chatkit/session"])
def test_guide_alias_and_missing_slash_work(api_client, upstream, url):
    response = post(api_client, url=url)
    assert response.status_code == 200
    assert response.json()["client_secret"]


def test_refresh_is_recorded_as_refresh(api_client, upstream):
    response = post(api_client, {"current_client_secret": "ek_old_secret_value_123456"})
    assert response.status_code == 200
    assert only_attempt().kind == "refresh"


def test_allowed_workflow_can_be_chosen(api_client, upstream, settings):
    settings.CHATKIT_ALLOWED_WORKFLOWS = [OTHER_WORKFLOW_ID]
    assert post(api_client, {"workflow_id": OTHER_WORKFLOW_ID}).status_code == 200
    assert upstream.state.received()[0]["json"]["workflow"]["id"] == OTHER_WORKFLOW_ID


# --- the error table: one row per situation --------------------------------------------------


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) >= {"code", "message", "request_id"}
    return body["error"]


@pytest.mark.parametrize(
    ("faults", "status", "code", "outcome", "upstream_status", "attempts"),
    [
        ([{"status": 401}], 502, "upstream_auth_failed", "upstream_error", 401, 1),
        ([{"status": 403}], 502, "upstream_auth_failed", "upstream_error", 403, 1),
        ([{"status": 400}], 502, "upstream_rejected", "upstream_error", 400, 1),
        ([{"status": 422}], 502, "upstream_rejected", "upstream_error", 422, 1),
        (
            [{"status": 429, "retry_after": 30}],
            503,
            "upstream_rate_limited",
            "upstream_error",
            429,
            1,
        ),
        ([{"status": 500}] * 3, 502, "upstream_unavailable", "upstream_error", 500, 3),
        ([{"status": 503}] * 3, 502, "upstream_unavailable", "upstream_error", 503, 3),
        ([{"hangup": True}], 502, "upstream_unavailable", "network_error", None, 1),
        ([{"hang": True}], 504, "upstream_timeout", "timeout", None, 1),
        ([{"garbage": True}], 502, "upstream_invalid_response", "invalid_response", 200, 1),
    ],
)
def test_error_table(
    api_client, upstream, faults, status, code, outcome, upstream_status, attempts
):
    upstream.state.push_faults(faults)

    response = post(api_client)

    assert response.status_code == status
    error = error_of(response)
    assert error["code"] == code
    attempt = only_attempt()
    assert error["request_id"] == attempt.id
    assert attempt.outcome == outcome
    assert attempt.api_error_code == code
    assert attempt.status_code == upstream_status
    assert attempt.attempts == attempts
    if code == "upstream_rate_limited":
        assert response["Retry-After"] == "30"


def test_5xx_then_success_is_one_successful_attempt(api_client, upstream):
    upstream.state.push_faults([{"status": 502}])
    response = post(api_client)
    assert response.status_code == 200
    attempt = only_attempt()
    assert (attempt.outcome, attempt.attempts) == ("success", 2)


def test_wrong_key_is_a_real_upstream_401(api_client, upstream, settings):
    settings.OPENAI_API_KEY = "sk-wrong-" + "x" * 30
    response = post(api_client)
    assert error_of(response)["code"] == "upstream_auth_failed"
    attempt = only_attempt()
    assert attempt.status_code == 401
    assert attempt.error_code == "invalid_api_key"
    assert "Incorrect API key provided" in attempt.error_message


def test_unknown_workflow_is_a_real_upstream_404(api_client, upstream, settings):
    settings.OPENAI_WORKFLOW_ID = "wf_unknown_to_this_project"
    response = post(api_client)
    assert response.status_code == 502
    assert error_of(response)["code"] == "upstream_workflow_not_found"
    attempt = only_attempt()
    assert attempt.status_code == 404
    assert attempt.error_message == "Workflow with id 'wf_unknown_to_this_project' not found."


def test_unreachable_upstream_is_unavailable_after_retries(api_client, upstream, settings):
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    response = post(api_client)
    assert response.status_code == 502
    assert error_of(response)["code"] == "upstream_unavailable"
    attempt = only_attempt()
    assert (attempt.outcome, attempt.attempts) == ("network_error", 3)


@pytest.mark.parametrize("missing", ["OPENAI_API_KEY", "OPENAI_WORKFLOW_ID"])
def test_not_configured_answers_503_and_audits_without_calling_upstream(
    api_client, upstream, settings, missing
):
    setattr(settings, missing, "")
    response = post(api_client)
    assert response.status_code == 503
    assert error_of(response)["code"] == "not_configured"
    attempt = only_attempt()
    assert attempt.outcome == "not_configured"
    assert missing in attempt.error_message
    assert upstream.state.received() == []


def test_upstream_text_reaches_the_browser_only_in_debug(api_client, upstream, settings):
    envelope = {"error": {"message": "Invalid 'user': too long.", "type": "invalid_request_error"}}
    fault = {"status": 400, "body": json.dumps(envelope), "content_type": "application/json"}
    upstream.state.push_faults([fault, fault])
    assert "upstream_message" not in error_of(post(api_client))
    settings.DEBUG = True
    assert error_of(post(api_client))["upstream_message"] == "Invalid 'user': too long."


# --- bad input: clear JSON errors, no upstream call, still audited ---------------------------


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "code"),
    [
        ("{not json", "application/json", 400, "invalid_request"),
        ("[]", "application/json", 400, "invalid_request"),
        ("null", "application/json", 400, "invalid_request"),
        ('{"workflow_id": 12}', "application/json", 400, "invalid_request"),
        ('{"workflow_id": ""}', "application/json", 400, "invalid_request"),
        ('{"current_client_secret": ["x"]}', "application/json", 400, "invalid_request"),
        ('{"workflow_id": "wf_' + "a" * 200 + '"}', "application/json", 400, "invalid_request"),
        (json.dumps({"pad": "x" * 17_000}), "application/json", 413, "invalid_request"),
        ("workflow_id=wf_x", "application/x-www-form-urlencoded", 415, "invalid_request"),
        ('{"workflow_id": "wf_not_allowed"}', "application/json", 400, "workflow_not_allowed"),
    ],
)
def test_bad_input_gets_json_error_and_audit_row(
    api_client, upstream, raw, content_type, status, code
):
    response = post(api_client, raw=raw, content_type=content_type)

    assert response.status_code == status
    error = error_of(response)
    assert error["code"] == code
    assert error["message"]
    attempt = only_attempt()
    assert error["request_id"] == attempt.id
    assert attempt.outcome == "rejected"
    assert attempt.api_error_code == code
    assert upstream.state.received() == []


def test_empty_body_is_fine(api_client, upstream):
    response = api_client.post(URL)
    assert response.status_code == 200


@pytest.mark.parametrize("method", ["get", "put", "delete", "patch"])
def test_wrong_method_is_405_json(api_client, upstream, method):
    response = getattr(api_client, method)(URL)
    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"
    assert SessionAttempt.objects.count() == 0
