"""The group-commit writer's own logic on real threads, with the database statement replaced by
a recording function: leaders and followers, batching, a bad row failing alone, one reconnect, a
database down failing a batch at once, the wait limit, stopping, a fork.
tests/audit/test_writer.py runs it against PostgreSQL.
"""

import logging
import threading
from dataclasses import dataclass

import pytest
from django.db import IntegrityError, InterfaceError, OperationalError

import batching
from audit import writer
from tests.forking import in_forked_child


@dataclass
class Row:
    name: str
    pk: int | None = None


class Connection:
    """Stands for the writer's database connection."""

    def __init__(self) -> None:
        self.usable = True
        self.closed = False

    def is_usable(self) -> bool:
        return self.usable

    def close(self) -> None:
        self.closed = True


class Statements:
    """Stands for attempts_insert: records each statement's rows, fails on request."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.threads: list[str] = []  # the thread that ran each statement
        self.connections: list[Connection] = []  # opened by the writer, in order
        self.release = threading.Event()
        self.release.set()
        self.holding = 0
        # Raised by the next statements, in order (None: that one succeeds).
        self.failures: list[BaseException | None] = []
        self.connect_failures: list[Exception] = []  # raised by the next connects, in order
        self.ids_short = 0  # return this many ids fewer than rows (a broken statement)
        self.next_id = 100

    def connect(self) -> Connection:
        if self.connect_failures:
            raise self.connect_failures.pop(0)
        self.connections.append(Connection())
        return self.connections[-1]

    def __call__(self, rows: list[Row], connection: Connection) -> list[int]:
        assert connection is self.connections[-1] and not connection.closed
        self.holding = len(rows)
        assert self.release.wait(timeout=30)
        self.batches.append([row.name for row in rows])
        self.threads.append(threading.current_thread().name)
        failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            connection.usable = not getattr(failure, "connection_lost", False)
            raise failure
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
    group = writer.GroupWriter(statements, statements.connect)
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
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failed[name] = exc

    threads = [threading.Thread(target=run, args=(name,), name=name) for name in names]
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
    while len(group._queue) < len(rest):
        threading.Event().wait(0.005)
    statements.release.set()
    for thread in threads + more:
        thread.join(timeout=30)
    return {**written, **written_later}, {**failed, **failed_later}


def test_a_row_alone_is_written_on_its_own_thread_and_gets_its_id(group, statements):
    row = Row("only")
    group.write(row)
    assert (row.pk, statements.batches) == (100, [["only"]])
    # No hand-over to another thread, and no thread of the writer's own.
    assert statements.threads == [threading.current_thread().name]
    assert threading.active_count() == 1 + sum(t.daemon for t in threading.enumerate())
    assert len(statements.connections) == 1
    group.write(Row("next"))
    assert len(statements.connections) == 1  # kept for the next statement


def test_rows_queued_behind_a_statement_go_into_the_next_one(group, statements):
    names = [f"r{i}" for i in range(30)]

    written, failed = held_until_queued(group, statements, names)

    assert not failed
    first, second = statements.batches
    assert first == ["r0"] and sorted(second) == sorted(names[1:])
    # Each statement ran on the thread of one of its own requests: r0's, then one woken by r0.
    assert statements.threads[0] == "r0" and statements.threads[1] in second
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


def lost(error: type[Exception], message: str) -> Exception:
    """An error that leaves the connection unusable, as a server that dropped it does."""
    failure = error(message)
    failure.connection_lost = True
    return failure


@pytest.mark.parametrize("error", [OperationalError, InterfaceError])
def test_a_lost_connection_is_retried_once_on_a_new_one(group, statements, error, caplog):
    caplog.set_level(logging.WARNING, logger="audit.writer")  # whatever the root logger says
    statements.failures = [lost(error, "server closed the connection unexpectedly")]
    row = Row("after-restart")

    group.write(row)

    assert row.pk == 100
    assert statements.batches == [["after-restart"], ["after-restart"]]
    # The broken connection was closed, and the retry ran on a new one.
    first, second = statements.connections
    assert first.closed and not second.closed
    assert [r.getMessage() for r in caplog.records if r.name == "audit.writer"] == [
        "Audit writer reconnecting after: server closed the connection unexpectedly"
    ]


def test_a_statement_that_fails_on_a_usable_connection_is_not_retried(group, statements):
    # Its time ran out, say: a second try would make the request wait as long again.
    statements.failures = [OperationalError("canceling statement due to statement timeout")]

    with pytest.raises(OperationalError, match="statement timeout"):
        group.write(Row("x"))
    assert statements.batches == [["x"]]
    assert len(statements.connections) == 1 and not statements.connections[0].closed


def test_a_connection_that_cannot_be_opened_fails_the_row_and_is_tried_again_later(
    group, statements
):
    statements.connect_failures = [OperationalError("connection refused")]
    with pytest.raises(OperationalError, match="connection refused"):
        group.write(Row("x"))

    row = Row("y")
    group.write(row)
    assert row.pk == 100 and statements.batches == [["y"]]


def test_a_lost_connection_that_cannot_be_reopened_fails_the_row_until_it_can(group, statements):
    group.write(Row("before"))
    statements.failures = [lost(OperationalError, "server closed the connection")]
    statements.connect_failures = [OperationalError("connection refused")]

    with pytest.raises(OperationalError, match="connection refused"):
        group.write(Row("during"))
    row = Row("after")
    group.write(row)
    assert row.pk == 101 and len(statements.connections) == 2


def test_a_connection_lost_twice_fails_the_row(group, statements):
    statements.failures = [lost(OperationalError, "down"), lost(OperationalError, "still down")]

    with pytest.raises(OperationalError, match="still down"):
        group.write(Row("x"))


def test_a_database_that_is_down_fails_a_batch_at_once_not_row_by_row(group, statements):
    statements.failures = [lost(OperationalError, "down") for _ in range(4)]

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


def test_a_request_queued_behind_a_statement_waits_at_most_wait_seconds(
    group, statements, monkeypatch
):
    monkeypatch.setattr(writer, "WAIT_SECONDS", 0.1)
    statements.release.clear()
    threads, written, failed = write_in_threads(group, ["first"])
    while statements.holding < 1:
        threading.Event().wait(0.005)

    with pytest.raises(OperationalError, match="did not commit within 0.1 s"):
        group.write(Row("late"))
    statements.release.set()
    threads[0].join(timeout=30)

    assert (written, failed) == ({"first": 100}, {})
    # The row that gave up left the queue: never written, its request already answered.
    assert statements.batches == [["first"]]
    row = Row("after")
    group.write(row)  # and the next row leads at once
    assert (row.pk, statements.batches[1:]) == (101, [["after"]])


def test_one_row_queued_behind_a_statement_is_written_next_by_its_own_request(group, statements):
    written, failed = held_until_queued(group, statements, ["first", "second"])

    assert (written, failed) == ({"first": 100, "second": 101}, {})
    assert (statements.batches, statements.threads) == (
        [["first"], ["second"]],
        ["first", "second"],
    )


class Stopped(BaseException):
    """Stands for what stops a thread or greenlet mid-statement (gevent's GreenletExit, say)."""


def test_an_interrupted_statement_fails_its_rows_never_answers_them_as_written(group, statements):
    statements.failures = [None, Stopped()]  # the statement of the rows queued behind
    statements.release.clear()
    threads, written, _ = write_in_threads(group, ["first"])
    while statements.holding < 1:
        threading.Event().wait(0.005)
    behind, written_behind, outcomes = write_in_threads(group, ["b", "c"])
    while len(group._queue) < 2:
        threading.Event().wait(0.005)
    statements.release.set()
    for thread in threads + behind:
        thread.join(timeout=30)

    assert written == {"first": 100} and written_behind == {}
    assert statements.batches == [["first"], ["b", "c"]]
    # The row that led the statement sees the interruption itself; the other, an error.
    assert sorted(repr(outcome) for outcome in outcomes.values()) == [
        "Interrupted('the batch was interrupted: Stopped()')",
        "Stopped()",
    ]
    # The writer is free again for the next row.
    row = Row("after")
    group.write(row)
    assert row.pk == 101


class DeadlineEvent(threading.Event):
    """A wait that ends at its deadline in the very moment the leader wakes the row: it lets the
    statement ahead return, waits until the leader has reached this row, then says the time ran
    out."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release

    def wait(self, timeout=None) -> bool:
        self.release.set()
        super().wait(timeout=30)
        return False


@pytest.mark.parametrize(
    "behind", [["late"], ["first", "late"]], ids=["woken-to-lead", "written-by-another"]
)
def test_a_row_woken_at_its_deadline_is_not_failed(group, statements, monkeypatch, behind):
    # Alone behind the statement, "late" is woken to lead the next one; behind "first", it is
    # written in the statement that "first" leads.
    statements.release.clear()
    threads, _, failed = write_in_threads(group, ["leader"])
    while statements.holding < 1:
        threading.Event().wait(0.005)
    more, _, failed_later = write_in_threads(group, behind[:-1])
    while len(group._queue) < len(behind) - 1:
        threading.Event().wait(0.005)

    class LatePending(batching.Pending):
        def __init__(self, attempt, *, leads):
            super().__init__(attempt, leads=leads)
            self.woken = DeadlineEvent(statements.release)

    monkeypatch.setattr(group, "pending_class", LatePending)
    row = Row("late")
    group.write(row)
    for thread in threads + more:
        thread.join(timeout=30)

    assert row.pk == 100 + len(behind) and not failed and not failed_later
    assert statements.batches == [["leader"], behind]


def test_stop_closes_the_connection_and_the_next_row_opens_another(group, statements):
    group.write(Row("a"))
    group.stop()
    assert statements.connections[0].closed

    row = Row("b")
    group.write(row)
    assert row.pk == 101 and len(statements.connections) == 2


def test_a_forked_child_starts_afresh_whatever_its_parent_was_doing(group, statements):
    group.write(Row("parent"))
    # The parent is in the middle of a statement, on another thread, when it forks.
    statements.release.clear()
    threads, written, _ = write_in_threads(group, ["parent-2"])
    while statements.holding < 1:
        threading.Event().wait(0.005)

    def in_child() -> str:
        statements.release.set()
        row = Row("child")
        group.write(row)  # leads at once: the parent's leader is not here to wake it
        return f"{row.pk} {len(statements.connections)} {statements.connections[0].closed}"

    report = in_forked_child(in_child)
    statements.release.set()
    threads[0].join(timeout=30)

    # A connection of its own (the parent's was not closed by it: not the child's to use).
    assert report == "101 2 False"
    assert written == {"parent-2": 101}
