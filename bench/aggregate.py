"""How fast the audit log folds into per-minute statistics on PostgreSQL.

Creates a scratch database (dropped and re-created on every run), migrates it, bulk-loads
1,000,000 audit rows and marks their minutes as pending in SQL (generate_series; about 90%
successes, the rest 401/404/400/429/5xx answers, timeouts and network errors, four workflows,
about 50,000 distinct user refs, spread over seven days), then times:

  (a) a full aggregation of the 1,000,000 rows (10,080 pending minutes);
  (b) incremental runs over 10,000 new rows on top of the rows already aggregated;
  (c) a naive Python loop over all rows (iterator(chunk_size=…), counting into a dict), for the
      ratio, which also cross-checks the SQL result;
  (d) pruning the rows older than 3 days in default batches (statistics must stay as they are).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/aggregate.py

DATABASE_URL names the server (its database part is ignored); it must be PostgreSQL on this
machine, because the script drops and creates a database there. Results go in docs/benchmarks.md.
"""

import argparse
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1", ""}
STATEMENT_TIMEOUT_MS = 300_000  # no statement of this script may run away

# One row per generate_series value: created_at grows with the id (as appended audit rows do),
# r picks the outcome, the other draws pick workflow, user and latency.
LOAD_SQL = """
INSERT INTO audit_sessionattempt (
    created_at, outcome, kind, status_code, api_error_code, error_type, error_code, error_param,
    error_message, upstream_request_id, session_id, username, user_ref, anonymous, workflow_id,
    attempts, latency_ms
)
SELECT
    %(start)s::timestamptz + (g - 1) * %(span)s::interval / %(rows)s,
    CASE WHEN r < 0.90 THEN 'success' WHEN r < 0.975 THEN 'upstream_error'
         WHEN r < 0.99 THEN 'timeout' ELSE 'network_error' END,
    CASE WHEN w < 0.2 THEN 'refresh' ELSE 'initial' END,
    CASE WHEN r < 0.90 THEN 200 WHEN r < 0.92 THEN 401 WHEN r < 0.93 THEN 404
         WHEN r < 0.95 THEN 400 WHEN r < 0.965 THEN 429 WHEN r < 0.975 THEN 500 + (g %% 4)
         ELSE NULL END,
    CASE WHEN r < 0.90 THEN '' WHEN r < 0.92 THEN 'upstream_auth_failed'
         WHEN r < 0.93 THEN 'upstream_workflow_not_found' WHEN r < 0.95 THEN 'upstream_rejected'
         WHEN r < 0.965 THEN 'upstream_rate_limited' WHEN r < 0.975 THEN 'upstream_unavailable'
         WHEN r < 0.99 THEN 'upstream_timeout' ELSE 'upstream_unavailable' END,
    CASE WHEN r < 0.90 OR r >= 0.975 THEN '' ELSE 'invalid_request_error' END,
    CASE WHEN r < 0.90 THEN '' WHEN r < 0.92 THEN 'invalid_api_key'
         WHEN r < 0.93 THEN 'workflow_not_found' WHEN r < 0.95 THEN 'invalid_value'
         WHEN r < 0.965 THEN 'rate_limit_exceeded' ELSE '' END,
    '',
    CASE WHEN r < 0.90 THEN '' WHEN r < 0.92 THEN 'Incorrect API key provided: sk-…[REDACTED]'
         WHEN r < 0.93 THEN 'Workflow not found' WHEN r < 0.95 THEN 'Invalid value for user'
         WHEN r < 0.965 THEN 'Rate limit reached' WHEN r < 0.975 THEN 'Upstream server error'
         WHEN r < 0.99 THEN 'Upstream did not answer in time' ELSE 'Connection reset' END,
    'req_' || g,
    CASE WHEN r < 0.90 THEN 'cksess_' || g ELSE '' END,
    '',
    'u' || (u * 50000)::int,
    u < 0.1,
    CASE WHEN w < 0.6 THEN 'wf_main' WHEN w < 0.85 THEN 'wf_support'
         WHEN w < 0.97 THEN 'wf_sales' ELSE 'wf_beta' END,
    CASE WHEN r < 0.95 THEN 1 ELSE 3 END,
    CASE WHEN r >= 0.975 THEN NULL ELSE (40 + 400 * l * l)::int END
FROM (
    SELECT g, random() AS r, random() AS w, random() AS u, random() AS l
    FROM generate_series(1, %(rows)s) AS g
) AS draws
"""
# What the audit writes leave behind for the rows above: their minutes marked as pending.
PENDING_SQL = """
INSERT INTO audit_pendingminute (minute, slot, writes)
SELECT date_trunc('minute', created_at, 'UTC'), 0, COUNT(*)
FROM audit_sessionattempt WHERE id > %s GROUP BY 1
ON CONFLICT (minute, slot) DO UPDATE SET writes = audit_pendingminute.writes + EXCLUDED.writes
"""
# --reuse: back to "rows loaded, nothing aggregated" without loading again.
RESET_SQL = [
    "TRUNCATE audit_attemptminutestat, audit_pendingminute",
    "DELETE FROM audit_sessionattempt WHERE id > %(rows)s",
    PENDING_SQL.replace("%s", "0"),
]


