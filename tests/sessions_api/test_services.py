"""The decision, called directly: one audit row per call, the error mapping, and cancels.

The upstream is the project's emulator over a real socket (pytest-httpserver where an answer is
needed that the emulator does not give), as everywhere else in the suite.
"""

import json
import logging
import socket
import time
import warnings
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import AnonymousUser
from django.test import Client
from django.utils import timezone

from audit.models import SessionAttempt
from audit.services import session_attempt_record
from broker.redis_breaker import redis_breaker
from sessions_api import client, errors, services
from sessions_api.identity import ChatKitIdentity, user_ref_for_user
from sessions_api.services import (
    SessionGrant,
    SessionRequest,
    allowed_workflows,
    chatkit_client,
    chatkit_session_create,
    chatkit_sessions_cancel,
)
from tests.constants import CANARY_KEY, OTHER_WORKFLOW_ID, WORKFLOW_ID

pytestmark = pytest.mark.django_db

ANON = ChatKitIdentity(user_ref="anon_5d0c7e2a9b8f4613a1e0c4b7d2f9e831", anonymous=True)
CLIENT_IP = "203.0.113.7"


def only_attempt() -> SessionAttempt:
    attempts = list(SessionAttempt.objects.all())
    assert len(attempts) == 1, attempts
    return attempts[0]


def identity_of(user) -> ChatKitIdentity:
    return ChatKitIdentity(user_ref=user_ref_for_user(user), anonymous=False)


def create(**kwargs) -> SessionGrant:
    return chatkit_session_create(
        SessionRequest(**{"user": AnonymousUser(), "identity": ANON, **kwargs})
    )


def refuse(error: errors.ApplicationError, **kwargs) -> SessionAttempt:
    assert SessionRequest(**kwargs).refuse(error) is error
    attempt = only_attempt()
    assert error.request_id == attempt.request_id
    return attempt


# --- the client and the workflows it may ask for ---------------------------------------------


def test_the_client_is_built_from_the_settings(settings):
    settings.OPENAI_BASE_URL = "https://upstream.example/v1/"
    settings.OPENAI_API_KEY = CANARY_KEY
    settings.CHATKIT_CONNECT_TIMEOUT = 1.5
    settings.CHATKIT_READ_TIMEOUT = 4.0
    settings.CHATKIT_TOTAL_TIMEOUT = 6.0
    settings.CHATKIT_MAX_RETRIES = 1

    assert chatkit_client()._config == client.ClientConfig(
        base_url="https://upstream.example/v1",
        api_key=CANARY_KEY,
        connect_timeout=1.5,
        read_timeout=4.0,
        total_timeout=6.0,
        max_retries=1,
    )
    assert chatkit_client() is chatkit_client()  # one per process, with its pooled sessions


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("OPENAI_BASE_URL", "base_url", "http://127.0.0.1:9/v1"),
        ("CHATKIT_READ_TIMEOUT", "read_timeout", 0.75),
    ],
)
def test_an_upstream_setting_change_replaces_and_closes_the_client(
    upstream, settings, name, field, value
):
    first = chatkit_client()
    with first._session():
        pass

    setattr(settings, name, value)

    second = chatkit_client()
    assert second is not first
    assert getattr(second._config, field) == value
    assert first._sessions == []  # closed: its pooled connections are let go


def test_other_setting_changes_keep_the_client(upstream, settings):
    first = chatkit_client()
    settings.DEBUG = True
    settings.LANGUAGE_CODE = "de"
    assert chatkit_client() is first


def test_allowed_workflows_are_the_configured_one_and_the_listed_ones(settings):
    settings.OPENAI_WORKFLOW_ID = WORKFLOW_ID
    settings.CHATKIT_ALLOWED_WORKFLOWS = [OTHER_WORKFLOW_ID, ""]
    assert allowed_workflows() == {WORKFLOW_ID, OTHER_WORKFLOW_ID}

    settings.OPENAI_WORKFLOW_ID = ""
    assert allowed_workflows() == {OTHER_WORKFLOW_ID}

    settings.CHATKIT_ALLOWED_WORKFLOWS = []
    assert allowed_workflows() == set()


