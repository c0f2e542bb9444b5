import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import OperationalError, connection, transaction
from django.db.models import Count, F, Q
from django.db.models.functions import Coalesce, TruncMinute

from audit import services, stats
from audit.models import AttemptMinuteStat, PendingMinute, SessionAttempt
from audit.services import session_attempt_record
from audit.stats import attempt_stats_aggregate, stats_series

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
WF = "wf_stats"


def record(at: datetime, **fields) -> SessionAttempt:
    values = {"outcome": "success", "status_code": 200, "user_ref": "u1", "workflow_id": WF}
    return session_attempt_record(anonymous=False, started_at=at, **{**values, **fields})


def failure(at: datetime, **fields) -> SessionAttempt:
    values = {"outcome": "upstream_error", "status_code": 401, "error_code": "invalid_api_key"}
    return record(at, **{**values, **fields})


def table() -> set[tuple]:
    return set(
        AttemptMinuteStat.objects.values_list(
            "minute", "workflow_id", "outcome", "status_code", "error_code", "attempts", "users"
        )
    )


def from_scratch() -> set[tuple]:
    """The statistics as a plain GROUP BY over every audit row would give them."""
    rows = (
        SessionAttempt.objects.annotate(
            minute=TruncMinute("created_at"), status=Coalesce("status_code", 0)
        )
        .values("minute", "workflow_id", "outcome", "status", "error_code")
        .annotate(n=Count("id"), users=Count("user_ref", distinct=True, filter=~Q(user_ref="")))
        .values_list("minute", "workflow_id", "outcome", "status", "error_code", "n", "users")
    )
    return set(rows)


def test_counts_and_distinct_users_per_minute():
    record(T0 + timedelta(seconds=1), user_ref="u1")
    record(T0 + timedelta(seconds=30), user_ref="u1")
    record(T0 + timedelta(seconds=59, microseconds=999_999), user_ref="u2")
    failure(T0 + timedelta(seconds=5), user_ref="u1")
    record(T0 + timedelta(minutes=1), outcome="timeout", status_code=None, user_ref="u3")

    assert attempt_stats_aggregate() == 5

    m1 = T0 + timedelta(minutes=1)
    assert table() == {
        (T0, WF, "success", 200, "", 3, 2),
        (T0, WF, "upstream_error", 401, "invalid_api_key", 1, 1),
        (m1, WF, "timeout", 0, "", 1, 1),
    }
    assert table() == from_scratch()
    assert not PendingMinute.objects.exists()
    # The stored minute is what the ORM writes and looks up, on every database.
    assert AttemptMinuteStat.objects.filter(minute=m1).count() == 1


def test_blank_user_refs_are_not_users():
    """Callers refused before they had an identity are recorded with user_ref=""."""
    for second in range(5):
        failure(T0 + timedelta(seconds=second), user_ref="", status_code=None, error_code="")
    record(T0 + timedelta(seconds=10), user_ref="anon_1")
    record(T0 + timedelta(seconds=11), user_ref="anon_2")
    record(T0 + timedelta(seconds=12), user_ref="")
    record(T0 + timedelta(minutes=1), user_ref="")

    attempt_stats_aggregate()

    m1 = T0 + timedelta(minutes=1)
    assert table() == {
        (T0, WF, "upstream_error", 0, "", 5, 0),
        (T0, WF, "success", 200, "", 3, 2),
        (m1, WF, "success", 200, "", 1, 0),
    }
    assert table() == from_scratch()


def test_running_again_changes_nothing():
    for second in range(0, 60, 7):
        record(T0 + timedelta(seconds=second), user_ref=f"u{second % 3}")
    attempt_stats_aggregate()
    before = set(AttemptMinuteStat.objects.values_list("pk", "attempts", "users"))

    assert attempt_stats_aggregate() == 0
    assert set(AttemptMinuteStat.objects.values_list("pk", "attempts", "users")) == before


def test_incremental_run_touches_only_the_new_minutes():
    record(T0)
    failure(T0 + timedelta(minutes=1))
    attempt_stats_aggregate()
    untouched = set(
        AttemptMinuteStat.objects.filter(minute=T0).values_list("pk", "attempts", "users")
    )

    failure(T0 + timedelta(minutes=1, seconds=10), user_ref="u2")
    record(T0 + timedelta(minutes=5))

    assert attempt_stats_aggregate() == 2
    assert (
        set(AttemptMinuteStat.objects.filter(minute=T0).values_list("pk", "attempts", "users"))
        == untouched
    )
    assert table() == from_scratch()
    assert sum(row[5] for row in table()) == SessionAttempt.objects.count() == 4


