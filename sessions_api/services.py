"""The decision: mint a ChatKit session for one caller, and record the attempt whatever happens."""

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils import timezone

from audit.models import SessionAttempt
from audit.selectors import live_session_ids_for_user
from audit.services import session_attempt_record
from sessions_api import client, errors
from sessions_api.identity import ChatKitIdentity, user_ref_for_user


@dataclass(frozen=True)
class SessionGrant:
    client_secret: str = field(repr=False)
    expires_at: int | None
    attempt_id: int


@lru_cache(maxsize=1)
def chatkit_client() -> client.ChatKitClient:
    """One client per process: it keeps a pooled HTTP session per thread."""
    return client.ChatKitClient(
        client.ClientConfig(
            base_url=settings.OPENAI_BASE_URL,
            api_key=settings.OPENAI_API_KEY,
            connect_timeout=settings.CHATKIT_CONNECT_TIMEOUT,
            read_timeout=settings.CHATKIT_READ_TIMEOUT,
            total_timeout=settings.CHATKIT_TOTAL_TIMEOUT,
            max_retries=settings.CHATKIT_MAX_RETRIES,
        )
    )


@receiver(setting_changed)
def _forget_client(*, setting: str, **kwargs) -> None:
    if setting.startswith(("OPENAI_", "CHATKIT_")) and chatkit_client.cache_info().currsize:
        chatkit_client().close()
        chatkit_client.cache_clear()


def allowed_workflows() -> set[str]:
    return {wf for wf in [settings.OPENAI_WORKFLOW_ID, *settings.CHATKIT_ALLOWED_WORKFLOWS] if wf}


def chatkit_attempt_reject(
    *,
    user,
    identity: ChatKitIdentity | None,
    error: errors.ApplicationError,
    workflow_id: str = "",
    refresh: bool = False,
    client_ip: str | None = None,
) -> SessionAttempt:
    """Record a request refused before any upstream call (bad body, workflow, CSRF, login)."""
    return session_attempt_record(
        outcome=SessionAttempt.Outcome.REJECTED,
        kind=SessionAttempt.Kind.REFRESH if refresh else SessionAttempt.Kind.INITIAL,
        user=user,
        user_ref=identity.user_ref if identity else _user_ref_or_blank(user),
        anonymous=identity.anonymous if identity else not user.is_authenticated,
        workflow_id=workflow_id,
        api_error_code=error.code,
        error_message=error.message,
        client_ip=client_ip,
    )


def _user_ref_or_blank(user) -> str:
    return user_ref_for_user(user) if user.is_authenticated else ""


def chatkit_session_create(
    *,
    user,
    identity: ChatKitIdentity,
    workflow_id: str | None = None,
    refresh: bool = False,
    client_ip: str | None = None,
) -> SessionGrant:
    """Ask OpenAI for a session for this caller; raise an ApplicationError on any failure.

    Exactly one audit row is written per call, on every path.
    """
    started_at = timezone.now()
    workflow = workflow_id or settings.OPENAI_WORKFLOW_ID

    def record(**fields) -> SessionAttempt:
        return session_attempt_record(
            kind=SessionAttempt.Kind.REFRESH if refresh else SessionAttempt.Kind.INITIAL,
            user=user,
            user_ref=identity.user_ref,
            anonymous=identity.anonymous,
            workflow_id=workflow,
            started_at=started_at,
            client_ip=client_ip,
            **fields,
        )

    if workflow_id and workflow_id not in allowed_workflows():
        error = errors.WorkflowNotAllowed()
        attempt = chatkit_attempt_reject(
            user=user,
            identity=identity,
            error=error,
            workflow_id=workflow_id,
            refresh=refresh,
            client_ip=client_ip,
        )
        error.request_id = attempt.id
        raise error

    missing = [
        name
        for name, value in (
            ("OPENAI_API_KEY", settings.OPENAI_API_KEY),
            ("OPENAI_WORKFLOW_ID", workflow),
        )
        if not value
    ]
    if missing:
        error = errors.NotConfigured()
        attempt = record(
            outcome=SessionAttempt.Outcome.NOT_CONFIGURED,
            api_error_code=error.code,
            error_message=f"Not set on the server: {', '.join(missing)}.",
        )
        error.request_id = attempt.id
        raise error

    try:
        result = chatkit_client().create_session(
            workflow_id=workflow,
            user=identity.user_ref,
            expires_after_seconds=settings.CHATKIT_EXPIRES_AFTER_SECONDS,
            rate_limit_per_minute=settings.CHATKIT_RATE_LIMIT_PER_MINUTE,
            chatkit_configuration=settings.CHATKIT_CONFIGURATION,
        )
    except client.UpstreamError as exc:
        error = _application_error_for(exc)
        attempt = record(
            outcome=exc.outcome,
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
        error.request_id = attempt.id
        raise error from exc

    attempt = record(
        outcome=SessionAttempt.Outcome.SUCCESS,
        status_code=200,
        upstream_request_id=result.request_id,
        session_id=result.session_id,
        expires_at=datetime.fromtimestamp(result.expires_at, UTC) if result.expires_at else None,
        attempts=result.attempts,
        latency_ms=result.latency_ms,
    )
    return SessionGrant(
        client_secret=result.client_secret, expires_at=result.expires_at, attempt_id=attempt.id
    )


def _application_error_for(exc: client.UpstreamError) -> errors.ApplicationError:
    detail = (exc.error_message or "") if settings.DEBUG else ""
    if isinstance(exc, client.UpstreamTimeout):
        return errors.UpstreamTimedOut(debug_detail=detail)
    if isinstance(exc, client.UpstreamInvalidResponse):
        return errors.UpstreamInvalidResponse(debug_detail=detail)
    status = exc.status_code
    if status in (401, 403):
        return errors.UpstreamAuthFailed(debug_detail=detail)
    if status == 404:
        return errors.UpstreamWorkflowNotFound(debug_detail=detail)
    if status == 429:
        wait = math.ceil(exc.retry_after) if exc.retry_after else 5
        return errors.UpstreamRateLimited(retry_after=wait, debug_detail=detail)
    if status is not None and 400 <= status < 500:
        return errors.UpstreamRejected(debug_detail=detail)
    return errors.UpstreamUnavailable(debug_detail=detail)


def chatkit_sessions_cancel(*, user_id: int) -> int:
    """Cancel upstream every live session minted for a user; returns how many were cancelled.

    Idempotent: a session that is already cancelled or gone (404) counts as done.
    """
    cancelled = 0
    for session_id in live_session_ids_for_user(user_id=user_id):
        try:
            chatkit_client().cancel_session(session_id)
        except client.UpstreamHTTPError as exc:
            if exc.status_code != 404:
                raise
            continue
        cancelled += 1
    return cancelled
