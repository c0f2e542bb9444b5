"""Group commit (audit/writer.py): concurrent requests' rows in one statement, each request
waiting for its own commit. PostgreSQL only, as in production; real threads and connections.
"""

import threading

import pytest
from django.db import IntegrityError, OperationalError, connection, connections

from audit import services, writer
from audit.models import PendingMinute, SessionAttempt
from audit.services import session_attempt_record

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def group_writer(settings, monkeypatch):
    """A writer of its own for each test, stopped at the end so its connection is closed."""
    if connection.vendor != "postgresql":
        pytest.skip("group commit is for PostgreSQL; SQLite serialises its writers anyway")
    settings.AUDIT_GROUP_COMMIT = True
    batches: list[int] = []
    release = threading.Event()
    release.set()

    def insert(attempts, using):
        group.holding = len(attempts)
        release.wait(timeout=30)
        batches.append(len(attempts))
        return services.attempts_insert(attempts, using)

    group = writer.GroupWriter(insert, services._writer_connect)
    group.batches, group.release, group.holding = batches, release, 0
    monkeypatch.setattr(services, "_writer", group)
    yield group
    release.set()
    group.stop()


def record(user_ref: str, **fields) -> SessionAttempt:
    values = {"outcome": "success", "status_code": 200, "anonymous": True, **fields}
    return session_attempt_record(user_ref=user_ref, **values)


def wait_until_queued(group, rows: int, errors=()) -> None:
    """Until `rows` rows are either in the statement held back or queued behind it."""
    while group.holding + len(group._queue) < rows:
        assert not errors, errors
        threading.Event().wait(0.01)


def in_threads(count: int, target) -> tuple[list, list]:
    results, errors = [], []

    def run(i):
        try:
            results.append(target(i))
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads, (results, errors)


def test_one_request_alone_is_written_and_committed_before_it_returns(group_writer):
    attempt = record("anon_alone")

    # Visible from this test's own connection: committed by the writer's.
    assert SessionAttempt.objects.get(pk=attempt.pk).user_ref == "anon_alone"
    assert group_writer.batches == [1]


def test_rows_queued_meanwhile_share_one_statement_and_keep_their_own_ids(group_writer):
    group_writer.release.clear()  # the first row's statement waits…
    threads, (results, errors) = in_threads(40, lambda i: record(f"anon_{i}"))
    wait_until_queued(group_writer, 40)  # …until every row is queued behind it
    group_writer.release.set()
    for thread in threads:
        thread.join(timeout=30)

    assert not errors
    first, *rest = group_writer.batches
    assert rest == [40 - first]  # everything that queued meanwhile: one statement
    assert {SessionAttempt.objects.get(pk=a.pk).user_ref for a in results} == {
        a.user_ref for a in results
    }
    assert len({a.pk for a in results}) == 40
    assert sum(PendingMinute.objects.values_list("writes", flat=True)) == 40


def test_text_that_looks_like_sql_or_placeholders_is_stored_as_given(group_writer):
    # The rows are bound into the statement's text before it is sent (audit/services.py _ROW).
    texts = ["50% off %s %% %(x)s", "{rows} {0}", 'O\'Brien \\ $1 "q"', "ünï ✓ 日本", ""]
    group_writer.release.clear()
    threads, (results, errors) = in_threads(
        len(texts), lambda i: record(f"anon_{i}", status_code=400, error_message=texts[i])
    )
    wait_until_queued(group_writer, len(texts), errors)
    group_writer.release.set()
    for thread in threads:
        thread.join(timeout=30)

    assert not errors
    assert len(group_writer.batches) == 2  # the first row, then the others together
    stored = dict(SessionAttempt.objects.values_list("user_ref", "error_message"))
    assert stored == {f"anon_{i}": text for i, text in enumerate(texts)}


def test_a_bad_row_fails_alone(group_writer):
    group_writer.release.clear()
    # A negative status breaks the column's CHECK constraint: the one statement fails.
    threads, (results, errors) = in_threads(
        3, lambda i: record(f"anon_{i}", status_code=-1 if i == 1 else 200)
    )
    wait_until_queued(group_writer, 3, errors)
    group_writer.release.set()
    for thread in threads:
        thread.join(timeout=30)

    assert [type(error) for error in errors] == [IntegrityError]
    assert sorted(a.user_ref for a in results) == ["anon_0", "anon_2"]
    assert SessionAttempt.objects.count() == 2


def test_the_writer_reconnects_when_the_server_dropped_its_connection(group_writer):
    record("anon_before")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

    assert record("anon_after").pk
    assert set(SessionAttempt.objects.values_list("user_ref", flat=True)) == {
        "anon_before",
        "anon_after",
    }


def test_a_statement_that_waits_on_the_database_is_cut_off_after_wait_seconds(
    group_writer, monkeypatch
):
    # Read when the writer connects, which this test's writer has not done yet.
    monkeypatch.setattr(writer, "WAIT_SECONDS", 0.2)
    # Another session holds the minute marks' table: the writer's statement waits on its lock.
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("BEGIN; LOCK TABLE audit_pendingminute IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(OperationalError, match="statement timeout"):
                record("anon_stuck")
            held = group_writer._connection
            cursor.execute("ROLLBACK")
    finally:
        other.close()

    assert not SessionAttempt.objects.exists()
    assert record("anon_after").pk
    assert group_writer._connection is held  # still usable: not reopened