def test_row_committed_later_with_an_earlier_time_is_counted_next_run():
    record(T0 + timedelta(minutes=3))
    attempt_stats_aggregate()

    # A later id with an earlier created_at: a transaction that started first, committed last.
    late = record(T0 + timedelta(seconds=10), user_ref="slow")
    assert late.pk > SessionAttempt.objects.order_by("pk").first().pk

    assert attempt_stats_aggregate() == 1
    assert (T0, WF, "success", 200, "", 1, 1) in table()
    assert table() == from_scratch()


def test_a_marked_minute_is_recomputed_whole_and_exactly():
    record(T0 + timedelta(seconds=1))
    record(T0 + timedelta(seconds=2), user_ref="u2")
    attempt_stats_aggregate()

    # A mark for a minute already aggregated (a replayed write), and an attempt bulk-loaded
    # into that minute without one: the minute is recomputed from the audit table as it is.
    PendingMinute.objects.create(minute=T0, writes=1)
    SessionAttempt.objects.create(
        created_at=T0 + timedelta(seconds=3),
        outcome="success",
        status_code=200,
        user_ref="u3",
        workflow_id=WF,
    )

    assert attempt_stats_aggregate() == 1
    assert table() == {(T0, WF, "success", 200, "", 3, 3)}


def test_writes_in_one_minute_bump_one_mark():
    for second in range(3):
        record(T0 + timedelta(seconds=second))
    record(T0 + timedelta(minutes=1))

    marks = {mark.minute: mark.writes for mark in PendingMinute.objects.all()}
    # One connection here, so one slot per minute.
    assert marks == {T0: 3, T0 + timedelta(minutes=1): 1}


def test_batches_cover_every_marked_minute():
    for i in range(7):
        record(T0 + timedelta(seconds=20 * i), user_ref=f"u{i % 2}")  # in 3 minutes

    assert attempt_stats_aggregate(batch_minutes=2) == 7
    assert table() == from_scratch()
    assert not PendingMinute.objects.exists()


def test_nothing_pending_folds_nothing():
    assert attempt_stats_aggregate() == 0
    assert not AttemptMinuteStat.objects.exists()
    window = {"since": T0 - timedelta(days=1), "until": T0 + timedelta(days=1)}
    for granularity in ("minute", "hour", "day"):
        assert stats_series(**window, granularity=granularity) == []


@pytest.mark.parametrize("batch_minutes", [1, 2])
def test_a_batch_of_every_marked_minute_or_one_minute_at_a_time(batch_minutes):
    record(T0, user_ref="u1")
    record(T0 + timedelta(seconds=59), user_ref="u2")
    failure(T0 + timedelta(minutes=1), user_ref="u1")

    assert attempt_stats_aggregate(batch_minutes=batch_minutes) == 3
    assert not PendingMinute.objects.exists()
    assert (
        table()
        == from_scratch()
        == {
            (T0, WF, "success", 200, "", 2, 2),
            (T0 + timedelta(minutes=1), WF, "upstream_error", 401, "invalid_api_key", 1, 1),
        }
    )


def test_unicode_and_blank_workflows_are_counted_apart():
    record(T0, workflow_id="wf_日本語", user_ref="anon_é")
    record(T0 + timedelta(seconds=1), workflow_id="wf_日本語", user_ref="anon_é")
    record(T0 + timedelta(seconds=2), workflow_id="", user_ref="u1")

    attempt_stats_aggregate()

    assert (
        table()
        == from_scratch()
        == {
            (T0, "wf_日本語", "success", 200, "", 2, 1),
            (T0, "", "success", 200, "", 1, 1),
        }
    )
    [row] = stats_series(since=T0, until=T0 + timedelta(minutes=1), workflow_id="wf_日本語")
    assert (row["bucket"], row["attempts"], row["peak_users_per_minute"]) == (T0, 2, 1)


def test_a_run_dying_mid_way_loses_nothing(monkeypatch):
    for i in range(5):
        record(T0 + timedelta(minutes=i))
    recompute = stats._minutes_recompute
    calls = []

    def dies_on_second_batch(cursor, minutes):
        calls.append(minutes)
        recompute(cursor, minutes)
        if len(calls) == 2:
            raise RuntimeError("worker killed")

    monkeypatch.setattr(stats, "_minutes_recompute", dies_on_second_batch)
    with pytest.raises(RuntimeError):
        attempt_stats_aggregate(batch_minutes=2)

    # The first batch committed; the second rolled back, claim and upsert alike.
    assert PendingMinute.objects.count() == 3
    assert AttemptMinuteStat.objects.count() == 2

    monkeypatch.setattr(stats, "_minutes_recompute", recompute)
    assert attempt_stats_aggregate() == 3
    assert table() == from_scratch()


