from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from audit.alerting import SWEEP_HEARTBEAT
from audit.selectors import heartbeat_status

# Beat sends the sweep every minute: five missed in a row means beat or the worker is down.
SWEEP_STALE_AFTER_SECONDS = 300


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """Web liveness and database reachability, for load balancers and docker-compose.

    The scheduler's state is reported too, but never fails this check: a web process cannot
    fix a stopped beat, and a load balancer would only take healthy web servers away.
    """
    scheduler = _scheduler()
    if scheduler is None:
        return _database_unreachable()
    return JsonResponse({"status": "ok", "database": "ok", "scheduler": scheduler})


@require_GET
def scheduler_health(request: HttpRequest) -> JsonResponse:
    """503 when the minute sweep has not run lately (beat or worker stopped), for monitoring."""
    scheduler = _scheduler()
    if scheduler is None:
        return _database_unreachable()
    return JsonResponse(scheduler, status=200 if scheduler["status"] == "ok" else 503)


def _database_unreachable() -> JsonResponse:
    return JsonResponse({"status": "error", "database": "unreachable"}, status=503)


def _scheduler() -> dict | None:
    """The sweep's heartbeat; None when the database cannot be read (reading it is the check)."""
    try:
        return heartbeat_status(name=SWEEP_HEARTBEAT, stale_after=SWEEP_STALE_AFTER_SECONDS)
    except Exception:  # noqa: BLE001 - any database failure means "not ready"
        return None
