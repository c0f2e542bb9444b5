"""Audit rows for tests, written through the real service (so backlog and triggers run too)."""

from datetime import datetime, timedelta

from audit.models import SessionAttempt
from audit.services import session_attempt_record


def record_attempts(
    n: int,
    *,
    at: datetime,
    workflow: str,
    status: int | None = 401,
    outcome: str = "upstream_error",
    **extra,
) -> list[SessionAttempt]:
    """n attempts one second apart from `at`, each from its own anonymous browser."""
    return [
        session_attempt_record(
            outcome=outcome,
            status_code=status,
            workflow_id=workflow,
            user_ref=f"anon_{i}",
            anonymous=True,
            started_at=at + timedelta(seconds=i),
            **{**_error_fields(outcome, status), **extra},
        )
        for i in range(n)
    ]


def _error_fields(outcome: str, status: int | None) -> dict:
    if outcome == "success":
        return {}
    return {
        "error_message": "Incorrect API key provided: sk-[REDACTED]",
        "error_code": "invalid_api_key" if status == 401 else "",
    }
