"""Server time of the audit admin over 10,000,000 audit rows on PostgreSQL (issue 9).

Seeds a dedicated database (broker_bench_admin, created if missing, never dropped) with
10,000,000 audit rows spread over 90 days in SQL (generate_series): about 90 % successes, the
rest upstream 401/403/404/400/422/429/5xx answers, timeouts, network errors, a few requests
refused before the upstream call and a few calls skipped by the open circuit; four workflows,
about 200,000 anonymous browsers and 50,000 signed-in users. Their per-minute statistics come
from the product's own aggregation (every minute marked pending, then attempt_stats_aggregate).
Seeding is slow (about six minutes here), so it is done once: a marker table records it and
later runs skip it.

Then it times each admin request with Django's test Client, in process, as a superuser (server
time: URL routing, queries and template rendering, no network), one untimed warm-up and
--repeats timed runs each, and prints median, min and max:

- the unfiltered audit list, and the list filtered by upstream status 401;
- a deep page (?p=9000), and on code with a page cap also the deepest page it allows and the
  "older" keyset link from the first page;
- a search by upstream request id and by the opaque request id (brk_…);
- the CSV export of 10,000 rows: time to the first data row, and to the last byte;
- the per-minute statistics list.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
        .venv/bin/python bench/admin_audit.py [--repeats 5] [--code PATH]

DATABASE_URL names the server (its database part is ignored); it must be PostgreSQL on this
machine. --code measures another checkout (say a worktree of the previous commit, for "before"
figures) against the same data; its migrations are applied first. Results go in
docs/benchmarks.md.
"""

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from aggregate import server_url  # the same local-PostgreSQL guard

REPO_ROOT = Path(__file__).resolve().parents[1]
DATABASE = "broker_bench_admin"
ROWS = 10_000_000
BATCH = 1_000_000
# A row in the middle of the table, so that a search cannot find it on the first page.
PROBE = ROWS // 2 + 17

# Row g of ROWS: created_at runs from 90 days ago to now with g; r picks the outcome, the other
# draws the kind, workflow, caller and latency. Ids are derived from g, so the probes are known.
LOAD_SQL = """
INSERT INTO audit_sessionattempt (
    created_at, outcome, kind, status_code, api_error_code, error_type, error_code, error_param,
    error_message, upstream_request_id, session_id, expires_at, username, user_ref, anonymous,
    workflow_id, attempts, latency_ms, request_id, requests, refusal_key
)
SELECT
    created_at,
    CASE WHEN r < 0.900 THEN 'success' WHEN r < 0.972 THEN 'upstream_error'
         WHEN r < 0.984 THEN 'timeout' WHEN r < 0.990 THEN 'network_error'
         WHEN r < 0.998 THEN 'rejected' ELSE 'circuit_open' END,
    CASE WHEN w < 0.2 THEN 'refresh' ELSE 'initial' END,
    CASE WHEN r < 0.900 THEN 200 WHEN r < 0.915 THEN 401 WHEN r < 0.917 THEN 403
         WHEN r < 0.922 THEN 404 WHEN r < 0.937 THEN 400 WHEN r < 0.940 THEN 422
         WHEN r < 0.955 THEN 429 WHEN r < 0.972 THEN (ARRAY[500, 502, 503, 504])[1 + g %% 4]
         ELSE NULL END,
    CASE WHEN r < 0.900 THEN '' WHEN r < 0.917 THEN 'upstream_auth_failed'
         WHEN r < 0.922 THEN 'upstream_workflow_not_found' WHEN r < 0.940 THEN 'upstream_rejected'
         WHEN r < 0.955 THEN 'upstream_rate_limited' WHEN r < 0.972 THEN 'upstream_unavailable'
         WHEN r < 0.984 THEN 'upstream_timeout' WHEN r < 0.990 THEN 'upstream_unavailable'
         WHEN r < 0.998 THEN (ARRAY['rate_limited', 'invalid_request', 'workflow_not_allowed',
                                    'csrf_failed'])[1 + g %% 4]
         ELSE 'upstream_unavailable' END,
    CASE WHEN r < 0.900 OR r >= 0.972 THEN '' ELSE 'invalid_request_error' END,
    CASE WHEN r < 0.900 THEN '' WHEN r < 0.917 THEN 'invalid_api_key'
         WHEN r < 0.922 THEN 'workflow_not_found' WHEN r < 0.940 THEN 'invalid_value'
         WHEN r < 0.955 THEN 'rate_limit_exceeded' ELSE '' END,
    CASE WHEN r >= 0.922 AND r < 0.940 THEN 'user' ELSE '' END,
    CASE WHEN r < 0.900 THEN '' WHEN r < 0.917 THEN 'Incorrect API key provided: sk-[REDACTED]'
         WHEN r < 0.922 THEN 'Workflow not found' WHEN r < 0.940 THEN 'Invalid value for user'
         WHEN r < 0.955 THEN 'Rate limit reached for requests' WHEN r < 0.972
         THEN 'Upstream server error' WHEN r < 0.984 THEN 'Upstream did not answer in time'
         WHEN r < 0.990 THEN 'Connection reset by peer' WHEN r < 0.998
         THEN 'Refused before the upstream call' ELSE 'Circuit open' END,
    CASE WHEN r < 0.972 THEN 'req_' || md5('upstream' || g) ELSE '' END,
    CASE WHEN r < 0.900 THEN 'cksess_' || md5('session' || g) ELSE '' END,
    CASE WHEN r < 0.900 THEN created_at + interval '10 minutes' END,
    CASE WHEN u < 0.3 THEN 'user' || (u * 166666)::int ELSE '' END,
    CASE WHEN r >= 0.990 AND r < 0.998 AND g %% 4 = 3 THEN ''
         WHEN u < 0.3 THEN 'u_' || md5('user' || (u * 166666)::int)
         ELSE 'anon_' || md5('anon' || (u * 285714)::int) END,
    u >= 0.3,
    CASE WHEN r >= 0.990 AND r < 0.998 AND g %% 4 = 2 THEN '(refused)'
         WHEN w < 0.6 THEN 'wf_main' WHEN w < 0.85 THEN 'wf_support'
         WHEN w < 0.97 THEN 'wf_sales' ELSE 'wf_beta' END,
    CASE WHEN r >= 0.990 THEN 0 WHEN r < 0.940 THEN 1 ELSE 3 END,
    CASE WHEN r >= 0.990 THEN NULL ELSE (40 + 400 * l * l)::int END,
    'brk_' || substr(md5('request' || g), 1, 24),
    CASE WHEN r >= 0.990 AND r < 0.998 AND g %% 4 = 0 THEN 1 + (l * 40)::int ELSE 1 END,
    ''
FROM (
    SELECT g, now() - interval '90 days' + (g - 1) * interval '90 days' / %(rows)s AS created_at,
           random() AS r, random() AS w, random() AS u, random() AS l
    FROM generate_series(%(first)s, %(last)s) AS g
) AS draws
"""
# What the audit writes leave behind for those rows: every minute marked for aggregation.
PENDING_SQL = """
INSERT INTO audit_pendingminute (minute, slot, writes)
SELECT date_trunc('minute', created_at, 'UTC'), 0, COUNT(*) FROM audit_sessionattempt GROUP BY 1
"""
MARKER_TABLE = "bench_admin_seed"