# --- refused before the upstream -------------------------------------------------------------


def test_a_rejection_of_a_logged_in_user_is_recorded_under_their_id(user, settings):
    settings.CHATKIT_AUDIT_CLIENT_IP = True
    error = errors.InvalidRequest("workflow_id: Not a valid string.")

    attempt = refuse(error, user=user, client_ip=CLIENT_IP)

    assert (attempt.outcome, attempt.kind) == ("rejected", "initial")
    assert (attempt.user, attempt.user_ref, attempt.anonymous) == (
        user,
        user_ref_for_user(user),
        False,
    )
    assert (attempt.api_error_code, attempt.error_message) == (
        "invalid_request",
        "workflow_id: Not a valid string.",
    )
    assert (attempt.workflow_id, attempt.client_ip) == ("", CLIENT_IP)


def test_a_rejection_of_an_anonymous_caller_without_identity_has_a_blank_ref():
    error = errors.CsrfFailed()

    attempt = refuse(error, user=AnonymousUser())

    assert (attempt.user, attempt.user_ref, attempt.anonymous) == (None, "", True)
    assert (attempt.api_error_code, attempt.error_message) == ("csrf_failed", error.message)
    assert attempt.client_ip is None


def test_a_rejection_with_an_identity_records_that_identity(user):
    error = errors.WorkflowNotAllowed()

    attempt = refuse(error, user=AnonymousUser(), identity=ANON, workflow_id="wf_x", refresh=True)

    assert (attempt.user_ref, attempt.anonymous, attempt.kind) == (ANON.user_ref, True, "refresh")
    assert (attempt.workflow_id, attempt.error_message) == (
        "(refused)",
        "This workflow is not available here. (workflow_id: wf_x)",
    )


@pytest.mark.parametrize("workflow_id", [WORKFLOW_ID, ""])
def test_a_rejection_keeps_a_workflow_we_serve_and_its_message_as_it_is(upstream, workflow_id):
    attempt = refuse(errors.InvalidRequest(), user=AnonymousUser(), workflow_id=workflow_id)

    assert (attempt.workflow_id, attempt.error_message) == (
        workflow_id,
        errors.InvalidRequest.message,
    )


def test_a_refusal_key_counts_refusals_on_one_row(upstream):
    keyed = [SessionRequest(user=AnonymousUser()) for _ in range(3)]
    for request in keyed:
        request.refuse(errors.RateLimited(retry_after=60, refusal_key="k" * 32))
    other = SessionRequest(user=AnonymousUser())
    other.refuse(errors.RateLimited(retry_after=60, refusal_key="m" * 32))

    counted, alone = SessionAttempt.objects.order_by("id")
    assert [request.attempt_id for request in keyed] == [counted.id] * 3
    assert (counted.requests, counted.refusal_key) == (3, "k" * 32)
    assert (alone.requests, other.attempt_id) == (1, alone.id)


def test_a_rejection_records_the_identity_the_request_was_made_as(user):
    # The view passes the user re-read from the session: it is anonymous again when the session
    # ended meanwhile (a logout or password change in another tab), but the identity is not.
    attempt = refuse(errors.InvalidRequest(), user=AnonymousUser(), identity=identity_of(user))

    assert (attempt.user, attempt.user_ref, attempt.anonymous) == (
        None,
        user_ref_for_user(user),
        False,
    )


def test_a_logged_in_user_asking_for_a_workflow_not_allowed_is_recorded_as_that_user(
    upstream, user
):
    with pytest.raises(errors.WorkflowNotAllowed):
        create(user=user, identity=identity_of(user), workflow_id="wf_somebody_elses")

    attempt = only_attempt()
    assert (attempt.user, attempt.username, attempt.anonymous) == (user, "ada", False)


