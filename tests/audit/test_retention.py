from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit import retention
from audit.checks import alerting_settings_check
from audit.management.commands.prune_audit import Command as PruneCommand
from audit.models import AttemptMinuteStat, PendingMinute, SessionAttempt
from audit.retention import audit_prune
from audit.services import session_attempt_record
from audit.stats import attempt_stats_aggregate

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=40)


def record(at: datetime, **fields) -> SessionAttempt:
    values = {"outcome": "success", "status_code": 200, "user_ref": "u1", "workflow_id": "wf_r"}
    return session_attempt_record(anonymous=False, started_at=at, **{**values, **fields})


def deletes_of_audit_rows(queries) -> list[str]:
    return [q["sql"] for q in queries if q["sql"].startswith("DELETE FROM audit_sessionattempt")]


def test_deletes_old_rows_in_bounded_batches():
    old = [record(OLD + timedelta(minutes=i)).pk for i in range(5)]
    recent = [record(NOW - timedelta(days=29)).pk, record(NOW).pk]

    with CaptureQueriesContext(connection) as queries:
        result = audit_prune(older_than_days=30, batch_size=2, now=NOW)

    assert (result.deleted, result.batches, result.kept, result.dry_run) == (5, 3, 0, False)
    assert result.cutoff == NOW - timedelta(days=30)
    # 2 + 2 + 1: the short third batch shows nothing is left, so there is no fourth.
    assert len(deletes_of_audit_rows(queries.captured_queries)) == 3
    assert sorted(SessionAttempt.objects.values_list("pk", flat=True)) == sorted(recent)
    assert not SessionAttempt.objects.filter(pk__in=old).exists()


def test_dry_run_deletes_nothing():
    for i in range(3):
        record(OLD + timedelta(minutes=i))
    record(NOW)

    result = audit_prune(older_than_days=30, dry_run=True, now=NOW)

    assert (result.deleted, result.batches, result.dry_run) == (3, 0, True)
    assert SessionAttempt.objects.count() == 4
    assert PendingMinute.objects.count() == 4  # not even the statistics were folded


def test_running_again_deletes_nothing_more():
    for i in range(3):
        record(OLD + timedelta(minutes=i))
    audit_prune(older_than_days=30, now=NOW)

    again = audit_prune(older_than_days=30, now=NOW)

    assert (again.deleted, again.batches) == (0, 0)


def test_rows_from_a_minute_awaiting_aggregation_on_are_kept(monkeypatch):
    # A mark that arrived after the fold: its minute will be recomputed from the audit table,
    # so none of that minute's rows may go yet, or the statistics would shrink.
    monkeypatch.setattr(retention, "attempt_stats_aggregate", lambda: 0)
    earlier = record(OLD - timedelta(minutes=5))
    pending = record(OLD)
    same_minute = SessionAttempt.objects.create(  # aggregated before the pending one arrived
        created_at=OLD + timedelta(seconds=30),
        outcome="success",
        status_code=200,
        workflow_id="wf_r",
    )
    PendingMinute.objects.exclude(minute=OLD).delete()  # the rest is aggregated

    result = audit_prune(older_than_days=30, now=NOW)

    assert (result.deleted, result.kept) == (1, 2)
    assert not SessionAttempt.objects.filter(pk=earlier.pk).exists()
    assert SessionAttempt.objects.filter(pk__in=[pending.pk, same_minute.pk]).count() == 2

    monkeypatch.undo()
    attempt_stats_aggregate()
    assert AttemptMinuteStat.objects.get(minute=OLD).attempts == 2
    assert audit_prune(older_than_days=30, now=NOW).deleted == 2


def test_statistics_survive_pruning():
    for i in range(4):
        record(OLD + timedelta(seconds=10 * i), user_ref=f"u{i % 2}")
    session_attempt_record(
        outcome="upstream_error", status_code=401, user_ref="u1", anonymous=False, started_at=OLD
    )

    result = audit_prune(older_than_days=30, now=NOW)  # folds the pending minutes first

    assert result.deleted == 5 and not SessionAttempt.objects.exists()
    assert set(AttemptMinuteStat.objects.values_list("outcome", "attempts", "users")) == {
        ("success", 4, 2),
        ("upstream_error", 1, 1),
    }
    # A later run recomputes nothing from the (now empty) minute.
    attempt_stats_aggregate()
    assert sum(AttemptMinuteStat.objects.values_list("attempts", flat=True)) == 5


@pytest.mark.parametrize(("batch_size", "batches", "statements"), [(1, 3, 4), (3, 1, 2)])
def test_batches_of_one_row_or_of_exactly_every_due_row(batch_size, batches, statements):
    for i in range(3):
        record(OLD + timedelta(minutes=i))
    kept = record(NOW)

    with CaptureQueriesContext(connection) as queries:
        result = audit_prune(older_than_days=30, batch_size=batch_size, now=NOW)

    assert (result.deleted, result.batches, result.kept) == (3, batches, 0)
    # A full batch may hide more rows: one more DELETE finds none.
    assert len(deletes_of_audit_rows(queries.captured_queries)) == statements
    assert list(SessionAttempt.objects.values_list("pk", flat=True)) == [kept.pk]


