"""The decision: mint a ChatKit session for one caller, and record the attempt whatever happens."""

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import DatabaseError, connection
from django.dispatch import receiver
from django.utils import timezone

from audit.models import SessionAttempt
from audit.selectors import live_session_ids_for_user
from audit.services import request_id_new, session_attempt_record
from broker import metrics
from celery_app import publish_safely
from logs import request_id as log_request_id
from sessions_api import client, errors
from sessions_api.breaker import CircuitBreaker
from sessions_api.identity import ChatKitIdentity, user_ref_for_user

logger = logging.getLogger(__name__)
Outcome = SessionAttempt.Outcome


@dataclass(frozen=True)
class SessionGrant:
    client_secret: str = field(repr=False)
    expires_at: int | None
    attempt_id: int
    session_id: str


# A logout whose cancel cannot be queued cancels inline: each call gets this long, no retries.
LOGOUT_CANCEL_SECONDS = 2.0
CANCEL_TASK = "sessions_api.tasks.chatkit_sessions_cancel_for_user"


def _client_config(**overrides) -> client.ClientConfig:
    return client.ClientConfig(
        **{
            "base_url": settings.OPENAI_BASE_URL,
            "api_key": settings.OPENAI_API_KEY,
            "connect_timeout": settings.CHATKIT_CONNECT_TIMEOUT,
            "read_timeout": settings.CHATKIT_READ_TIMEOUT,
            "total_timeout": settings.CHATKIT_TOTAL_TIMEOUT,
            "max_retries": settings.CHATKIT_MAX_RETRIES,
            **overrides,
        }
    )


@lru_cache(maxsize=1)
def chatkit_client() -> client.ChatKitClient:
    """One client per process: its threads share its pool of kept-alive connections."""
    return client.ChatKitClient(_client_config())


@lru_cache(maxsize=1)
def upstream_breaker() -> CircuitBreaker:
    """One per process, like the client it guards."""
    metrics.circuit_state_set("closed")
    return CircuitBreaker(
        failures=settings.CHATKIT_BREAKER_FAILURES,
        cooldown=settings.CHATKIT_BREAKER_COOLDOWN_SECONDS,
        on_state=metrics.circuit_state_set,
    )


@receiver(setting_changed)
def _forget_client(*, setting: str, **kwargs) -> None:
    if setting.startswith(("OPENAI_", "CHATKIT_")):
        upstream_breaker.cache_clear()
        if chatkit_client.cache_info().currsize:
            chatkit_client().close()
            chatkit_client.cache_clear()


# What an audit row says for a workflow the request named but may not use, in place of the
# caller's own text: junk input must not make new statistics rows, alert keys or report lines.
# The text itself, cleaned, goes into the row's message.
REFUSED_WORKFLOW = "(refused)"


def allowed_workflows() -> set[str]:
    return {wf for wf in [settings.OPENAI_WORKFLOW_ID, *settings.CHATKIT_ALLOWED_WORKFLOWS] if wf}


def _workflow_label(workflow_id: str) -> str:
    """A workflow as a metric label: allowed ones by id, the rest (junk from callers) "other"."""
    if not workflow_id:
        return "none"
    return workflow_id if workflow_id in allowed_workflows() else "other"


