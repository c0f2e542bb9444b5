from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from audit.alerting.sweep import SWEEP_HEARTBEAT
from audit.selectors import heartbeat_status

# Beat sends the sweep every minute: five missed in a row means beat or the worker is down.
SWEEP_STALE_AFTER_SECONDS = 300

# Bodies stay minimal on purpose (no versions, settings or errors): these URLs are unauthenticated.


@require_GET
def liveness(request: HttpRequest) -> JsonResponse:
    """The process answers: nothing else is checked, so a restart is never the cure for an
    outage elsewhere."""
    return JsonResponse({"status": "ok"})


@require_GET
def readiness(request: HttpRequest) -> JsonResponse:
    """200 while the database answers (sessions can be minted and audited), for load balancers.

    The cache is reported, never failed on: without Redis the broker still mints and audits,
    counting throttles per process and catching statistics up later.
    """
    if not database_answers():
        return _database_unreachable()
    cache_ok = cache_answers()
    return JsonResponse(
        {
            "status": "ok" if cache_ok else "degraded",
            "database": "ok",
            "cache": "ok" if cache_ok else "unreachable",
        }
    )


@require_GET
def scheduler_health(request: HttpRequest) -> JsonResponse:
    """503 when the minute sweep has not run lately (beat or worker stopped), for monitoring."""
    try:
        scheduler = heartbeat_status(name=SWEEP_HEARTBEAT, stale_after=SWEEP_STALE_AFTER_SECONDS)
    except Exception:  # noqa: BLE001 - reading the heartbeat is reading the database
        return _database_unreachable()
    return JsonResponse(scheduler, status=200 if scheduler["status"] == "ok" else 503)


def _database_unreachable() -> JsonResponse:
    return JsonResponse({"status": "error", "database": "unreachable"}, status=503)


def database_answers() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 - any failure means "not ready"
        return False


def cache_answers() -> bool:
    try:
        cache.get("readiness-probe")
        return True
    except Exception:  # noqa: BLE001 - any failure means "degraded"
        return False