def test_series_by_hour_and_day():
    record(T0, user_ref="u1")
    record(T0 + timedelta(seconds=5), user_ref="u2")
    record(T0 + timedelta(minutes=1), user_ref="u1")
    failure(T0 + timedelta(minutes=2))
    record(T0 + timedelta(hours=1), user_ref="u9")
    record(T0 + timedelta(days=1), user_ref="u9")  # outside the window below
    attempt_stats_aggregate()
    window = {"since": T0, "until": T0 + timedelta(hours=2)}

    hourly = stats_series(**window, outcome="success")
    assert [(r["bucket"], r["attempts"], r["peak_users_per_minute"]) for r in hourly] == [
        (T0, 3, 2),
        (T0 + timedelta(hours=1), 1, 1),
    ]
    assert "users" not in hourly[0]

    daily = stats_series(**window, granularity="day")
    assert [(r["bucket"], r["outcome"], r["status_code"], r["attempts"]) for r in daily] == [
        (T0.replace(hour=0), "success", 200, 4),
        (T0.replace(hour=0), "upstream_error", 401, 1),
    ]

    minutes = stats_series(**window, granularity="minute", status_code=401)
    assert minutes == [
        {
            "bucket": T0 + timedelta(minutes=2),
            "workflow_id": WF,
            "outcome": "upstream_error",
            "status_code": 401,
            "error_code": "invalid_api_key",
            "attempts": 1,
            "users": 1,
            "peak_users_per_minute": 1,
        }
    ]
    with pytest.raises(ValueError):
        stats_series(**window, granularity="week")


@pytest.mark.parametrize(
    ("granularity", "since", "until", "buckets"),
    [
        ("minute", T0, T0 + timedelta(minutes=2), [T0, T0 + timedelta(minutes=1)]),
        ("hour", T0, T0 + timedelta(hours=1), [T0]),
        ("day", T0.replace(hour=0), T0.replace(hour=0) + timedelta(days=1), [T0.replace(hour=0)]),
    ],
)
def test_series_include_since_and_exclude_until(granularity, since, until, buckets):
    record(since - timedelta(microseconds=1), user_ref="before")
    record(since, user_ref="first")
    record(until - timedelta(microseconds=1), user_ref="last")
    record(until, user_ref="after")
    attempt_stats_aggregate()

    series = stats_series(since=since, until=until, granularity=granularity)

    assert [row["bucket"] for row in series] == buckets
    assert sum(row["attempts"] for row in series) == 2


def test_series_are_ordered_by_bucket_then_key():
    # Written in the reverse of the expected order, so the order is the query's, not the table's.
    record(T0 + timedelta(hours=1), workflow_id="wf_a")
    record(T0 + timedelta(minutes=1), workflow_id="wf_a", outcome="timeout", status_code=None)
    record(T0, workflow_id="wf_b", outcome="timeout", status_code=None)
    record(T0, workflow_id="wf_b")
    failure(T0, workflow_id="wf_b")
    failure(T0, workflow_id="wf_a")
    attempt_stats_aggregate()
    window = {"since": T0, "until": T0 + timedelta(hours=2)}

    def keys(series):
        return [(row["bucket"], row["workflow_id"], row["outcome"]) for row in series]

    m1, h1 = T0 + timedelta(minutes=1), T0 + timedelta(hours=1)
    assert keys(stats_series(**window, granularity="minute")) == [
        (T0, "wf_a", "upstream_error"),
        (T0, "wf_b", "success"),
        (T0, "wf_b", "timeout"),
        (T0, "wf_b", "upstream_error"),
        (m1, "wf_a", "timeout"),
        (h1, "wf_a", "success"),
    ]
    assert keys(stats_series(**window, granularity="hour")) == [
        (T0, "wf_a", "timeout"),
        (T0, "wf_a", "upstream_error"),
        (T0, "wf_b", "success"),
        (T0, "wf_b", "timeout"),
        (T0, "wf_b", "upstream_error"),
        (h1, "wf_a", "success"),
    ]


