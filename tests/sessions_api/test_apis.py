import json
import re

import pytest
from django.db import OperationalError, connection
from rest_framework.test import APIClient

from audit import services as audit_services
from audit.models import SessionAttempt
from sessions_api import errors, services
from sessions_api.apis import ChatKitSessionCreateApi
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


def test_the_request_id_shown_is_random_not_the_rows_key(api_client, upstream):
    upstream.state.push_faults([{"status": 500}] * 6)
    ids = [error_of(post(api_client))["request_id"] for _ in range(2)]

    rows = SessionAttempt.objects.order_by("id")
    assert ids == [row.request_id for row in rows]
    # Two in a row share nothing a caller could count on: not the key, not a sequence.
    assert all(re.fullmatch(r"brk_[0-9a-f]{24}", request_id) for request_id in ids)
    assert not set(ids) & {str(row.pk) for row in rows}


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
    assert error["request_id"] == attempt.request_id
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
    assert error["request_id"] == attempt.request_id
    assert attempt.outcome == "rejected"
    assert attempt.api_error_code == code
    assert upstream.state.received() == []


def test_each_input_serializer_binds_fields_of_its_own():
    declared = ChatKitSessionCreateApi.InputSerializer._declared_fields
    first = ChatKitSessionCreateApi.InputSerializer(data={"workflow_id": "wf_a"})
    second = ChatKitSessionCreateApi.InputSerializer(data={"workflow_id": 7})

    assert first.is_valid()
    assert not second.is_valid()
    assert first.validated_data == {"workflow_id": "wf_a"}
    assert set(second.errors) == {"workflow_id"}
    for name, field in declared.items():
        assert first.fields[name] is not second.fields[name]
        assert first.fields[name].parent is first
        assert second.fields[name].parent is second
        assert first.fields[name].field_name == name
        assert field.field_name is None  # the declared field itself stays unbound
        assert first.fields[name].validators == field.validators


def test_empty_body_is_fine(api_client, upstream):
    response = api_client.post(URL)
    assert response.status_code == 200


@pytest.mark.parametrize("body", [{}, {"workflow_id": 7}])
def test_the_answer_is_json_whatever_accept_asks(api_client, upstream, body):
    response = post(api_client, body, HTTP_ACCEPT="text/html")

    assert response["Content-Type"] == "application/json"
    assert response.status_code == (200 if body == {} else 400)
    assert set(response.json()) == ({"client_secret", "expires_at"} if body == {} else {"error"})
    assert only_attempt().outcome == ("success" if body == {} else "rejected")


@pytest.mark.parametrize("method", ["get", "put", "delete", "patch"])
def test_wrong_method_is_405_json(api_client, upstream, method):
    response = getattr(api_client, method)(URL)
    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"
    assert SessionAttempt.objects.count() == 0


# --- exactly one row, whatever breaks ---------------------------------------------------------


def test_a_refused_body_keeps_its_workflow_and_kind(api_client, upstream):
    response = post(api_client, {"workflow_id": "wf_" + "a" * 200, "current_client_secret": "ek_x"})

    assert error_of(response)["code"] == "invalid_request"
    attempt = only_attempt()
    # Not a workflow we serve: a placeholder in its column, the text itself in the message.
    assert (attempt.kind, attempt.workflow_id) == ("refresh", "(refused)")
    assert attempt.error_message.endswith(f"(workflow_id: wf_{'a' * 200})")


def test_a_username_longer_than_the_user_ref_column_still_gets_its_row(
    api_client, upstream, settings, django_user_model
):
    settings.CHATKIT_USER_ID_MODE = "username"
    user = django_user_model.objects.create_user(username="u" * 150)
    api_client.force_login(user)
    api_client.get("/admin/login/")  # sets the CSRF cookie
    token = api_client.cookies["csrftoken"].value

    response = post(api_client, HTTP_X_CSRFTOKEN=token)

    assert response.status_code == 200
    attempt = only_attempt()
    assert (attempt.username, attempt.user_ref) == ("u" * 150, "u" * 128)
    assert upstream.state.received()[0]["json"]["user"] == "u" * 150


def minted_sessions(upstream) -> list[str]:
    return [session["status"] for session in upstream.state.sessions.values()]


def test_a_bug_after_the_mint_cancels_the_session_and_leaves_a_row(
    api_client, upstream, monkeypatch, caplog
):
    def broken(timestamp):
        raise RuntimeError("a bug in building the row")

    monkeypatch.setattr(services, "_expiry", broken)

    response = post(api_client)

    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "internal_error"
    attempt = only_attempt()
    assert (error["request_id"], attempt.outcome, attempt.api_error_code) == (
        attempt.request_id,
        "internal_error",
        "internal_error",
    )
    assert minted_sessions(upstream) == ["cancelled"]
    [session_id] = upstream.state.sessions
    assert f"Session {session_id} was minted but not recorded; cancelling it upstream." in [
        r.getMessage() for r in caplog.records if r.levelname == "ERROR"
    ]
    assert "ek_" not in response.content.decode()


