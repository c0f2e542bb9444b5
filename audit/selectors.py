from django.utils import timezone

from audit.models import SessionAttempt


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