def test_series_keep_key_order_for_rows_written_by_different_runs():
    # Filtering by status reads the status index, where a minute's rows lie in the order the
    # runs wrote them: a late row's minute gets its new key after the ones written before.
    failure(T0 + timedelta(seconds=5), workflow_id="wf_b")
    attempt_stats_aggregate()
    failure(T0 + timedelta(seconds=10), workflow_id="wf_a")
    attempt_stats_aggregate()
    window = {"since": T0, "until": T0 + timedelta(hours=1), "status_code": 401}

    for granularity in ("minute", "hour"):
        series = stats_series(**window, granularity=granularity)
        assert [(row["bucket"], row["workflow_id"]) for row in series] == [
            (T0, "wf_a"),
            (T0, "wf_b"),
        ]


def test_series_refuse_an_unknown_granularity_naming_the_known_ones():
    with pytest.raises(ValueError, match="^granularity must be minute, hour or day$"):
        stats_series(since=T0, until=T0 + timedelta(days=7), granularity="week")


def _in_thread(target, errors: list):
    def run():
        try:
            target()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connection.close()

    return threading.Thread(target=run)


def _write_held_open(user_ref: str, mark, errors: list) -> tuple[threading.Thread, threading.Event]:
    """A thread that writes an attempt at T0, marks its minute with mark(), and keeps its
    transaction open until the returned event is set."""
    written, commit = threading.Event(), threading.Event()

    def write():
        with transaction.atomic():
            SessionAttempt.objects.create(
                created_at=T0, outcome="success", status_code=200, user_ref=user_ref, workflow_id=WF
            )
            mark()
            written.set()
            commit.wait(timeout=30)

    thread = _in_thread(write, errors)
    thread.start()
    assert written.wait(timeout=30)
    return thread, commit


@pytest.mark.django_db(transaction=True)
def test_overlapping_runs_while_rows_are_written():
    # Real interleaving on PostgreSQL; on SQLite the same load shows that BEGIN IMMEDIATE
    # serialises the runs and the writers correctly.
    writing = threading.Event()
    writing.set()
    errors: list[Exception] = []

    def write():
        for i in range(300):
            at = T0 + timedelta(seconds=i % 180)  # revisit minutes that were aggregated already
            record(at, user_ref=f"u{i % 17}", outcome="success" if i % 4 else "upstream_error")
        writing.clear()

    def aggregate():
        while writing.is_set():
            attempt_stats_aggregate(batch_minutes=2)

    threads = [_in_thread(write, errors), _in_thread(aggregate, errors)]
    threads.append(_in_thread(aggregate, errors))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not errors
    attempt_stats_aggregate()
    assert SessionAttempt.objects.count() == 300
    assert table() == from_scratch()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_transaction_committing_after_a_run_is_counted_by_the_next():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: SQLite cannot hold two write transactions open")
    errors: list[Exception] = []
    # A new mark, not yet committed: invisible to the run below, so nothing waits for it.
    thread, commit = _write_held_open(
        "slow",
        lambda: PendingMinute.objects.create(minute=T0, slot=services.PENDING_SLOTS),
        errors,
    )
    fast = record(T0 + timedelta(seconds=30), user_ref="fast")  # a later id, committed first
    assert attempt_stats_aggregate() == 1
    assert table() == {(T0, WF, "success", 200, "", 1, 1)}

    commit.set()
    thread.join(timeout=30)
    assert not errors
    assert attempt_stats_aggregate() == 1
    assert table() == {(T0, WF, "success", 200, "", 2, 2)}
    assert fast.pk > SessionAttempt.objects.get(user_ref="slow").pk


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_run_waits_for_a_writer_that_bumped_a_mark_it_claims():
    # The race a DO NOTHING mark would lose: a writer finds its minute already marked, and the
    # run claims that mark before the writer commits. The claim must wait for the writer.
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: SQLite cannot hold two write transactions open")
    record(T0, user_ref="first")  # marks T0, committed
    slot = PendingMinute.objects.get(minute=T0).slot
    errors: list[Exception] = []
    write, commit = _write_held_open(
        "late",
        lambda: PendingMinute.objects.filter(minute=T0, slot=slot).update(writes=F("writes") + 1),
        errors,
    )
    run = _in_thread(attempt_stats_aggregate, errors)
    run.start()
    run.join(timeout=0.5)
    assert run.is_alive()  # waiting on the writer's row lock

    commit.set()
    write.join(timeout=30)
    run.join(timeout=30)
    assert not errors and not run.is_alive()
    assert table() == {(T0, WF, "success", 200, "", 2, 2)}
    assert not PendingMinute.objects.exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_second_run_waits_for_the_first():
    # Two recomputations of one minute must not interleave (the older snapshot could be
    # written last), so a run waits while another holds the aggregation lock.
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: on SQLite BEGIN IMMEDIATE is the lock")
    holding, release = threading.Event(), threading.Event()
    errors: list[Exception] = []

    def first_run():
        with transaction.atomic(), connection.cursor() as cursor:
            stats.aggregation_lock(cursor)
            holding.set()
            release.wait(timeout=30)

    record(T0)
    first = _in_thread(first_run, errors)
    first.start()
    assert holding.wait(timeout=30)
    second = _in_thread(attempt_stats_aggregate, errors)
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive() and PendingMinute.objects.count() == 1

    release.set()
    first.join(timeout=30)
    second.join(timeout=30)
    assert not errors and not second.is_alive()
    assert not PendingMinute.objects.exists()
    assert table() == from_scratch()