@dataclass
class SessionRequest:
    """One request for a session, from the view's first line to its one audit row.

    The only writer of that row: `record` writes it at most once, whatever path the request
    takes (refused by the view, refused here, failed upstream, minted, or a bug), and what the
    view learns along the way (user, identity, workflow, kind) goes into it.
    """

    client_ip: str | None = None
    user: Any = None
    identity: ChatKitIdentity | None = None
    workflow_id: str = ""
    refresh: bool = False
    check: bool = False  # the configuration check (sessions_api/config_check.py)
    started_at: datetime = field(default_factory=timezone.now)
    attempt_id: int | None = None
    request_id: str | None = None  # the row's opaque id, which the browser is shown
    # Set once the row is written, or once writing it failed in the database: never a second.
    recorded: bool = False
    # The id the row will have, chosen now so that every log line of the request carries it
    # (logs.py), those before the row is written too.
    planned_request_id: str = field(default_factory=request_id_new)

    def __post_init__(self) -> None:
        log_request_id.set(self.planned_request_id)

    def record(self, outcome: str, **fields) -> int:
        if self.recorded:
            raise RuntimeError("This request already has its audit row.")
        logged_in = self.user is not None and self.user.is_authenticated
        identity = self.identity
        # Counted whether or not the row can be written: this is what happened.
        metrics.attempt_observe(
            outcome=outcome,
            status_code=fields.get("status_code"),
            workflow=_workflow_label(self.workflow_id),
            attempts=fields.get("attempts", 0),
            latency_ms=fields.get("latency_ms"),
        )
        try:
            attempt = session_attempt_record(
                outcome=outcome,
                kind=self.kind,
                user=self.user,
                user_ref=identity.user_ref if identity else _user_ref_or_blank(self.user),
                anonymous=identity.anonymous if identity else not logged_in,
                workflow_id=self.workflow_id,
                started_at=self.started_at,
                client_ip=self.client_ip,
                request_id=self.planned_request_id,
                **fields,
            )
        except DatabaseError as exc:
            self.recorded = True
            metrics.AUDIT_WRITE_FAILURES.inc()
            logger.error("Could not write the audit row of a %s attempt: %s", outcome, exc)
            raise errors.AuditUnavailable() from exc
        self.recorded, self.attempt_id, self.request_id = True, attempt.id, attempt.request_id
        # A throttled refusal counted on its caller's earlier row answers with that row's id.
        log_request_id.set(attempt.request_id)
        return attempt.id

    @property
    def kind(self) -> str:
        if self.check:
            return SessionAttempt.Kind.CHECK
        return SessionAttempt.Kind.REFRESH if self.refresh else SessionAttempt.Kind.INITIAL

    def refuse(
        self, error: errors.ApplicationError, *, outcome: str = Outcome.REJECTED, message: str = ""
    ) -> errors.ApplicationError:
        """Record this request as refused with `error`, unless it has its row; return the error."""
        if not self.recorded:
            message = message or error.message
            if self.workflow_id and self.workflow_id not in allowed_workflows():
                # Only refusals can name a workflow we do not serve: the rest were checked.
                message = f"{message} (workflow_id: {self.workflow_id})"
                self.workflow_id = REFUSED_WORKFLOW
            self.record(
                outcome,
                api_error_code=error.code,
                error_message=message,
                refusal_key=error.refusal_key,
            )
        error.request_id = self.request_id
        return error


def _user_ref_or_blank(user) -> str:
    if user is None or not user.is_authenticated:
        return ""
    try:
        return user_ref_for_user(user)
    except ImproperlyConfigured:  # no CHATKIT_USER_ID_SECRET: the row still names the user
        return ""


def chatkit_session_create(request: SessionRequest) -> SessionGrant:
    """Ask OpenAI for a session for this caller; raise an ApplicationError on any failure.

    Exactly one audit row is written, on every path, and it is committed before the secret is
    returned. A session minted whose row cannot be written is cancelled upstream.
    """
    if request.workflow_id and request.workflow_id not in allowed_workflows():
        raise request.refuse(errors.WorkflowNotAllowed())
    request.workflow_id = request.workflow_id or settings.OPENAI_WORKFLOW_ID
    missing = [
        name
        for name, value in (
            ("OPENAI_API_KEY", settings.OPENAI_API_KEY),
            ("OPENAI_WORKFLOW_ID", request.workflow_id),
        )
        if not value
    ]
    if missing:
        message = f"Not set on the server: {', '.join(missing)}."
        raise request.refuse(
            errors.NotConfigured(), outcome=Outcome.NOT_CONFIGURED, message=message
        )

    breaker = upstream_breaker()
    if refusal := breaker.refusal():
        message = (
            f"Not called: {refusal.failures} upstream calls in a row failed; the next is tried in "
            f"{refusal.seconds_left:.1f} s."
        )
        error = errors.UpstreamCircuitOpen(retry_after=max(math.ceil(refusal.seconds_left), 1))
        raise request.refuse(error, outcome=Outcome.CIRCUIT_OPEN, message=message)

    _database_connection_release()
    try:
        result = chatkit_client().create_session(
            workflow_id=request.workflow_id,
            user=request.identity.user_ref,
            expires_after_seconds=settings.CHATKIT_EXPIRES_AFTER_SECONDS,
            rate_limit_per_minute=settings.CHATKIT_RATE_LIMIT_PER_MINUTE,
            chatkit_configuration=settings.CHATKIT_CONFIGURATION,
        )
    except client.UpstreamError as exc:
        if _upstream_at_fault(exc):
            breaker.failed()
        else:
            breaker.succeeded()  # it answered: a 4xx is about our request, not its health
        outcome, error = upstream_failure(exc)
        request.record(
            outcome,
            status_code=exc.status_code,
            api_error_code=error.code,
            error_type=exc.error_type,
            error_code=exc.error_code,
            error_param=exc.error_param,
            error_message=exc.error_message,
            upstream_request_id=exc.request_id,
            attempts=exc.attempts,
            latency_ms=exc.latency_ms,
        )
        error.request_id = request.request_id
        try:
            raise error from exc
        finally:
            # A frame naming the error its traceback holds is a cycle, as in client.py.
            del error
    except BaseException:
        breaker.failed()  # a bug of ours mid-call: a probe's outcome must never be lost
        raise

    breaker.succeeded()
    try:
        request.record(
            Outcome.SUCCESS,
            status_code=200,
            upstream_request_id=result.request_id,
            session_id=result.session_id,
            expires_at=_expiry(result.expires_at),
            attempts=result.attempts,
            latency_ms=result.latency_ms,
        )
    except Exception:
        # The secret must not leave without its row; the session it opens must not outlive it.
        logger.exception(
            "Session %s was minted but not recorded; cancelling it upstream.", result.session_id
        )
        _session_cancel_quietly(result.session_id)
        raise
    return SessionGrant(
        client_secret=result.client_secret,
        expires_at=result.expires_at,
        attempt_id=request.attempt_id,
        session_id=result.session_id,
    )