def test_the_nightly_default_deletes_5000_rows_per_transaction():
    SessionAttempt.objects.bulk_create(
        SessionAttempt(created_at=OLD + timedelta(seconds=i), outcome="success", status_code=200)
        for i in range(5000)
    )

    with CaptureQueriesContext(connection) as queries:
        result = audit_prune(older_than_days=30, now=NOW)

    assert (result.deleted, result.batches) == (5000, 1)
    assert len(deletes_of_audit_rows(queries.captured_queries)) == 2
    assert not SessionAttempt.objects.exists()


def test_a_row_exactly_at_the_cutoff_is_kept():
    cutoff = NOW - timedelta(days=30)
    due = record(cutoff - timedelta(microseconds=1))
    at_cutoff = record(cutoff)

    assert audit_prune(older_than_days=30, dry_run=True, now=NOW).deleted == 1
    result = audit_prune(older_than_days=30, now=NOW)

    assert (result.cutoff, result.deleted, result.kept) == (cutoff, 1, 0)
    assert not SessionAttempt.objects.filter(pk=due.pk).exists()
    assert SessionAttempt.objects.filter(pk=at_cutoff.pk).exists()


def test_an_empty_table_prunes_nothing():
    assert audit_prune(older_than_days=30, dry_run=True, now=NOW).deleted == 0
    result = audit_prune(older_than_days=30, now=NOW)
    assert (result.deleted, result.batches, result.kept) == (0, 0, 0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"older_than_days": 0}, "older_than_days must be at least 1"),
        ({"older_than_days": -1}, "older_than_days must be at least 1"),
        ({"older_than_days": 30, "batch_size": 0}, "batch_size must be at least 1"),
    ],
)
def test_refuses_nonsense_naming_the_argument(arguments, message):
    record(OLD)
    with pytest.raises(ValueError, match=f"^{message}$"):
        audit_prune(now=NOW, **arguments)
    assert SessionAttempt.objects.count() == 1


def test_refuses_a_cutoff_before_the_year_one():
    with pytest.raises(
        ValueError, match="^older_than_days 1000000000 reaches back before the year 1$"
    ):
        audit_prune(older_than_days=10**9, now=NOW)


def test_a_run_logs_what_it_deleted_and_what_it_kept(caplog, monkeypatch):
    monkeypatch.setattr(retention, "attempt_stats_aggregate", lambda: 0)
    record(OLD - timedelta(minutes=5))
    record(OLD)
    PendingMinute.objects.exclude(minute=OLD).delete()  # OLD's minute still awaits its fold

    audit_prune(older_than_days=30, now=NOW)

    assert [r.getMessage() for r in caplog.records if r.name == "audit.retention"] == [
        f"Pruned 1 audit rows created before {(NOW - timedelta(days=30)).isoformat()} in 1 "
        "batches (1 kept: awaiting aggregation)."
    ]


def test_command_reports_what_it_removed(settings):
    settings.AUDIT_RETENTION_DAYS = 30
    long_ago = timezone.now() - timedelta(days=31)
    for i in range(3):
        record(long_ago + timedelta(minutes=i))
    record(timezone.now())

    dry = StringIO()
    call_command("prune_audit", "--dry-run", stdout=dry)
    assert "Dry run: would delete 3 audit rows created before" in dry.getvalue()
    assert SessionAttempt.objects.count() == 4

    out = StringIO()
    call_command("prune_audit", "--batch-size", "2", stdout=out)
    assert "Deleted 3 audit rows created before" in out.getvalue()
    assert "in 2 batches of at most 2" in out.getvalue()
    assert SessionAttempt.objects.count() == 1

    out = StringIO()
    call_command("prune_audit", "--older-than-days", "1", stdout=out)
    assert "Deleted 0 audit rows" in out.getvalue()


@pytest.mark.parametrize("arguments", [["--older-than-days", "0"], ["--batch-size", "0"]])
def test_command_refuses_nonsense(arguments):
    with pytest.raises(CommandError, match="at least 1"):
        call_command("prune_audit", *arguments)


def test_command_help_explains_itself():
    text = PruneCommand().create_parser("manage.py", "prune_audit").format_help()
    assert "statistics" in text and "--dry-run" in text and "AUDIT_RETENTION_DAYS" in text


@pytest.mark.parametrize("days", ["1000000", "10000000000"])
def test_command_refuses_a_cutoff_before_year_one(days):
    with pytest.raises(CommandError, match=f"--older-than-days {days} reaches back before"):
        call_command("prune_audit", "--older-than-days", days)


@pytest.mark.parametrize(("days", "errors"), [(0, ["audit.E004"]), (-5, ["audit.E004"]), (1, [])])
def test_retention_below_one_day_fails_the_system_check(settings, days, errors):
    settings.AUDIT_RETENTION_DAYS = days
    assert [message.id for message in alerting_settings_check()] == errors
