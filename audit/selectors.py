from django.utils import timezone

from audit.models import Heartbeat, SessionAttempt


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
