import pytest
from django.db import connection

from audit import paginator as paginator_module
from audit.models import SessionAttempt
from audit.paginator import EstimatedCountPaginator

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


@needs_postgres
def test_unfiltered_large_table_uses_table_statistics(rows, monkeypatch):
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE audit_sessionattempt")
    monkeypatch.setattr(paginator_module, "EXACT_COUNT_BELOW", 0)
    paginator = EstimatedCountPaginator(SessionAttempt.objects.all(), 10)
    # Made by the statistics, not by counting: right order of magnitude is all it promises.
    assert 1 <= paginator.count <= 1000


@needs_postgres
def test_filtered_count_that_times_out_falls_back_to_the_planner(rows, monkeypatch):
    def too_slow(self):
        raise paginator_module.OperationalError("canceling statement due to statement timeout")

    monkeypatch.setattr("django.db.models.query.QuerySet.count", too_slow)
    paginator = EstimatedCountPaginator(SessionAttempt.objects.filter(outcome="timeout"), 10)
    assert paginator.count >= 1