def test_attempt_stats_command_prints_hourly_rows():
    from io import StringIO

    from django.core.management import call_command

    from audit.services import session_attempt_record

    for status in (401, 401, 200):
        session_attempt_record(
            outcome="success" if status == 200 else "upstream_error",
            status_code=status,
            workflow_id="wf_cmd",
            user_ref="u_1",
            anonymous=False,
        )
    out = StringIO()
    attempt_stats_aggregate()  # the minute task ran
    call_command("attempt_stats", "--status-code", "401", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("bucket")
    [row] = lines[1:]
    # bucket (date and time), workflow, outcome, status, error code, attempts, peak users
    assert row.split()[2:] == ["wf_cmd", "upstream_error", "401", "-", "2", "1"]


def test_minutes_pending_counts_only_the_marked_minutes_of_the_period():
    for minute in (-1, 0, 0, 2, 5):  # before the period, twice in its first minute, in, after
        record(T0 + timedelta(minutes=minute, seconds=7))
    assert stats.minutes_pending(since=T0, until=T0 + timedelta(minutes=5)) == 2
    attempt_stats_aggregate()
    assert stats.minutes_pending(since=T0, until=T0 + timedelta(minutes=5)) == 0


def _minutes_of_rows(count: int) -> set[datetime]:
    """A row or two in each of `count` minutes from T0, marked as every audit row is."""
    for i in range(count):
        at = T0 + timedelta(minutes=i, seconds=i % 60)
        record(at, user_ref=f"u{i % 5}")
        if i % 7 == 0:
            failure(at, user_ref=f"u{i % 3}")
    return {T0 + timedelta(minutes=i) for i in range(count)}


def _pending() -> set[datetime]:
    return set(PendingMinute.objects.values_list("minute", flat=True))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_large_recompute_runs_its_later_half_on_a_second_connection(monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: SQLite recomputes in one statement")
    minutes = _minutes_of_rows(stats.SPLIT_MINUTES + 1)
    on_its_own = []
    recompute = stats._recompute_on_own_connection

    def spied(half):
        on_its_own.append((sorted(half), threading.get_ident()))
        recompute(half)

    monkeypatch.setattr(stats, "_recompute_on_own_connection", spied)

    assert attempt_stats_aggregate() == len(minutes) + len(range(0, len(minutes), 7))

    [(later_half, thread)] = on_its_own
    assert thread != threading.get_ident()
    assert later_half == sorted(minutes)[len(minutes) // 2 :]
    assert table() == from_scratch()
    assert not _pending()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_small_recompute_stays_on_one_connection(monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: SQLite recomputes in one statement")
    _minutes_of_rows(stats.SPLIT_MINUTES - 1)
    monkeypatch.setattr(stats, "_recompute_on_own_connection", lambda half: pytest.fail("split"))

    attempt_stats_aggregate()

    assert table() == from_scratch()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("committed", [False, True], ids=["before-its-commit", "after-it"])
def test_a_failed_second_connection_leaves_every_minute_marked(monkeypatch, committed):
    # Whether the later half failed before committing or the run failed after it had: the
    # claim rolls back with this half, every minute stays marked, and the next run recomputes
    # them all to the same figures.
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: SQLite recomputes in one statement")
    minutes = _minutes_of_rows(stats.SPLIT_MINUTES)
    recompute = stats._recompute_on_own_connection

    def failing(half):
        if committed:
            recompute(half)
        raise OperationalError("the second connection was lost")

    monkeypatch.setattr(stats, "_recompute_on_own_connection", failing)
    with pytest.raises(OperationalError):
        attempt_stats_aggregate()

    assert _pending() == minutes
    later_half = set(sorted(minutes)[len(minutes) // 2 :])
    assert {row[0] for row in table()} == (later_half if committed else set())
    monkeypatch.undo()
    attempt_stats_aggregate()
    assert table() == from_scratch()
    assert not _pending()