def test_a_workflow_not_allowed_is_refused_and_recorded_without_an_upstream_call(
    upstream, settings
):
    settings.CHATKIT_AUDIT_CLIENT_IP = True

    with pytest.raises(errors.WorkflowNotAllowed) as caught:
        create(workflow_id="wf_somebody_elses", refresh=True, client_ip=CLIENT_IP)

    attempt = only_attempt()
    assert caught.value.request_id == attempt.request_id
    assert (attempt.outcome, attempt.kind, attempt.api_error_code) == (
        "rejected",
        "refresh",
        "workflow_not_allowed",
    )
    assert (attempt.workflow_id, attempt.user_ref, attempt.anonymous, attempt.client_ip) == (
        "(refused)",
        ANON.user_ref,
        True,
        CLIENT_IP,
    )
    assert upstream.state.received() == []


@pytest.mark.parametrize(
    ("key", "workflow", "missing"),
    [
        ("", WORKFLOW_ID, "OPENAI_API_KEY"),
        (CANARY_KEY, "", "OPENAI_WORKFLOW_ID"),
        ("", "", "OPENAI_API_KEY, OPENAI_WORKFLOW_ID"),
    ],
)
def test_missing_configuration_is_recorded_by_name(upstream, settings, key, workflow, missing):
    settings.OPENAI_API_KEY, settings.OPENAI_WORKFLOW_ID = key, workflow

    with pytest.raises(errors.NotConfigured) as caught:
        create()

    attempt = only_attempt()
    assert caught.value.request_id == attempt.request_id
    assert (attempt.outcome, attempt.api_error_code) == ("not_configured", "not_configured")
    assert attempt.error_message == f"Not set on the server: {missing}."
    assert (attempt.kind, attempt.workflow_id, attempt.user_ref) == (
        "initial",
        workflow,
        ANON.user_ref,
    )
    assert upstream.state.received() == []


# --- minted ----------------------------------------------------------------------------------


def test_success_grants_the_secret_and_records_the_attempt_from_its_start(upstream, user, settings):
    settings.CHATKIT_AUDIT_CLIENT_IP = True
    upstream.state.push_faults([{"ok": True, "latency_ms": 300}])
    started = timezone.now()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grant = create(user=user, identity=identity_of(user), refresh=True, client_ip=CLIENT_IP)

    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]  # naive datetimes
    [session] = upstream.state.sessions.values()
    attempt = only_attempt()
    assert grant == SessionGrant(
        client_secret=session["client_secret"],
        expires_at=session["expires_at"],
        attempt_id=attempt.id,
        session_id=session["id"],
    )
    assert (attempt.outcome, attempt.kind, attempt.status_code) == ("success", "refresh", 200)
    assert (attempt.session_id, attempt.workflow_id) == (session["id"], WORKFLOW_ID)
    assert attempt.expires_at == datetime.fromtimestamp(session["expires_at"], UTC)
    assert (attempt.user, attempt.user_ref, attempt.anonymous) == (
        user,
        session["user"],
        False,
    )
    assert session["user"] == user_ref_for_user(user)
    assert attempt.upstream_request_id.startswith("req_")
    assert (attempt.attempts, attempt.client_ip) == (1, CLIENT_IP)
    assert attempt.latency_ms >= 300
    # Stamped when the request came in, not when the slow upstream had answered.
    assert started <= attempt.created_at < started + timedelta(milliseconds=250)


def test_the_session_options_in_the_settings_are_sent_upstream(upstream, settings):
    settings.CHATKIT_EXPIRES_AFTER_SECONDS = 600  # the most OpenAI accepts
    settings.CHATKIT_RATE_LIMIT_PER_MINUTE = 12
    settings.CHATKIT_CONFIGURATION = {"history": {"enabled": False}}

    create()

    [request] = upstream.state.received()
    assert request["json"] == {
        "workflow": {"id": WORKFLOW_ID},
        "user": ANON.user_ref,
        "expires_after": {"anchor": "created_at", "seconds": 600},
        "rate_limits": {"max_requests_per_1_minute": 12},
        "chatkit_configuration": {"history": {"enabled": False}},
    }


