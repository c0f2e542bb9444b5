"""How long the admin dashboard (the admin's front page) takes to render, on PostgreSQL.

Creates a scratch database (dropped and re-created unless --reuse), migrates it and seeds, in
SQL (generate_series):

  - 90 days of per-minute statistics for four workflows: about 77 attempts a minute (10 million
    over the 90 days), 90 % successes on a daily curve, and 401/404/400/429/5xx answers,
    timeouts, network errors and refusals that come and go (about a million statistics rows);
  - the audit rows of the last 7 days at the same rate (bench/aggregate.py's mix, with latency),
    which the latency percentiles and the sample messages read;
  - a few firing alerts and a year of daily error reports.

Then, for each window (1 h, 24 h, 7 d), it renders /admin/?window=… as a logged-in superuser
through Django's test client (middleware, queries and template: the server's whole work, no
network) once to warm up and --runs times, and prints the median, min and max. It also times
the latency percentiles of 7 days with and without the cap the dashboard uses.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/admin_dashboard.py

DATABASE_URL names the server (its database part is ignored); it must be PostgreSQL on this
machine. Target (issue 9): ≤ 500 ms per dashboard. Results go in docs/benchmarks.md.
"""

import argparse
import os
import platform
import statistics
import time
from datetime import UTC, datetime, timedelta

from aggregate import (
    LOAD_SQL,
    STATEMENT_TIMEOUT_MS,
    analyze,
    django_setup,
    scratch_database_create,
    server_url,
)

MINUTES = 90 * 24 * 60
# One candidate row per minute, workflow and kind; rows whose draw is 0 are not stored. A kind
# is (outcome, status, error code, chance that the minute has it, most attempts it then has).
STATS_SQL = """
INSERT INTO audit_attemptminutestat
    (minute, workflow_id, outcome, status_code, error_code, attempts, users)
SELECT minute, workflow, outcome, status, code, n, GREATEST(1, (n * 0.8)::int)
FROM (
    SELECT m.minute, w.workflow, k.outcome, k.status, k.code,
        CASE WHEN k.outcome = 'success'
            THEN (70 * w.share * (0.75 + 0.35 * sin(2 * pi() * extract(epoch FROM m.minute)
                  / 86400)) * (0.8 + 0.4 * random()))::int
            WHEN random() < k.chance THEN 1 + (random() * k.most)::int
            ELSE 0 END AS n
    FROM generate_series(
        %(start)s::timestamptz,
        %(start)s::timestamptz + (%(minutes)s - 1) * interval '1 minute',
        interval '1 minute'
    ) AS m(minute)
    CROSS JOIN (VALUES ('wf_main', 0.6), ('wf_support', 0.25), ('wf_sales', 0.12),
                       ('wf_beta', 0.03)) AS w(workflow, share)
    CROSS JOIN (VALUES
        ('success', 200, '', 1.0, 0),
        ('upstream_error', 401, 'invalid_api_key', 0.05, 3),
        ('upstream_error', 404, 'workflow_not_found', 0.01, 2),
        ('upstream_error', 400, 'invalid_value', 0.10, 2),
        ('upstream_error', 429, 'rate_limit_exceeded', 0.08, 4),
        ('upstream_error', 500, '', 0.06, 2),
        ('upstream_error', 503, '', 0.04, 2),
        ('timeout', 0, '', 0.05, 2),
        ('network_error', 0, '', 0.02, 1),
        ('rejected', 0, '', 0.15, 3)
    ) AS k(outcome, status, code, chance, most)
) AS draws
WHERE n > 0
"""
ALERTS_SQL = """
INSERT INTO audit_alert (rule, fingerprint, state, severity, status_code, workflow_id, error_code,
    first_seen, last_seen, count, threshold, window_seconds, sample_message, sample_attempt_ids,
    notifications_sent, acknowledged_by, created_at)
SELECT 'upstream_auth', md5(g::text), CASE WHEN g <= 5 THEN 'firing' ELSE 'resolved' END,
    'critical', 401, 'wf_main', 'invalid_api_key', now() - g * interval '1 hour', now(), 10 * g,
    3, 300, 'Incorrect API key provided', '[]', 1, '', now()
FROM generate_series(1, 200) AS g
"""
REPORTS_SQL = """
INSERT INTO audit_errorreport (period_start, period_end, data, text, email_attempts, email_error,
    created_at)
SELECT d, d + interval '1 day',
    '{"attempts": 110000, "errors": 11000, "success_rate": 0.9}'::jsonb, 'report', 0, '', now()
FROM generate_series(date_trunc('day', now()) - interval '365 days',
                     date_trunc('day', now()) - interval '1 day', interval '1 day') AS d
"""