def database_ensure(url: str) -> str:
    import psycopg

    parts = urlsplit(url)
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
    return urlunsplit(parts._replace(path=f"/{DATABASE}"))


def django_setup(url: str, code: Path) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = "broker.settings"
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-not-a-secret-" + "x" * 30)
    os.environ["DJANGO_ALLOWED_HOSTS"] = "testserver"
    os.environ["DJANGO_SSL_REDIRECT"] = "false"
    os.environ["DJANGO_DEBUG"] = "false"
    os.environ.pop("REDIS_URL", None)
    # Long enough for the seeding statements; the requests measured take milliseconds.
    os.environ["DB_STATEMENT_TIMEOUT_MS"] = "1800000"
    sys.path.insert(0, str(code))
    import django

    django.setup()


def seeded_rows(cursor) -> int | None:
    cursor.execute("SELECT to_regclass(%s)", [MARKER_TABLE])
    if cursor.fetchone()[0] is None:
        return None
    cursor.execute(f"SELECT rows, seconds FROM {MARKER_TABLE}")  # noqa: S608 - a constant
    row = cursor.fetchone()
    if row:
        print(f"already seeded: {row[0]:,} rows (seeding took {row[1]:.0f} s); skipping")
    return row[0] if row else None


def seed(rows: int) -> None:
    """Load the rows with the secondary indexes dropped, then build them once: far faster."""
    from django.db import connection

    from audit.stats import attempt_stats_aggregate

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE audit_sessionattempt, audit_pendingminute, audit_attemptminutestat"
            " RESTART IDENTITY CASCADE"
        )
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'audit_sessionattempt'"
            " AND indexname NOT IN (SELECT conname FROM pg_constraint)"
        )
        indexes = cursor.fetchall()
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        for first in range(1, rows + 1, BATCH):
            last = min(first + BATCH - 1, rows)
            cursor.execute(LOAD_SQL, {"rows": rows, "first": first, "last": last})
            print(f"  loaded {last:,} rows ({time.perf_counter() - started:.0f} s)", flush=True)
        cursor.execute("SET maintenance_work_mem = '512MB'")
        for name, definition in indexes:
            cursor.execute(definition)
            print(f"  index {name} ({time.perf_counter() - started:.0f} s)", flush=True)
        cursor.execute(PENDING_SQL)
    folded = attempt_stats_aggregate()
    print(f"  statistics: {folded:,} attempts folded ({time.perf_counter() - started:.0f} s)")
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE audit_sessionattempt")
        cursor.execute("VACUUM ANALYZE audit_attemptminutestat")
        seconds = time.perf_counter() - started
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (rows bigint, seconds float)")
        cursor.execute(f"INSERT INTO {MARKER_TABLE} VALUES (%s, %s)", [rows, seconds])  # noqa: S608
    print(f"seeded {rows:,} rows in {seconds:.0f} s")


