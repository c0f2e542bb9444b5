from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.models import AttemptBacklog, Heartbeat, SessionAttempt
from sessions_api.redaction import clean_text

ERROR_MESSAGE_LIMIT = 2048


def session_attempt_record(
    *,
    outcome: str,
    user_ref: str,
    anonymous: bool,
    user=None,
    kind: str = SessionAttempt.Kind.INITIAL,
    workflow_id: str = "",
    started_at: datetime | None = None,
    status_code: int | None = None,
    api_error_code: str = "",
    error_type: str | None = "",
    error_code: str | None = "",
    error_param: str | None = "",
    error_message: str | None = "",
    upstream_request_id: str | None = "",
    session_id: str = "",
    expires_at: datetime | None = None,
    attempts: int = 0,
    latency_ms: int | None = None,
    client_ip: str | None = None,
) -> SessionAttempt:
    """Write one audit row in a transaction of its own.

    durable=True makes it an error to call this inside someone else's transaction, whose
    rollback would silently erase the record of a failed attempt.
    """
    attempt = SessionAttempt(
        outcome=outcome,
        kind=kind,
        user=user if user is not None and user.is_authenticated else None,
        username=user.get_username() if user is not None and user.is_authenticated else "",
        user_ref=user_ref,
        anonymous=anonymous,
        workflow_id=workflow_id,
        status_code=status_code,
        api_error_code=api_error_code,
        error_type=(error_type or "")[:64],
        error_code=(error_code or "")[:64],
        error_param=(error_param or "")[:128],
        error_message=clean_text(
            error_message or "", limit=ERROR_MESSAGE_LIMIT, secrets=[settings.OPENAI_API_KEY]
        ),
        upstream_request_id=(upstream_request_id or "")[:128],
        session_id=session_id,
        expires_at=expires_at,
        attempts=attempts,
        latency_ms=latency_ms,
        client_ip=client_ip if settings.CHATKIT_AUDIT_CLIENT_IP else None,
    )
    if started_at is not None:
        attempt.created_at = started_at
    with transaction.atomic(durable=True):
        attempt.save(force_insert=True)
        AttemptBacklog.objects.create(
            attempt=attempt, minute=attempt.created_at.replace(second=0, microsecond=0)
        )
    if outcome != SessionAttempt.Outcome.SUCCESS:
        from audit.alerting import alerts_evaluation_request

        alerts_evaluation_request()
    return attempt


def heartbeat_record(*, name: str) -> None:
    Heartbeat.objects.update_or_create(name=name, defaults={"beat_at": timezone.now()})
