"""The Prometheus metrics the web processes count, served at /metrics (broker/metrics_endpoint.py).

Under gunicorn (gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR) each worker keeps its values in
memory-mapped files of its own in that directory and /metrics adds every worker's up; anywhere
else (runserver, tests, a management command) they live in the process. An update is a dict
lookup and a write to memory, a few microseconds, with no network and a lock held only for the
write (docs/benchmarks.md, "Metrics").

No label takes a caller's value, so no caller can make new series: outcomes, throttle scopes,
task names and Redis uses come from our code; statuses are HTTP codes; workflows are those
allowed (OPENAI_WORKFLOW_ID, CHATKIT_ALLOWED_WORKFLOWS) and "other". The Celery worker counts
nothing here: what it does (alerts, notifications) is read from the database at scrape time.
"""

import functools
import time

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# A `_created` sample per series doubles the output and multiprocess mode has none anyway.
disable_created_metrics()

NO_STATUS = "none"

SESSION_ATTEMPTS = Counter(
    "chatkit_session_attempts",
    "Session requests by how they ended (the audit outcome), the upstream's HTTP status ('none': "
    "not called or no answer) and the workflow (an allowed one, else 'other'; 'none': not known).",
    ["outcome", "status", "workflow"],
)
UPSTREAM_LATENCY = Histogram(
    "chatkit_upstream_latency_seconds",
    "Time of each upstream session call, retries and backoff included, by outcome.",
    ["outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10),
)
UPSTREAM_RETRIES = Counter(
    "chatkit_upstream_retries", "Upstream attempts beyond the first of each session call."
)
CIRCUIT_STATE = Gauge(
    "chatkit_upstream_circuit_state",
    "The upstream circuit breaker (sessions_api/breaker.py), the worst of the live processes: "
    "0 closed, 1 half-open (one probe goes through), 2 open (answering 503 without calling). "
    "It changes on requests: an open circuit with no traffic stays 2 until the next one.",
    multiprocess_mode="livemax",
)
CIRCUIT_OPENED = Counter(
    "chatkit_upstream_circuit_opened", "Times an upstream circuit opened (a process's breaker)."
)
THROTTLE_REFUSALS = Counter(
    "chatkit_throttle_refusals",
    "Session requests refused by a throttle, by its scope: user, browser, address or budget.",
    ["scope"],
)
ENQUEUE_FAILURES = Counter(
    "broker_enqueue_failures",
    "Celery tasks not published from a web process, by task and reason ('error': the broker "
    "failed; 'paused': Redis failed a moment ago and was not asked). The sweeps catch up.",
    ["task", "reason"],
)
REDIS_FAILURES = Counter(
    "broker_redis_failures",
    "Redis failures that paused its use (broker/redis_breaker.py), by the use that met them.",
    ["use"],
)
REDIS_SKIPPED_UNTIL = Gauge(
    "broker_redis_skipped_until_timestamp_seconds",
    "Unix time until which a live process skips Redis after a failure (the latest of them); "
    "Redis is being skipped while this is above time().",
    multiprocess_mode="livemax",
)
AUDIT_WRITE_FAILURES = Counter(
    "broker_audit_write_failures",
    "Session requests whose audit row could not be written (answered 503 audit_unavailable).",
)

_CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


def status_label(status_code: int | None) -> str:
    """An HTTP status as a label: its code, or 'none'; anything not a status is 'other'."""
    if status_code is None:
        return NO_STATUS
    return str(status_code) if 100 <= status_code <= 599 else "other"


def attempt_observe(
    *, outcome: str, status_code: int | None, workflow: str, attempts: int, latency_ms: int | None
) -> None:
    """Count one session request; `workflow` must already be a bounded label."""
    _child(SESSION_ATTEMPTS, outcome, status_label(status_code), workflow).inc()
    if latency_ms is not None:
        _child(UPSTREAM_LATENCY, outcome).observe(latency_ms / 1000)
    if attempts > 1:
        UPSTREAM_RETRIES.inc(attempts - 1)


@functools.cache
def _child(metric, *labels: str):
    # labels() checks and converts its values and takes a lock on every call, a third of an
    # update's cost; the children of these bounded labels are few, and kept here.
    return metric.labels(*labels)


def circuit_state_set(state: str) -> None:
    CIRCUIT_STATE.set(_CIRCUIT_STATES[state])
    if state == "open":
        CIRCUIT_OPENED.inc()


def redis_failure_count(use: str, *, pause: float) -> None:
    REDIS_FAILURES.labels(use).inc()
    REDIS_SKIPPED_UNTIL.set(time.time() + pause)