def timed_get(client, url: str, *, first_row: bool = False) -> tuple[float, object]:
    """Seconds until the response is complete, or until its first data row (a stream's)."""
    started = time.perf_counter()
    response = client.get(url)
    if response.streaming:
        chunks = iter(response.streaming_content)
        seen = b""
        while first_row and seen.count(b"\n") < 2:
            seen += next(chunks)
        first = time.perf_counter() - started
        total = len(seen) + sum(len(chunk) for chunk in chunks)
        response.close()
        if first_row:
            return first, (response.status_code, total)
    else:
        total = len(response.content)
    return time.perf_counter() - started, (response.status_code, total)


def measure(client, label: str, url: str, repeats: int, **kwargs) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    _, result = timed_get(client, url, **kwargs)  # warm-up, not counted
    times = []
    with CaptureQueriesContext(connection) as queries:
        for _ in range(repeats):
            seconds, result = timed_get(client, url, **kwargs)
            times.append(seconds * 1000)
    per_request = len(queries) // repeats
    print(
        f"{label:<44} median {statistics.median(times):8.1f} ms  "
        f"(min {min(times):7.1f}, max {max(times):7.1f})  {per_request:2d} queries  {result}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per request")
    parser.add_argument("--rows", type=int, default=ROWS, help="audit rows to seed")
    parser.add_argument(
        "--code", type=Path, default=REPO_ROOT, help="checkout to measure (default: this one)"
    )
    options = parser.parse_args()

    url = database_ensure(server_url())
    django_setup(url, options.code.resolve())
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.urls import NoReverseMatch, reverse

    started = time.perf_counter()
    call_command("migrate", verbosity=0)
    print(f"migrate: {time.perf_counter() - started:.1f} s")
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        (version,) = cursor.fetchone()
        if seeded_rows(cursor) != options.rows:
            seed(options.rows)
        cursor.execute("SELECT MAX(id) FROM audit_sessionattempt")
        (last_id,) = cursor.fetchone()
    print(f"{version.split(' on ')[0]}; Python {platform.python_version()}; {os.cpu_count()} CPUs")
    print(f"code: {options.code.resolve()}\n")

    user, _ = get_user_model().objects.get_or_create(
        username="bench_admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    changelist = reverse("admin:audit_sessionattempt_changelist")
    probe = PROBE
    upstream_id = _one("SELECT upstream_request_id FROM audit_sessionattempt WHERE id = %s", probe)
    request_id = _one("SELECT request_id FROM audit_sessionattempt WHERE id = %s", probe)
    assert upstream_id and request_id, f"row {probe} has no upstream request id: reseed"

    runs = [
        ("audit list, unfiltered", changelist),
        ("audit list, upstream status 401", changelist + "?status_code__exact=401"),
        ("audit list, outcome circuit_open", changelist + "?outcome__exact=circuit_open"),
        ("audit list, last 24 hours", changelist + "?created_at__last=24h"),
        ("audit list, page 9000", changelist + "?p=9000"),
        ("audit list, page 100", changelist + "?p=100"),
        ("audit list, older than row (keyset)", changelist + f"?before_id={last_id - 20_000}"),
        ("search, upstream request id", changelist + f"?q={upstream_id}"),
        ("search, request id (brk_…)", changelist + f"?q={request_id}"),
        ("attempt detail page", reverse("admin:audit_sessionattempt_change", args=[probe])),
        ("statistics list", reverse("admin:audit_attemptminutestat_changelist")),
    ]
    for label, target in runs:
        measure(client, label, target, options.repeats)
    try:
        export = reverse("admin:audit_sessionattempt_export")
    except NoReverseMatch:
        print("CSV export: none in this code")
    else:
        measure(client, "CSV export, first data row", export, options.repeats, first_row=True)
        measure(client, "CSV export, all of 10,000 rows", export, options.repeats)


def _one(sql: str, *params):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return row[0] if row else None


if __name__ == "__main__":
    main()