def server_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        raise SystemExit(
            "This benchmark needs PostgreSQL: set DATABASE_URL, e.g. "
            "DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres (the database part is "
            "ignored; a scratch database is created next to it)."
        )
    if (parts.hostname or "") not in LOOPBACK:
        raise SystemExit(
            f"DATABASE_URL points at {parts.hostname}: this benchmark drops and creates a "
            "database, so it only runs against PostgreSQL on this machine (loopback)."
        )
    return url


def scratch_database_create(url: str, name: str, *, reuse: bool) -> str:
    import psycopg

    parts = urlsplit(url)
    if not reuse:
        admin = urlunsplit(parts._replace(path="/postgres"))
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}"))


def django_setup(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = "broker.settings"
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-not-a-secret-" + "x" * 30)
    sys.path.insert(0, str(REPO_ROOT))
    import django

    django.setup()


def timed(label: str, function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    seconds = time.perf_counter() - started
    print(f"{label:<52} {seconds:8.3f} s", flush=True)
    return result, seconds


def statement_timer(spent: dict, execute, sql, params, many, context):
    """Adds up time per kind of statement (a connection.execute_wrapper)."""
    started = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        words = sql.split()
        kind = " ".join(words[:4]) if words[0] != "WITH" else "WITH claimed AS (DELETE … RETURNING)"
        spent[kind] += time.perf_counter() - started


def load(rows: int, *, start, span) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT COALESCE(MAX(id), 0) FROM audit_sessionattempt")
        (last_id,) = cursor.fetchone()
        cursor.execute(LOAD_SQL, {"start": start, "span": span, "rows": rows})
        cursor.execute(PENDING_SQL, [last_id])


def analyze() -> None:
    # What autovacuum does on its own a little after a bulk load; without it the planner
    # knows nothing about the new rows.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE audit_sessionattempt")
        cursor.execute("VACUUM ANALYZE audit_pendingminute")
        cursor.execute("VACUUM ANALYZE audit_attemptminutestat")


def naive_python(until, chunk_size: int) -> dict:
    """The obvious Python version: every row through the ORM, counted in dicts and sets."""
    from audit.models import SessionAttempt

    attempts: dict[tuple, int] = defaultdict(int)
    users: dict[tuple, set] = defaultdict(set)
    rows = (
        SessionAttempt.objects.filter(created_at__lt=until)
        .order_by()
        .values_list(
            "created_at", "workflow_id", "outcome", "status_code", "error_code", "user_ref"
        )
    )
    for created_at, workflow_id, outcome, status_code, error_code, user_ref in rows.iterator(
        chunk_size=chunk_size
    ):
        key = (
            created_at.replace(second=0, microsecond=0),
            workflow_id,
            outcome,
            status_code or 0,
            error_code,
        )
        attempts[key] += 1
        users[key].add(user_ref)
    return {key: (count, len(users[key])) for key, count in attempts.items()}


def stat_table(until) -> dict:
    from audit.models import AttemptMinuteStat

    return {
        row[:5]: row[5:]
        for row in AttemptMinuteStat.objects.filter(minute__lt=until)
        .values_list(
            "minute", "workflow_id", "outcome", "status_code", "error_code", "attempts", "users"
        )
        .iterator(chunk_size=10_000)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="audit rows to load")
    parser.add_argument("--incremental", type=int, default=10_000, help="rows per increment")
    parser.add_argument("--rounds", type=int, default=5, help="incremental runs to time")
    parser.add_argument("--database", default="broker_bench", help="scratch database name")
    parser.add_argument("--skip-naive", action="store_true", help="skip the Python loop")
    parser.add_argument(
        "--reuse", action="store_true", help="keep the rows of the last run (iterating on SQL)"
    )
    options = parser.parse_args()

    url = scratch_database_create(server_url(), options.database, reuse=options.reuse)
    django_setup(url)
    from datetime import UTC, datetime, timedelta

    from django.core.management import call_command
    from django.db import connection

    from audit.models import AttemptMinuteStat, SessionAttempt
    from audit.retention import audit_prune
    from audit.stats import attempt_stats_aggregate

    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        (version,) = cursor.fetchone()
        cursor.execute("SET statement_timeout = %s", [STATEMENT_TIMEOUT_MS])
        cursor.execute("SELECT setseed(0.42)")
        cursor.execute("SHOW work_mem")
        (work_mem,) = cursor.fetchone()
    print(f"{version.split(' on ')[0]}, work_mem {work_mem}; Python {platform.python_version()}")
    print(f"{os.cpu_count()} CPUs; database {options.database} (scratch)\n")

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    if options.reuse:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT MAX(created_at) FROM audit_sessionattempt WHERE id <= %s", [options.rows]
            )
            now = (cursor.fetchone()[0] + timedelta(minutes=1)).replace(second=0, microsecond=0)
            for statement in RESET_SQL:
                cursor.execute(statement, {"rows": options.rows})
    else:
        timed(
            f"load {options.rows:,} audit rows + pending minutes (SQL)",
            load,
            options.rows,
            start=now - timedelta(days=7),
            span=timedelta(days=7),
        )
    timed("VACUUM ANALYZE", analyze)

    spent: dict[str, float] = defaultdict(float)
    with connection.execute_wrapper(partial(statement_timer, spent)):
        consumed, full = timed("(a) full aggregation", attempt_stats_aggregate)
    assert consumed == options.rows, consumed
    for statement, seconds in spent.items():
        print(f"    {seconds:6.3f} s in {statement}")
    print(f"    {AttemptMinuteStat.objects.count():,} statistics rows")

    incremental = []
    for round_ in range(options.rounds):
        # The next 10,000 attempts of a busy service: the following two minutes.
        start = now + timedelta(minutes=2 * round_)
        load(options.incremental, start=start, span=timedelta(minutes=2))
        consumed, seconds = timed(
            f"(b) incremental run, {options.incremental:,} new rows (round {round_ + 1})",
            attempt_stats_aggregate,
        )
        assert consumed == options.incremental, consumed
        incremental.append(seconds)
    total = SessionAttempt.objects.count()
    print(f"    on top of {total - options.incremental:,} rows already aggregated")

    if not options.skip_naive:
        naive, naive_seconds = timed(
            f"(c) naive Python loop over the first {options.rows:,} rows",
            naive_python,
            now,
            5_000,
        )
        assert naive == stat_table(now), "the Python loop and the SQL aggregation disagree"
        print("    Python loop and SQL statistics agree row for row")
        print(f"\nfull SQL aggregation is {naive_seconds / full:.1f}x faster than the Python loop")
    # (d) Retention on the same data: everything older than 3 days, default batches.
    stats_before = AttemptMinuteStat.objects.count()
    result, seconds = timed("(d) prune rows older than 3 days", audit_prune, older_than_days=3)
    assert AttemptMinuteStat.objects.count() == stats_before
    print(
        f"    {result.deleted:,} rows in {result.batches} batches, "
        f"{result.deleted / seconds:,.0f} rows/s; statistics untouched"
    )
    print(
        f"summary: full {full:.3f} s (target 3 s), incremental median "
        f"{statistics.median(incremental) * 1000:.1f} ms, max {max(incremental) * 1000:.1f} ms "
        "(target 100 ms)"
    )


if __name__ == "__main__":
    main()
