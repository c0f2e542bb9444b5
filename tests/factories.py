"""Audit rows for tests, written through the real service (pending minutes, alert triggers)."""

from datetime import datetime, timedelta

from audit.models import SessionAttempt
from audit.services import session_attempt_record
from sessions_api.services import upstream_error_class


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
        # What the service records for this failure: the one classification of them.
        "api_error_code": upstream_error_class(outcome=outcome, status_code=status).code,
        "error_message": "Incorrect API key provided: sk-[REDACTED]",
        "error_code": "invalid_api_key" if status == 401 else "",
    }
