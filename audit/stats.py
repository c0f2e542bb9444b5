"""Per-minute attempt statistics, folded from the audit table in SQL.

Every audit row is written by the same statement as a PendingMinute mark for its minute
(audit/services.py). A run claims marked minutes and recomputes them *entirely* from
audit_sessionattempt, then upserts the result. Recomputing whole minutes instead of adding
increments is what makes the fold exact under every failure the issue lists:

- re-running changes nothing (a minute recomputed twice gives the same figures);
- a row committed late, out of id order, marks its minute again, so that minute is recomputed
  on the next run; counting it again is impossible because nothing is ever added;
- distinct users stay exact, which increments could not give;
- a worker dying mid-run rolls its transaction back, so the claimed marks come back.

The one thing recomputation cannot tolerate is two runs interleaving (the later snapshot could
be overwritten by the earlier one), hence the global lock. Pruning must likewise never delete rows
of a minute that still awaits recomputation: audit/retention.py takes the same lock and skips such
minutes.
"""

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from django.db import connection, transaction
from django.db.models import Max, Sum
from django.db.models.functions import TruncDay, TruncHour

from audit.models import AttemptMinuteStat, PendingMinute

# pg_advisory_xact_lock key shared by the aggregator and the pruner ("audit st" in ASCII).
AGGREGATION_LOCK_KEY = 0x6175646974207374

# Deleting a mark waits for the row lock of a writer that bumped it and has not committed yet,
# so every attempt counted in `writes` is committed, and visible to the recompute (a later
# statement, a later snapshot). A writer that comes after the delete waits for this transaction
# and then marks the minute afresh for the next run. The oldest minutes first, so a backlog
# drains in time order.
_CLAIM_POSTGRESQL = """
    WITH claimed AS (
        DELETE FROM audit_pendingminute
        WHERE minute IN (
            SELECT DISTINCT minute FROM audit_pendingminute ORDER BY minute LIMIT %s
        )
        RETURNING minute, writes
    )
    SELECT minute, SUM(writes) FROM claimed GROUP BY minute
"""
# Per aggregation transaction only: the one running aggregator may sort a batch in memory; JIT
# compilation costs more than it saves on these short statements; and an unflushed commit lost
# in a crash is harmless, since the claim and the upsert are lost together and simply redone.
_SETTINGS_POSTGRESQL = """
    SELECT set_config('work_mem', '64MB', true), set_config('jit', 'off', true),
           set_config('synchronous_commit', 'off', true)
"""

# Each minute is a created_at range, never a truncation of created_at, so the scan follows the
# created_at index and reads only the rows of the claimed minutes. Status 0 stands for "no
# upstream answer" because NULLs never conflict in the unique constraint. A blank user_ref (a
# caller refused before it had an identity) is nobody, so it counts as no user.
_RECOMPUTE_POSTGRESQL = """
    INSERT INTO audit_attemptminutestat
        (minute, workflow_id, outcome, status_code, error_code, attempts, users)
    SELECT m.minute, a.workflow_id, a.outcome, COALESCE(a.status_code, 0), a.error_code,
           SUM(a.requests), COUNT(DISTINCT NULLIF(a.user_ref, ''))
    FROM unnest(%s::timestamptz[]) AS m(minute)
    JOIN audit_sessionattempt a
      ON a.created_at >= m.minute AND a.created_at < m.minute + interval '1 minute'
    GROUP BY 1, 2, 3, 4, 5
    ON CONFLICT (minute, workflow_id, outcome, status_code, error_code)
    DO UPDATE SET attempts = EXCLUDED.attempts, users = EXCLUDED.users
"""

# A recompute of at least this many minutes is split in two halves, run at once on two
# connections: PostgreSQL runs an INSERT … SELECT on one core, and a large recompute is most of
# a full run (docs/benchmarks.md). Fewer minutes are not worth a second connection.
SPLIT_MINUTES = 120

# SQLite stores datetimes as 'YYYY-MM-DD HH:MM:SS[.ffffff]' UTC text, which sorts like time; a
# minute start written as 'YYYY-MM-DD HH:MM:00' is exactly what the ORM writes and looks up for
# AttemptMinuteStat.minute. The minutes arrive as one JSON array (JSON1 is required by Django's
# JSONField anyway), so there is no bound-parameter limit to chunk around. "WHERE 1" resolves
# SQLite's documented parsing ambiguity between a join's ON and the upsert's ON CONFLICT.
_RECOMPUTE_SQLITE = """
    INSERT INTO audit_attemptminutestat
        (minute, workflow_id, outcome, status_code, error_code, attempts, users)
    SELECT m.value, a.workflow_id, a.outcome, COALESCE(a.status_code, 0), a.error_code,
           SUM(a.requests), COUNT(DISTINCT NULLIF(a.user_ref, ''))
    FROM json_each(%s) AS m
    JOIN audit_sessionattempt a
      ON a.created_at >= m.value
     AND a.created_at < strftime('%%Y-%%m-%%d %%H:%%M:00', m.value, '+1 minute')
    WHERE 1
    GROUP BY 1, 2, 3, 4, 5
    ON CONFLICT (minute, workflow_id, outcome, status_code, error_code)
    DO UPDATE SET attempts = EXCLUDED.attempts, users = EXCLUDED.users
"""


def aggregation_lock(cursor) -> None:
    """Serialise aggregation (and pruning) until the current transaction ends.

    SQLite needs nothing: settings open every transaction with BEGIN IMMEDIATE, which already
    takes the database's single write lock.
    """
    # Not mutated: mutation runs use SQLite; CI runs these tests on PostgreSQL.
    if connection.vendor == "postgresql":  # pragma: no mutate block
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [AGGREGATION_LOCK_KEY])


