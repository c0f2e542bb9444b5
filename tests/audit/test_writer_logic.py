"""The group-commit writer's own logic on real threads, with the database statement replaced by
a recording function: batching, a bad row failing alone, one reconnect, a database down failing a
batch at once, the wait limit, stopping, a fork. tests/audit/test_writer.py runs it against
PostgreSQL.
"""

import logging
import threading
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from django.db import IntegrityError, InterfaceError, OperationalError

from audit import writer


@dataclass
class Row:
    name: str
    pk: int | None = None


class Statements:
    """Stands for attempts_insert: records each statement's rows, fails on request."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()
        self.holding = 0
        self.failures: list[Exception] = []  # raised by the next statements, in order
        self.ids_short = 0  # return this many ids fewer than rows (a broken statement)
        self.next_id = 100

    def __call__(self, rows: list[Row]) -> list[int]:
        self.holding = len(rows)
        assert self.release.wait(timeout=30)
        self.batches.append([row.name for row in rows])
        if self.failures:
            raise self.failures.pop(0)
        if any(row.name.startswith("bad") for row in rows):
            raise IntegrityError("new row violates check constraint")
        ids = list(range(self.next_id, self.next_id + len(rows) - self.ids_short))
        self.next_id += len(rows)
        return ids


@pytest.fixture
def statements():
    return Statements()


@pytest.fixture
def group(statements):
    group = writer.GroupWriter(statements)
    yield group
    statements.release.set()
    group.stop()


def write_in_threads(group, names: list[str]) -> tuple[list[threading.Thread], dict, dict]:
    written, failed = {}, {}

    def run(name):
        row = Row(name)
        try:
            group.write(row)
            written[name] = row.pk
        except Exception as exc:  # noqa: BLE001 - reported by the test
            failed[name] = exc

    threads = [threading.Thread(target=run, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    return threads, written, failed


def held_until_queued(group, statements, names: list[str]):
    """The first row's statement is held until the other rows are all queued behind it, so the
    statements are exactly [first] and [the rest]; returns ({name: id}, {name: error})."""
    statements.release.clear()
    first, rest = names[0], names[1:]
    threads, written, failed = write_in_threads(group, [first])
    while statements.holding < 1:
        threading.Event().wait(0.005)
    more, written_later, failed_later = write_in_threads(group, rest)
    while group._queue.qsize() < len(rest):
        threading.Event().wait(0.005)
    statements.release.set()
    for thread in threads + more:
        thread.join(timeout=30)
    return {**written, **written_later}, {**failed, **failed_later}


def test_a_row_alone_gets_its_id_when_its_statement_returns(group, statements):
    row = Row("only")
    group.write(row)
    assert (row.pk, statements.batches) == (100, [["only"]])
    # The writer is a daemon thread of its own: it never holds up a worker's exit.
    [thread] = [t for t in threading.enumerate() if t.name == "audit-writer"]
    assert thread.daemon


def test_rows_queued_behind_a_statement_go_into_the_next_one(group, statements):
    names = [f"r{i}" for i in range(30)]

    written, failed = held_until_queued(group, statements, names)

    assert not failed
    first, second = statements.batches
    assert first == ["r0"] and sorted(second) == sorted(names[1:])
    # Each row has the id of its own position in its statement.
    assert {name: written[name] for name in second} == {
        name: 101 + i for i, name in enumerate(second)
    }
    assert written["r0"] == 100


def test_a_statement_holds_at_most_max_batch_rows(group, statements, monkeypatch):
    monkeypatch.setattr(writer, "MAX_BATCH", 4)

    written, failed = held_until_queued(group, statements, [f"r{i}" for i in range(9)])

    assert not failed and len(written) == 9
    assert max(len(batch) for batch in statements.batches) == 4


@pytest.mark.parametrize("others", [["b"], ["b", "c"]], ids=["two-rows", "three-rows"])
def test_a_bad_row_fails_alone_and_the_others_are_written(group, statements, others):
    written, failed = held_until_queued(group, statements, ["a", "bad", *others])

    assert list(failed) == ["bad"] and isinstance(failed["bad"], IntegrityError)
    assert sorted(written) == ["a", *others]
    # The statement of all of them failed, then each was written alone.
    assert statements.batches[2:] == [["bad"]] + [[name] for name in others]


def test_ids_that_do_not_match_the_rows_fail_the_rows_not_the_writer(group, statements):
    statements.ids_short = 1

    with pytest.raises(ValueError, match="zip"):
        group.write(Row("x"))
    statements.ids_short = 0
    row = Row("y")
    group.write(row)
    assert row.pk is not None  # the thread lived on


@pytest.mark.parametrize("lost", [OperationalError, InterfaceError])
def test_a_lost_connection_is_retried_once_on_a_new_one(
    group, statements, lost, monkeypatch, caplog
):
    caplog.set_level(logging.WARNING, logger="audit.writer")  # whatever the root logger says
    closed = []
    monkeypatch.setattr(writer, "connection", SimpleNamespace(close=lambda: closed.append(1)))
    statements.failures = [lost("server closed the connection unexpectedly")]
    row = Row("after-restart")

    group.write(row)

    assert row.pk == 100
    assert statements.batches == [["after-restart"], ["after-restart"]]
    assert len(closed) == 1  # the broken connection was dropped before the retry
    assert [r.getMessage() for r in caplog.records if r.name == "audit.writer"] == [
        "Audit writer reconnecting after: server closed the connection unexpectedly"
    ]


def test_a_connection_lost_twice_fails_the_row(group, statements):
    statements.failures = [OperationalError("down"), OperationalError("still down")]

    with pytest.raises(OperationalError, match="still down"):
        group.write(Row("x"))


def test_a_database_that_is_down_fails_a_batch_at_once_not_row_by_row(group, statements):
    statements.failures = [OperationalError("down")] * 4

    written, failed = held_until_queued(group, statements, ["a", "b", "c"])

    assert written == {}
    assert {name: str(error) for name, error in failed.items()} == dict.fromkeys("abc", "down")
    # [a] and its retry, [b, c] and its retry: no statement for b and c alone.
    batches = [sorted(batch) for batch in statements.batches]
    assert batches == [["a"], ["a"], ["b", "c"], ["b", "c"]]


def test_any_other_error_reaches_the_waiting_request_and_the_writer_goes_on(group, statements):
    statements.failures = [RuntimeError("a bug in the statement")]

    with pytest.raises(RuntimeError, match="a bug in the statement"):
        group.write(Row("x"))
    row = Row("y")
    group.write(row)
    assert row.pk == 100


def test_a_request_waits_for_its_commit_at_most_wait_seconds(group, statements, monkeypatch):
    monkeypatch.setattr(writer, "WAIT_SECONDS", 0.1)
    statements.release.clear()

    with pytest.raises(OperationalError, match="did not commit within 0.1 s"):
        group.write(Row("stuck"))


def test_stop_writes_what_is_queued_then_ends_the_thread(group, statements):
    statements.release.clear()
    threads, written, _ = write_in_threads(group, ["a", "b"])
    while statements.holding + group._queue.qsize() < 2:
        threading.Event().wait(0.005)
    stopper = threading.Thread(target=group.stop)
    stopper.start()
    statements.release.set()
    stopper.join(timeout=30)
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(written) == ["a", "b"]
    assert not [t for t in threading.enumerate() if t.name == "audit-writer"]
    row = Row("later")
    group.write(row)  # a new thread, as after a fork
    assert row.pk is not None


def test_a_forked_process_starts_its_own_thread(group, statements, monkeypatch):
    group.write(Row("parent"))
    parent_queue = group._queue
    monkeypatch.setattr(writer.os, "getpid", lambda: -1)  # as a child process sees itself

    row = Row("child")
    group.write(row)

    assert group._queue is not parent_queue and row.pk == 101
    group.stop()  # the child's thread
    parent_queue.put(threading.Event())  # and the parent's, which a real child would not see