@pytest.fixture
def database_refusing_audit_rows(monkeypatch):
    """The audit writes that were tried; each fails as a lost connection would."""
    tried = []

    def refuse(attempt):
        tried.append(attempt.outcome)
        raise OperationalError("connection to server lost")

    monkeypatch.setattr(audit_services, "_attempt_insert", refuse)
    return tried


@pytest.mark.parametrize("faults", [[], [{"status": 401}]], ids=["minted", "upstream-401"])
def test_a_row_that_cannot_be_written_means_503_and_no_session(
    api_client, upstream, database_refusing_audit_rows, faults
):
    upstream.state.push_faults(faults)

    response = post(api_client)

    assert response.status_code == 503
    assert error_of(response) == {
        "code": "audit_unavailable",
        "message": errors.AuditUnavailable.message,
        "request_id": None,
    }
    assert not SessionAttempt.objects.exists()
    assert minted_sessions(upstream) == (["cancelled"] if not faults else [])
    # Tried once: a write that failed in the database is not tried again as a refusal.
    assert database_refusing_audit_rows == ["upstream_error" if faults else "success"]


def test_a_session_that_cannot_be_cancelled_either_is_logged(
    api_client, upstream, monkeypatch, caplog
):
    # Minted, the row fails, and the cancel fails too (the upstream no longer knows the
    # session): still a 503, and the operator is told which session to see to by hand.
    minted = []

    def refuse(attempt):
        minted.extend(upstream.state.sessions)
        upstream.state.reset()
        raise OperationalError("connection to server lost")

    monkeypatch.setattr(audit_services, "_attempt_insert", refuse)

    response = post(api_client)

    assert response.status_code == 503
    [session_id] = minted
    errors_logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors_logged[:2] == [
        "Could not write the audit row of a success attempt: connection to server lost",
        f"Session {session_id} was minted but not recorded; cancelling it upstream.",
    ]
    assert errors_logged[2].startswith(
        f"Could not cancel session {session_id} upstream: UpstreamHTTPError status=404"
    )


def test_a_refusal_that_cannot_be_recorded_is_a_503(
    api_client, upstream, database_refusing_audit_rows
):
    response = post(api_client, raw="{not json")

    assert response.status_code == 503
    assert error_of(response)["code"] == "audit_unavailable"
    assert upstream.state.received() == []


# --- round trips ------------------------------------------------------------------------------

# PostgreSQL: the audit row and its pending-minute mark are one statement. SQLite has no INSERT
# in WITH: the test's savepoint, the row, the mark's update and its insert, the release.
AUDIT_WRITE_QUERIES = {"postgresql": 1, "sqlite": 5}


def test_an_anonymous_session_costs_one_database_round_trip(
    api_client, upstream, django_assert_num_queries
):
    with django_assert_num_queries(AUDIT_WRITE_QUERIES[connection.vendor]):
        assert post(api_client).status_code == 200


def test_a_logged_in_session_adds_only_its_session_and_user_lookups(
    logged_in_client, upstream, django_assert_num_queries
):
    logged_in_client.get("/admin/login/")
    token = logged_in_client.cookies["csrftoken"].value
    with django_assert_num_queries(AUDIT_WRITE_QUERIES[connection.vendor] + 2):
        assert post(logged_in_client, HTTP_X_CSRFTOKEN=token).status_code == 200


def test_a_database_failing_before_the_view_is_a_json_503(logged_in_client, upstream, monkeypatch):
    # The session lookup of a logged-in caller fails (the database is down, or the pool lent
    # every connection): a JSON 503 with its row, never Django's HTML error page.
    from django.contrib.sessions.backends.db import SessionStore

    def down(self):
        raise OperationalError("connection pool exhausted")

    monkeypatch.setattr(SessionStore, "load", down)

    response = post(logged_in_client)

    assert response.status_code == 503
    assert error_of(response)["code"] == "audit_unavailable"
    assert only_attempt().api_error_code == "audit_unavailable"
    assert upstream.state.received() == []


@pytest.mark.parametrize(
    ("proxies", "forwarded", "recorded"),
    [
        (0, "198.51.100.1", "192.0.2.10"),  # nobody trusted: the peer's own address
        (1, "198.51.100.1, 203.0.113.9", "203.0.113.9"),  # the entry our one proxy added
        (2, "198.51.100.1, 203.0.113.9", "198.51.100.1"),
        (1, "not-an-address", None),
    ],
)
def test_the_client_ip_recorded_follows_num_proxies(
    upstream, settings, proxies, forwarded, recorded
):
    settings.CHATKIT_AUDIT_CLIENT_IP = True
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": proxies}
    client = APIClient(REMOTE_ADDR="192.0.2.10")
    assert client.post(URL, HTTP_X_FORWARDED_FOR=forwarded).status_code == 200
    assert only_attempt().client_ip == recorded
