from celery import shared_task

from sessions_api.client import UpstreamNetworkError, UpstreamTimeout


@shared_task(
    autoretry_for=(UpstreamNetworkError, UpstreamTimeout),
    retry_backoff=5,
    retry_jitter=True,
    max_retries=3,
)
def chatkit_sessions_cancel_for_user(*, user_id: int) -> int:
    from sessions_api.services import chatkit_sessions_cancel

    return chatkit_sessions_cancel(user_id=user_id)