@pytest.mark.parametrize("configured", [WORKFLOW_ID, ""])
def test_a_listed_workflow_can_be_chosen(upstream, settings, configured):
    settings.OPENAI_WORKFLOW_ID = configured
    settings.CHATKIT_ALLOWED_WORKFLOWS = [OTHER_WORKFLOW_ID]

    create(workflow_id=OTHER_WORKFLOW_ID)

    assert upstream.state.received()[0]["json"]["workflow"] == {"id": OTHER_WORKFLOW_ID}
    assert only_attempt().workflow_id == OTHER_WORKFLOW_ID


def test_a_session_without_expiry_is_recorded_without_one(httpserver, upstream, settings):
    settings.OPENAI_BASE_URL = httpserver.url_for("/v1")
    body = {"id": "cksess_noexpiry", "object": "chatkit.session", "client_secret": "ek_x" * 8}
    httpserver.expect_request("/v1/chatkit/sessions", method="POST").respond_with_json(body)

    grant = create()

    assert (grant.client_secret, grant.expires_at) == (body["client_secret"], None)
    attempt = only_attempt()
    assert (attempt.outcome, attempt.session_id, attempt.expires_at) == (
        "success",
        "cksess_noexpiry",
        None,
    )


# --- upstream failures: one error vocabulary, one audit row ----------------------------------