def seed(now: datetime, audit_rows: int) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        # Seeding a million rows takes longer than the service's own statement limit.
        cursor.execute("SET statement_timeout = %s", [STATEMENT_TIMEOUT_MS])
        started = time.perf_counter()
        cursor.execute(STATS_SQL, {"start": now - timedelta(days=90), "minutes": MINUTES})
        print(
            f"seeded {cursor.rowcount:,} statistics rows in {time.perf_counter() - started:.1f} s"
        )
        started = time.perf_counter()
        cursor.execute(
            LOAD_SQL,
            {"start": now - timedelta(days=7), "span": timedelta(days=7), "rows": audit_rows},
        )
        print(f"seeded {audit_rows:,} audit rows in {time.perf_counter() - started:.1f} s")
        cursor.execute(ALERTS_SQL)
        cursor.execute(REPORTS_SQL)
        cursor.execute("RESET statement_timeout")
    analyze()


def render_times(client, window: str, runs: int) -> tuple[list[float], int, float]:
    """Seconds per render, and the queries of one render with the time spent in them."""
    from django.db import connection

    spent = []

    def timer(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            spent.append(time.perf_counter() - started)

    with connection.execute_wrapper(timer):
        response = client.get("/admin/", {"window": window}, secure=True)  # warm-up
    assert response.status_code == 200, response.status_code
    assert b'<svg class="chart"' in response.content, "no chart drawn"
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        client.get("/admin/", {"window": window}, secure=True)
        seconds.append(time.perf_counter() - started)
    return seconds, len(spent), sum(spent)


def latency_times(now: datetime, runs: int) -> dict[str, list[float]]:
    from audit.dashboard import LATENCY_SAMPLE
    from audit.reports import latency_percentiles

    since = now - timedelta(days=7)
    spent: dict[str, list[float]] = {}
    for label, latest in (("capped", LATENCY_SAMPLE), ("whole week", None)):
        spent[label] = []
        for _ in range(runs):
            started = time.perf_counter()
            result = latency_percentiles(since, now, latest=latest)
            spent[label].append(time.perf_counter() - started)
        print(f"    latency, 7 days, {label}: {result}")
    return spent


def summary(seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return f"median {statistics.median(ms):7.1f} ms   min {min(ms):7.1f}   max {max(ms):7.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed renders per window (≥ 5)")
    parser.add_argument(
        "--audit-rows", type=int, default=780_000, help="audit rows over the last 7 days"
    )
    parser.add_argument("--database", default="broker_bench_dash", help="scratch database name")
    parser.add_argument("--reuse", action="store_true", help="keep the data of the last run")
    options = parser.parse_args()

    url = scratch_database_create(server_url(), options.database, reuse=options.reuse)
    # The test client's host, and production settings otherwise (DEBUG off).
    os.environ["DJANGO_ALLOWED_HOSTS"] = "testserver"
    django_setup(url)
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from audit.models import AttemptMinuteStat, SessionAttempt

    call_command("migrate", verbosity=0)
    now = datetime.now(UTC)
    if not options.reuse:
        seed(now, options.audit_rows)
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        version = cursor.fetchone()[0].split(" on ")[0]
    print(f"{version}; Python {platform.python_version()}; {os.cpu_count()} CPUs")
    print(
        f"{AttemptMinuteStat.objects.count():,} statistics rows, "
        f"{SessionAttempt.objects.count():,} audit rows; {options.runs} runs per window\n"
    )

    admin, _ = get_user_model().objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(admin)
    for window in ("1h", "24h", "7d"):
        seconds, queries, in_queries = render_times(client, window, options.runs)
        print(
            f"dashboard ?window={window:<4} {summary(seconds)}   "
            f"({queries} queries, {in_queries * 1000:.0f} ms in them at warm-up)"
        )
    for label, seconds in latency_times(now, options.runs).items():
        print(f"latency percentiles, 7 days, {label:<10} {summary(seconds)}")


if __name__ == "__main__":
    main()