def attempt_stats_aggregate(*, batch_minutes: int = 1440) -> int:
    """Fold the marked minutes into AttemptMinuteStat; return how many attempt writes they held.

    Each batch is one transaction: lock, claim up to batch_minutes minutes, recompute them.
    """
    folded = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            aggregation_lock(cursor)
            claimed = _pending_claim(cursor, batch_minutes)
            if claimed:
                _minutes_recompute(cursor, list(claimed))
        folded += sum(claimed.values())
        if len(claimed) < batch_minutes:
            return folded


def minutes_pending(*, since: datetime, until: datetime) -> int:
    """Minutes of [since, until) with audit rows not yet folded into the statistics: readers
    (reports, commands) say so rather than fold them themselves, which is the task's job."""
    return PendingMinute.objects.filter(minute__gte=since, minute__lt=until).count()


def _pending_claim(cursor, batch_minutes: int) -> dict:
    """Delete the marks of up to batch_minutes minutes; return {minute: attempts written}."""
    # Not mutated: mutation runs use SQLite; CI runs these tests on PostgreSQL.
    if connection.vendor == "postgresql":  # pragma: no mutate block
        cursor.execute(_SETTINGS_POSTGRESQL)
        cursor.execute(_CLAIM_POSTGRESQL, [batch_minutes])
        return dict(cursor.fetchall())
    # The transaction holds SQLite's write lock: nothing can commit between these statements.
    # strftime gives text (a bare datetime column would come back converted) in the very form
    # the ORM stores, so the last minute bounds the delete.
    cursor.execute(
        "SELECT strftime('%%Y-%%m-%%d %%H:%%M:00', minute), SUM(writes)"
        " FROM audit_pendingminute GROUP BY minute ORDER BY minute LIMIT %s",
        [batch_minutes],
    )
    claimed = dict(cursor.fetchall())
    if claimed:
        cursor.execute("DELETE FROM audit_pendingminute WHERE minute <= %s", [max(claimed)])
    return claimed


def _minutes_recompute(cursor, minutes: list) -> None:
    """Recompute the given minutes from the audit table and upsert them."""
    # Not mutated: mutation runs use SQLite; CI runs these tests on PostgreSQL.
    if connection.vendor == "postgresql":  # pragma: no mutate block
        _recompute_postgresql(cursor, minutes)
    else:
        cursor.execute(_RECOMPUTE_SQLITE, [json.dumps(minutes)])


def _recompute_postgresql(cursor, minutes: list) -> None:
    # Not mutated, as above: the PostgreSQL tests of test_stats.py pin it in CI.
    # pragma: no mutate block
    # The other connection sees only what is committed: not when the caller's own transaction
    # (a test's, say) holds rows of its own.
    if len(minutes) < SPLIT_MINUTES or len(connection.atomic_blocks) > 1:
        cursor.execute(_RECOMPUTE_POSTGRESQL, [minutes])
        return
    minutes = sorted(minutes)
    half = len(minutes) // 2
    # The later half commits on its own connection before this transaction commits its claim
    # of both: a failure of either raises here, the claim rolls back, and the minutes are
    # recomputed on the next run (recomputing twice changes nothing). The aggregation lock is
    # held throughout, so no other run or prune touches these minutes meanwhile.
    with ThreadPoolExecutor(max_workers=1) as other:
        later = other.submit(_recompute_on_own_connection, minutes[half:])
        cursor.execute(_RECOMPUTE_POSTGRESQL, [minutes[:half]])
        later.result()


def _recompute_on_own_connection(minutes: list) -> None:
    # pragma: no mutate block
    # A thread of its own has a connection of its own. Its commit comes before the claim's in
    # the WAL, so an unflushed one lost in a crash is lost with the claim (_SETTINGS_POSTGRESQL).
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_SETTINGS_POSTGRESQL)
            cursor.execute(_RECOMPUTE_POSTGRESQL, [minutes])
    finally:
        connection.close()


_TRUNCATIONS = {"hour": TruncHour, "day": TruncDay}


def stats_series(
    *, since: datetime, until: datetime, granularity: str = "hour", **filters
) -> list[dict]:
    """Attempts per bucket and key, for minutes in [since, until).

    Keys are workflow_id, outcome, status_code (0: no upstream answer) and error_code; filters
    are ORM lookups on AttemptMinuteStat (e.g. status_code=401, workflow_id="wf_…").

    Hours and days are derived by query rather than stored as rollups: the minute table holds
    at most one row per minute and key, so it stays small (1,000,000 attempts over 7 days in the
    benchmark make 115,702 rows; an hourly series over those 7 days takes about 0.3 s on
    PostgreSQL, one day about 50 ms), and a single source of truth cannot drift from its
    rollups when a late row makes a minute be recomputed.

    Distinct users cannot be added across minutes (the same user in two minutes would count
    twice), so coarser buckets give `peak_users_per_minute`, the largest per-minute figure;
    minute buckets also give the exact `users`.
    """
    if granularity not in ("minute", *_TRUNCATIONS):
        raise ValueError("granularity must be minute, hour or day")
    rows = AttemptMinuteStat.objects.filter(minute__gte=since, minute__lt=until, **filters)
    keys = ["workflow_id", "outcome", "status_code", "error_code"]
    if granularity == "minute":
        series = rows.values("minute", *keys, "attempts", "users").order_by("minute", *keys)
        return [
            {"bucket": row.pop("minute"), **row, "peak_users_per_minute": row["users"]}
            for row in series
        ]
    series = (
        rows.annotate(bucket=_TRUNCATIONS[granularity]("minute"))
        .values("bucket", *keys)
        .annotate(attempts=Sum("attempts"), peak_users_per_minute=Max("users"))
        .order_by("bucket", *keys)
    )
    return list(series)
