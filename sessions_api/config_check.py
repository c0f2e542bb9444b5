"""The configuration check: mint one real session for a synthetic user, then cancel it.

The first thing an operator does after rotating the key or changing the workflow
(`manage.py chatkit_check`, or the button on the admin dashboard). The attempt goes through the
same path as a browser's and gets its audit row, marked as a check so that no alert rule counts
it.
"""

from dataclasses import dataclass

from audit.models import SessionAttempt
from sessions_api import client, errors
from sessions_api.identity import ChatKitIdentity
from sessions_api.services import SessionRequest, chatkit_client, chatkit_session_create

# The `user` sent upstream: one fixed id, so the check's sessions never mix with a person's.
CHECK_USER_REF = "chatkit-config-check"


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    summary: str
    """One line for a terminal or an admin message: what happened, with the ids to look up."""
    attempt: SessionAttempt | None
    """The audit row; None only when it could not be written."""


def chatkit_config_check() -> CheckResult:
    """Mint a session for CHECK_USER_REF and cancel it at once; ok only if both worked."""
    request = SessionRequest(
        identity=ChatKitIdentity(user_ref=CHECK_USER_REF, anonymous=False), check=True
    )
    try:
        grant = chatkit_session_create(request)
    except errors.ApplicationError as exc:
        attempt = _attempt(request.attempt_id)
        return CheckResult(ok=False, summary=_failure(exc, attempt), attempt=attempt)
    attempt = _attempt(grant.attempt_id)
    ids = _ids(attempt)
    try:
        chatkit_client().cancel_session(grant.session_id)
    except client.UpstreamError as exc:
        summary = (
            f"FAILED: minted a session in {attempt.latency_ms} ms but could not cancel it "
            f"({exc}); it expires on its own. {ids}"
        )
        return CheckResult(ok=False, summary=summary, attempt=attempt)
    summary = f"OK: minted a session in {attempt.latency_ms} ms and cancelled it. {ids}"
    return CheckResult(ok=True, summary=summary, attempt=attempt)


def _attempt(attempt_id: int | None) -> SessionAttempt | None:
    return SessionAttempt.objects.filter(pk=attempt_id).first() if attempt_id else None


def _failure(error: errors.ApplicationError, attempt: SessionAttempt | None) -> str:
    if attempt is None:
        return f"FAILED: {error.code}: {error.message} (no audit row could be written)."
    upstream = f" upstream {attempt.status_code}:" if attempt.status_code else ""
    detail = attempt.error_message or error.message
    return f"FAILED: {error.code} ({attempt.outcome}){upstream} {detail} {_ids(attempt)}"


def _ids(attempt: SessionAttempt) -> str:
    upstream = attempt.upstream_request_id or "none"
    return f"(upstream request {upstream}, audit row {attempt.request_id})"