def _upstream_at_fault(exc: client.UpstreamError) -> bool:
    """5xx answers, timeouts and no connection trip the breaker; 4xx and odd bodies do not."""
    if isinstance(exc, client.UpstreamTimeout | client.UpstreamNetworkError):
        return True
    return isinstance(exc, client.UpstreamHTTPError) and exc.status_code >= 500


def _database_connection_release() -> None:
    # A logged-in caller's session lookup took a pooled connection, which Django would keep
    # until the response. Hand it back for the upstream's hundreds of milliseconds, or a few
    # slow calls would empty the pool; the audit write takes one again, for a millisecond.
    if getattr(connection, "pool", None) is not None and not connection.in_atomic_block:
        connection.close()


def _expiry(timestamp: int | None) -> datetime | None:
    try:
        return datetime.fromtimestamp(timestamp, UTC) if timestamp else None
    except (OverflowError, OSError, ValueError):  # a year past 9999: kept as unknown
        return None


def _session_cancel_quietly(session_id: str) -> None:
    try:
        chatkit_client().cancel_session(session_id)
    except client.UpstreamError as exc:
        logger.error("Could not cancel session %s upstream: %s", session_id, exc)


# How each kind of upstream failure is recorded (its outcome) and answered (its error). The one
# place that classifies them: the default alert rules match the error codes chosen here.
_OUTCOMES = {
    client.UpstreamTimeout: Outcome.TIMEOUT,
    client.UpstreamNetworkError: Outcome.NETWORK_ERROR,
    client.UpstreamInvalidResponse: Outcome.INVALID_RESPONSE,
    client.UpstreamHTTPError: Outcome.UPSTREAM_ERROR,
}


def upstream_failure(exc: client.UpstreamError) -> tuple[str, errors.ApplicationError]:
    """The audit outcome and the API error for a failed upstream call."""
    outcome = _OUTCOMES[type(exc)]
    error_class = upstream_error_class(outcome=outcome, status_code=exc.status_code)
    detail = exc.error_message if settings.DEBUG else ""
    if error_class is errors.UpstreamRateLimited:
        wait = math.ceil(exc.retry_after) if exc.retry_after else 5
        return outcome, error_class(retry_after=wait, debug_detail=detail)
    return outcome, error_class(debug_detail=detail)


def chatkit_sessions_cancel(*, user_id: int, upstream: client.ChatKitClient | None = None) -> int:
    """Cancel upstream every live session minted for a user; returns how many were cancelled.

    Idempotent: a session that is already cancelled or gone (404) counts as done.
    """
    upstream = upstream or chatkit_client()
    cancelled = 0
    for session_id in live_session_ids_for_user(user_id=user_id):
        try:
            upstream.cancel_session(session_id)
        except client.UpstreamHTTPError as exc:
            if exc.status_code != 404:
                raise
            continue
        cancelled += 1
    return cancelled


def chatkit_sessions_cancel_on_logout(*, user_id: int) -> None:
    """After a logout commits: queue the cancels, or, when the queue is down, cancel inline.

    Inline, each call has LOGOUT_CANCEL_SECONDS and no retry, so a logout waits seconds at
    worst; what still fails is logged, and those sessions live until they expire.
    """
    if publish_safely(CANCEL_TASK, user_id=user_id):
        return
    short = client.ChatKitClient(_client_config(total_timeout=LOGOUT_CANCEL_SECONDS, max_retries=0))
    try:
        chatkit_sessions_cancel(user_id=user_id, upstream=short)
    except client.UpstreamError as exc:
        logger.error(
            "Could not cancel the sessions of user %s at logout; they live until they expire: %s",
            user_id,
            exc,
        )
    finally:
        short.close()


def upstream_error_class(*, outcome: str, status_code: int | None) -> type[errors.ApplicationError]:
    """The API error for an upstream failure recorded with this outcome and status."""
    if outcome == Outcome.TIMEOUT:
        return errors.UpstreamTimedOut
    if outcome == Outcome.INVALID_RESPONSE:
        return errors.UpstreamInvalidResponse
    if status_code in (401, 403):
        return errors.UpstreamAuthFailed
    if status_code == 404:
        return errors.UpstreamWorkflowNotFound
    if status_code == 429:
        return errors.UpstreamRateLimited
    if status_code is not None and 400 <= status_code < 500:
        return errors.UpstreamRejected
    return errors.UpstreamUnavailable