@pytest.mark.parametrize(
    ("faults", "error_class", "outcome", "status", "attempts"),
    [
        ([{"status": 401}], errors.UpstreamAuthFailed, "upstream_error", 401, 1),
        ([{"status": 403}], errors.UpstreamAuthFailed, "upstream_error", 403, 1),
        ([{"status": 404}], errors.UpstreamWorkflowNotFound, "upstream_error", 404, 1),
        ([{"status": 400}], errors.UpstreamRejected, "upstream_error", 400, 1),
        ([{"status": 409}], errors.UpstreamRejected, "upstream_error", 409, 1),
        ([{"status": 499}], errors.UpstreamRejected, "upstream_error", 499, 1),
        ([{"status": 429}], errors.UpstreamRateLimited, "upstream_error", 429, 1),
        ([{"status": 500}] * 3, errors.UpstreamUnavailable, "upstream_error", 500, 3),
        (
            [{"status": 503, "retry_after": 30}],
            errors.UpstreamUnavailable,
            "upstream_error",
            503,
            1,
        ),
        ([{"status": 302}], errors.UpstreamUnavailable, "upstream_error", 302, 1),
        ([{"hangup": True}], errors.UpstreamUnavailable, "network_error", None, 1),
        ([{"hang": True}], errors.UpstreamTimedOut, "timeout", None, 1),
        ([{"garbage": True}], errors.UpstreamInvalidResponse, "invalid_response", 200, 1),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else None,
)
@pytest.mark.parametrize("debug", [False, True])
def test_each_upstream_failure_maps_to_one_error_and_one_row(
    upstream, settings, faults, error_class, outcome, status, attempts, debug
):
    settings.DEBUG = debug
    upstream.state.push_faults(faults)

    with pytest.raises(errors.ApplicationError) as caught:
        create()

    error, attempt = caught.value, only_attempt()
    assert type(error) is error_class
    assert isinstance(error.__cause__, client.UpstreamError)
    assert error.request_id == attempt.request_id
    assert (attempt.outcome, attempt.status_code, attempt.attempts) == (outcome, status, attempts)
    assert attempt.api_error_code == error.code
    assert attempt.error_message
    # The upstream's own words reach the browser only when DEBUG is on.
    assert error.debug_detail == (attempt.error_message if debug else "")


def test_an_upstream_error_is_recorded_with_its_details(upstream):
    envelope = {
        "error": {
            "message": "Invalid 'user': string too long.",
            "type": "invalid_request_error",
            "param": "user",
            "code": "string_above_max_length",
        }
    }
    upstream.state.push_faults(
        [
            {
                "status": 400,
                "body": json.dumps(envelope),
                "content_type": "application/json",
                "headers": {"x-request-id": "req_0a1b2c3d"},
                "latency_ms": 100,
            }
        ]
    )

    with pytest.raises(errors.UpstreamRejected):
        create(refresh=True)

    attempt = only_attempt()
    assert (attempt.error_type, attempt.error_param, attempt.error_code) == (
        "invalid_request_error",
        "user",
        "string_above_max_length",
    )
    assert attempt.error_message == "Invalid 'user': string too long."
    assert attempt.upstream_request_id == "req_0a1b2c3d"
    assert (attempt.kind, attempt.workflow_id, attempt.user_ref) == (
        "refresh",
        WORKFLOW_ID,
        ANON.user_ref,
    )
    assert attempt.latency_ms >= 100


@pytest.mark.parametrize(
    ("faults", "retry_after"),
    [
        ([{"status": 429, "retry_after": 30}], 30),
        ([{"status": 429, "retry_after": 2.5}], 3),  # rounded up: never ask back too early
        ([{"status": 429, "retry_after": 30.01}], 31),
        ([{"status": 429}], 5),  # no hint: a few seconds, never 0
        # Retry-After: 0 is retried at once; when every retry is refused too, still not 0.
        ([{"status": 429, "retry_after": 0}] * 3, 5),
    ],
)
def test_an_upstream_rate_limit_tells_the_browser_when_to_come_back(upstream, faults, retry_after):
    upstream.state.push_faults(faults)

    with pytest.raises(errors.UpstreamRateLimited) as caught:
        create()

    assert caught.value.retry_after == retry_after
    assert only_attempt().attempts == len(faults)


# --- cancelling a user's sessions ------------------------------------------------------------


def live_row(user, session_id: str) -> None:
    session_attempt_record(
        outcome="success",
        user=user,
        user_ref=user_ref_for_user(user),
        anonymous=False,
        workflow_id=WORKFLOW_ID,
        session_id=session_id,
        expires_at=timezone.now() + timedelta(minutes=10),
    )


def test_cancel_cancels_every_live_session_and_counts_a_gone_one_as_done(
    upstream, user, django_user_model
):
    other = django_user_model.objects.create_user(username="grace")
    create(user=user, identity=identity_of(user))
    live_row(user, "cksess_gone_upstream")  # between the two: a 404 must not end the loop
    create(user=user, identity=identity_of(user))
    create(user=other, identity=identity_of(other))

    assert chatkit_sessions_cancel(user_id=user.pk) == 2

    statuses = {s["user"]: [] for s in upstream.state.sessions.values()}
    for session in upstream.state.sessions.values():
        statuses[session["user"]].append(session["status"])
    assert statuses == {
        user_ref_for_user(user): ["cancelled", "cancelled"],
        user_ref_for_user(other): ["active"],
    }


def test_cancel_with_nothing_live_calls_nobody(upstream, user):
    assert chatkit_sessions_cancel(user_id=user.pk) == 0
    assert upstream.state.received() == []


def test_cancel_raises_any_other_upstream_error(upstream, user, settings):
    create(user=user, identity=identity_of(user))
    settings.OPENAI_API_KEY = "sk-rotated-" + "x" * 30

    with pytest.raises(client.UpstreamHTTPError) as caught:
        chatkit_sessions_cancel(user_id=user.pk)

    assert caught.value.status_code == 401
    [session] = upstream.state.sessions.values()
    assert session["status"] == "active"


def test_a_logout_whose_cancel_cannot_be_queued_cancels_inline(
    upstream, user, django_capture_on_commit_callbacks, caplog
):
    create(user=user, identity=identity_of(user))
    redis_breaker.failed("test: the queue is down")  # publishing is skipped for a while
    client_ = Client()
    client_.force_login(user)

    with django_capture_on_commit_callbacks(execute=True):
        client_.logout()

    [session] = upstream.state.sessions.values()
    assert session["status"] == "cancelled"
    assert "Could not enqueue sessions_api.tasks.chatkit_sessions_cancel_for_user" in caplog.text


def test_a_logout_that_can_neither_queue_nor_cancel_says_so(
    upstream, user, settings, django_capture_on_commit_callbacks, caplog
):
    create(user=user, identity=identity_of(user))
    redis_breaker.failed("test: the queue is down")
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # the upstream goes away after the mint
    settings.CHATKIT_MAX_RETRIES = 2  # what a session request would retry
    caplog.set_level(logging.WARNING, logger="sessions_api.client")  # whatever the root says
    client_ = Client()
    client_.force_login(user)

    with django_capture_on_commit_callbacks(execute=True):
        client_.logout()  # the logout itself succeeds

    assert "_auth_user_id" not in client_.session
    [session] = upstream.state.sessions.values()
    assert session["status"] == "active"
    # One call, no retry: the logout does not wait for backoffs.
    attempts = [r.getMessage() for r in caplog.records if r.name == "sessions_api.client"]
    assert len(attempts) == 1 and attempts[0].startswith("chatkit cancel attempt 1 failed")
    assert attempts[0].endswith("giving up")
    [logged] = [r.getMessage() for r in caplog.records if "at logout" in r.getMessage()]
    assert logged.startswith(
        f"Could not cancel the sessions of user {user.pk} at logout; they live until they "
        "expire: UpstreamNetworkError"
    )


def test_an_inline_cancel_gives_each_call_two_seconds(
    upstream, user, settings, django_capture_on_commit_callbacks
):
    create(user=user, identity=identity_of(user))
    redis_breaker.failed("test: the queue is down")
    # The production budget: 8 s to read, 10 s a call, two retries.
    settings.CHATKIT_READ_TIMEOUT, settings.CHATKIT_TOTAL_TIMEOUT = 8.0, 10.0
    settings.CHATKIT_MAX_RETRIES = 2
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        settings.OPENAI_BASE_URL = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        client_ = Client()
        client_.force_login(user)
        started = time.monotonic()
        with django_capture_on_commit_callbacks(execute=True):
            client_.logout()
        waited = time.monotonic() - started
    # The logout's own budget ends it, not the 8 s read timeout of a session request.
    assert 1.5 < waited < 4


def test_a_logout_with_the_queue_up_cancels_nothing_inline(
    upstream, user, django_capture_on_commit_callbacks, monkeypatch
):
    create(user=user, identity=identity_of(user))
    queued = []
    monkeypatch.setattr(services, "publish_safely", lambda task, **kw: queued.append(kw) or True)
    client_ = Client()
    client_.force_login(user)

    with django_capture_on_commit_callbacks(execute=True):
        client_.logout()

    assert queued == [{"user_id": user.pk}]
    [session] = upstream.state.sessions.values()
    assert session["status"] == "active"  # the worker will cancel it


def test_a_request_has_one_row_however_often_it_is_refused():
    request = SessionRequest(user=AnonymousUser(), identity=ANON)
    first = request.refuse(errors.InvalidRequest())
    second = request.refuse(errors.CsrfFailed())

    attempt = only_attempt()
    assert first.request_id == second.request_id == attempt.request_id
    assert attempt.api_error_code == "invalid_request"
    with pytest.raises(RuntimeError, match=r"^This request already has its audit row\.$"):
        request.record("success")
    assert SessionAttempt.objects.count() == 1


@pytest.mark.parametrize(
    ("pool", "in_atomic_block", "handed_back"),
    [(object(), False, True), (object(), True, False), (None, False, False)],
    ids=["pooled", "inside-a-transaction", "not-pooled"],
)
def test_a_pooled_connection_is_handed_back_before_the_upstream_call(
    upstream, monkeypatch, pool, in_atomic_block, handed_back
):
    # With PostgreSQL's pool a request's connection goes back while it waits on OpenAI (the
    # real pool is exercised in tests/test_gunicorn.py); never inside a transaction, whose work
    # it would lose, and not without a pool, where closing would mean connecting again. The
    # connection the service sees is a stand-in; the audit write uses the real one.
    from sessions_api import services

    closed = []
    stand_in = SimpleNamespace(
        pool=pool,
        in_atomic_block=in_atomic_block,
        close=lambda: closed.append(upstream.state.received()),
    )
    monkeypatch.setattr(services, "connection", stand_in)

    create()

    # Handed back before the call: the upstream had received nothing yet.
    assert closed == ([[]] if handed_back else [])
