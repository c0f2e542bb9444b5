from django.conf import settings
from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver


@receiver(user_logged_out)
def cancel_chatkit_sessions_on_logout(sender, request, user, **kwargs) -> None:
    """A logged-out browser must not keep chatting on a secret minted for the user."""
    if user is None or not settings.CHATKIT_CANCEL_ON_LOGOUT:
        return
    from django.db import transaction

    from sessions_api.services import chatkit_sessions_cancel_on_logout

    user_id = user.pk
    transaction.on_commit(lambda: chatkit_sessions_cancel_on_logout(user_id=user_id))
