from django.utils import timezone

from audit.alerting.rules import DEFAULT_RULES
from audit.models import Alert, Heartbeat, SessionAttempt


def live_session_ids_for_user(*, user_id: int) -> list[str]:
    """ChatKit sessions minted for a user that have not expired yet, newest first."""
    return list(
        SessionAttempt.objects.filter(
            user_id=user_id,
            outcome=SessionAttempt.Outcome.SUCCESS,
            expires_at__gt=timezone.now(),
        )
        .exclude(session_id="")
        .values_list("session_id", flat=True)
    )


def heartbeat_status(*, name: str, stale_after: int) -> dict:
    """How long ago a scheduled job last ran, and whether that is longer than stale_after s."""
    beat_at = Heartbeat.objects.filter(name=name).values_list("beat_at", flat=True).first()
    if beat_at is None:
        return {"status": "unknown", "last_run": None, "age_seconds": None}
    age = int((timezone.now() - beat_at).total_seconds())
    return {
        "status": "stale" if age > stale_after else "ok",
        "last_run": beat_at.isoformat(),
        "age_seconds": age,
    }


def alerts_for_attempt(attempt: SessionAttempt) -> list[Alert]:
    """The incidents an attempt belongs to, by the rules' own definition of membership.

    An incident counts the attempts that match its rule (the error code the browser got) on its
    key (workflow, and status for per-status rules) from first_seen to last_seen, so exactly
    those are its members; its sample_attempt_ids are only the latest few of them. One query on
    the small alert table.
    """
    rules = [rule for rule in DEFAULT_RULES if attempt.api_error_code in rule.error_codes]
    if not rules:
        return []
    per_status = {rule.name: rule.per_status for rule in rules}
    candidates = Alert.objects.filter(
        rule__in=per_status,
        workflow_id=attempt.workflow_id,
        first_seen__lte=attempt.created_at,
        last_seen__gte=attempt.created_at,
    ).order_by("-first_seen")
    return [
        alert
        for alert in candidates
        if not per_status[alert.rule] or alert.status_code == attempt.status_code
    ]
