import pytest
from django.db import connection

from audit import paginator as paginator_module
from audit.models import SessionAttempt
from audit.paginator import CappedPaginator, EstimatedCountPaginator

pytestmark = pytest.mark.django_db

needs_postgres = pytest.mark.skipif(
    "connection.vendor != 'postgresql'", reason="estimates exist only on PostgreSQL (CI)"
)


@pytest.fixture
def rows():
    SessionAttempt.objects.bulk_create(
        SessionAttempt(outcome="success" if i % 3 else "timeout", user_ref=f"u{i}")
        for i in range(30)
    )


def test_small_results_are_counted_exactly(rows):
    assert EstimatedCountPaginator(SessionAttempt.objects.all(), 10).count == 30
    assert EstimatedCountPaginator(SessionAttempt.objects.filter(outcome="timeout"), 10).count == 10


def analyze_then_add_rows(outcome: str, n: int) -> None:
    """Statistics that lag the table, as they do between autovacuum runs."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE audit_sessionattempt")
    SessionAttempt.objects.bulk_create(SessionAttempt(outcome=outcome) for _ in range(n))


@needs_postgres
def test_unfiltered_large_table_uses_table_statistics(rows, monkeypatch):
    analyze_then_add_rows("success", 5)
    monkeypatch.setattr(paginator_module, "EXACT_COUNT_BELOW", 0)
    paginator = EstimatedCountPaginator(SessionAttempt.objects.all(), 10)
    # The statistics' 30, not the 35 rows a count would find.
    assert paginator.count == 30


@needs_postgres
def test_unfiltered_table_under_the_limit_is_counted_exactly(rows):
    analyze_then_add_rows("success", 5)
    assert EstimatedCountPaginator(SessionAttempt.objects.all(), 10).count == 35


@needs_postgres
def test_filtered_count_that_times_out_falls_back_to_the_planner(rows, monkeypatch):
    def too_slow(self):
        raise paginator_module.OperationalError("canceling statement due to statement timeout")

    analyze_then_add_rows("timeout", 5)
    monkeypatch.setattr("django.db.models.query.QuerySet.count", too_slow)
    paginator = EstimatedCountPaginator(SessionAttempt.objects.filter(outcome="timeout"), 10)
    # The planner's estimate from the statistics (10 of 30 rows), not the 15 rows there are.
    assert paginator.count == 10


def test_capped_pages_and_a_filtered_count_that_stops_at_the_cap(rows, monkeypatch):
    monkeypatch.setattr(CappedPaginator, "MAX_PAGES", 1)
    paginator = CappedPaginator(SessionAttempt.objects.filter(outcome="success"), 10)
    assert paginator.num_pages == 1 and paginator.capped
    assert paginator.count_label == "more than 10"
    # PostgreSQL counts no further than one row past the cap; SQLite counts exactly.
    assert paginator.count == (11 if connection.vendor == "postgresql" else 20)
    small = CappedPaginator(SessionAttempt.objects.filter(outcome="timeout"), 10)
    assert (small.count, small.count_label, small.capped) == (10, "10", False)
