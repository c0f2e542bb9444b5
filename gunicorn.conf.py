# gunicorn reads this file from the working directory (`make run`, the Dockerfile and
# docker-compose.yml all start gunicorn with it). Every value can be overridden from the
# environment; the defaults are sized for an upstream that answers in hundreds of milliseconds.
#
# Sizing, by Little's law (requests in flight = arrival rate × time in the system):
# - A request costs about 2–4 ms of CPU here (docs/benchmarks.md), nearly all of it Python
#   holding the GIL, so one process can use at most one core: one worker per core. A gevent
#   worker never leaves its core idle while a request waits, so a second worker per core only
#   adds contention: against two per core, one served 15–17 % more sessions per second at
#   0 ms × 64 for 12–14 % less CPU per request (docs/benchmarks.md). Never fewer than two, so
#   that one serves while the other restarts (max_requests) or computes.
# - Each session waits on OpenAI for its latency L. To keep the machine busy the workers must
#   hold rate × L requests in flight: 700/s × 0.3 s = 210 on two cores at a typical 300 ms, and
#   at a slow 1 s upstream, 700 on two cores.
# - Hence gevent's worker: each request is a greenlet, which costs a few kilobytes while it
#   waits on a socket, and switches to the next one without the kernel. With threads (gthread,
#   128 per worker until December 2026) every wait on the upstream, PostgreSQL or Redis gave up
#   the GIL and queued for it again among the worker's threads; against them gevent served
#   7–13 % more sessions per second at 0 ms × 64 and 12–31 % more at 300 ms × 256, with less
#   than half the kernel CPU (alternating pairs, docs/benchmarks.md). Up to 1,000 connections
#   per worker, gunicorn's default, covers the 1 s upstream with room for idle kept-alive
#   connections, each of which holds a greenlet too. psycopg, redis-py and requests all wait
#   cooperatively under gevent.
# - The catch: a greenlet that computes holds its worker's other requests. A request computes
#   for its 2–4 ms; the one long computation, a staff login's password hash (half a second),
#   runs on gevent's thread pool (broker/hashers.py).
# - The upstream client's kept-alive connections are a pool per process (sessions_api/client.py);
#   database connections come from a pool per process (DB_POOL_MAX_SIZE, 8 by default,
#   broker/settings.py), because a signed-in request holds one only to look its caller up, and
#   audit rows are written on one more connection per process (audit/writer.py). broker/checks.py
#   repeats the workers' rule to warn when their connections could pass PostgreSQL's
#   max_connections (a test keeps the two alike).
# GUNICORN_WORKER_CLASS=gthread goes back to threads (GUNICORN_THREADS per worker).
import os
import shutil
import tempfile
from pathlib import Path

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gevent")
workers = int(os.environ.get("WEB_CONCURRENCY", max(2, len(os.sched_getaffinity(0)))))
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
threads = int(os.environ.get("GUNICORN_THREADS", "128"))  # gthread only
# Connections waiting for a free thread; beyond this the kernel refuses them, which a load
# balancer sees at once instead of a request stalling.
backlog = int(os.environ.get("GUNICORN_BACKLOG", "2048"))
# Above the upstream budget (CHATKIT_TOTAL_TIMEOUT, 10 s by default), so the broker answers a
# slow upstream with its own 504 before gunicorn kills the worker.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 20
keepalive = 5
# Every session attempt is already in the audit log; set GUNICORN_ACCESSLOG=- for access lines.
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
max_requests = 20000
max_requests_jitter = 2000

# LOG_FORMAT=json: gunicorn's own lines (start-up, workers, access) are JSON as well, with the
# same formatter and the same redaction as the application's (logs.py, redaction.py).
if os.environ.get("LOG_FORMAT") == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "logs.JsonFormatter"}},
        "filters": {
            "redact": {
                "()": "redaction.RedactSecretsFilter",
                "secrets": [os.environ.get("OPENAI_API_KEY", "")],
            }
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["redact"],
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            name: {"handlers": ["console"], "level": "INFO", "propagate": False}
            for name in ("gunicorn.error", "gunicorn.access")
        },
    }

# Prometheus metrics from every worker (broker/metrics.py): each worker writes its values to
# files of its own in this directory, and /metrics, whichever worker serves it, adds them all
# up. Set before any worker imports prometheus_client, which reads it at import. Without
# PROMETHEUS_MULTIPROC_DIR, a fresh directory of this server's own, removed when it stops.
_metrics_dir_ours = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _metrics_dir_ours:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="broker-metrics-")


def on_starting(server):
    # Files left by an earlier server in a given directory would be counted again.
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()


def post_worker_init(worker):
    # Python's cycle collector, tuned for a worker whose requests leave no cycles behind
    # (broker/middleware.py, ReleaseRequestMiddleware). Figures from `bench/cpu_split.py --gc`
    # (docs/benchmarks.md):
    # - What the worker loaded at start-up (Django, the apps, the URLconf: some 115,000
    #   objects) is frozen, out of the collector's sight. Its full passes scanned them all, for
    #   60-290 ms of CPU, with every request the worker held paused. Collected first: garbage
    #   frozen would never be freed.
    # - A young pass every 10,000 new objects instead of 700. The objects of requests in flight
    #   come and go by the thousand, so at 700 the passes came 140 times in 15 s at 300 ms x 256
    #   (0.13 ms a request, up to 15 ms each), to find nothing. What cycles remain (admin pages,
    #   some errors) are found a little later.
    import gc

    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 (imports the URLconf, else the first request does)
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, *gc.get_threshold()[1:])


def child_exit(server, worker):
    # A worker that exits (max_requests, a crash, a timeout) leaves its counters in the sums,
    # and its gauges ("the worst of the live processes") leave with it.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _metrics_dir_ours:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
