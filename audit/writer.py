"""Group commit: the audit rows of concurrent requests in one statement and one commit.

Leader and followers, with no thread of its own. A request whose row finds no statement under
way writes it at once, on its own thread: the leader. Rows that arrive while a statement is
under way queue, and their requests wait; when the statement returns, its leader wakes the first
of them, which writes everything queued meanwhile in one statement, and so on. Each request
returns only once its own row is committed, so no secret leaves before its row is durable.

Under load that turns many round trips, commits and WAL flushes into one, which is most of an
audit write's cost. Alone, a request pays no hand-over to another thread: measured against a
writer thread, a quarter to a third fewer context switches per request and 8 % more sessions
per second (docs/benchmarks.md).

PostgreSQL only (SQLite serialises its writers anyway). The leaders of a process take turns on
one database connection of the writer's own, so a write never waits for the pool and never joins
a caller's transaction; its statements are cut off after WAIT_SECONDS (services.py).
"""

import logging
import os
import threading
import weakref

from django.db import InterfaceError, OperationalError

logger = logging.getLogger(__name__)

# Rows in one statement at most; a burst larger than this is written in several.
MAX_BATCH = 256
# A request queued behind a statement gives up waiting after this long, and is answered 503
# (its minted session is cancelled): a database that does not answer must not hold requests for
# ever. PostgreSQL cuts the leader's own statement off after as long (services.py); only a server
# that stops answering altogether holds a leader longer. As long as the pool's wait for a
# connection (DB_POOL_TIMEOUT), so a database that is down costs 5 s.
WAIT_SECONDS = 5.0


class _Pending:
    __slots__ = ("attempt", "woken", "error", "leads")

    def __init__(self, attempt, *, leads: bool) -> None:
        self.attempt = attempt
        self.leads = leads
        # Set when the row is written (or failed), or when its request is to lead.
        self.woken = threading.Event()
        self.error: Exception | None = None


class GroupWriter:
    def __init__(self, insert, connect) -> None:
        # insert(attempts, connection) writes the rows in one statement and returns their ids
        # in order; connect() opens the connection the leaders take turns on.
        self._insert = insert
        self._connect = connect
        self._forget()
        # A forked child has none of its parent's threads: a lock one of them held would stay
        # held, and the parent's connection is not the child's to use (gunicorn and Celery
        # fork workers). A weak reference, so that a writer still goes away when dropped.
        forget = weakref.WeakMethod(self._forget)
        os.register_at_fork(after_in_child=lambda: (method := forget()) and method())

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []  # rows no statement has taken yet
        self._leading = False  # a request is writing, or has been woken to write
        self._connection = None

    def write(self, attempt) -> None:
        """Write one row; return once it is committed, with attempt.pk set, or raise."""
        with self._lock:
            pending = _Pending(attempt, leads=not self._leading)
            self._queue.append(pending)
            self._leading = True
        if not pending.leads and not pending.woken.wait(WAIT_SECONDS):
            with self._lock:
                # Woken at the last moment, its row written or to lead: go on as woken (to
                # lead, no one else would).
                if not pending.woken.is_set():
                    if pending in self._queue:  # in no statement yet: never written
                        self._queue.remove(pending)
                    raise OperationalError(
                        f"the audit writer did not commit within {WAIT_SECONDS:g} s"
                    )
        if pending.leads:
            self._lead()
        if pending.error is not None:
            raise pending.error

    def stop(self) -> None:
        """Close the writer's connection, once no row is being written (the next write opens
        another)."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _lead(self) -> None:
        # The leader's own row is first in the queue: it queued when no one led, or it is the
        # one the previous leader woke.
        with self._lock:
            batch = self._queue[:MAX_BATCH]
            del self._queue[:MAX_BATCH]
        try:
            self._flush(batch)
        finally:
            with self._lock:
                if self._queue:
                    successor = self._queue[0]
                    successor.leads = True
                    successor.woken.set()
                else:
                    self._leading = False

    def _flush(self, batch: list[_Pending]) -> None:
        try:
            ids = self._insert_retrying([pending.attempt for pending in batch])
            # Every failure, this one included, goes to the waiting requests.
            assigned = list(zip(batch, ids, strict=True))
        except (OperationalError, InterfaceError) as exc:
            # The database, not a row: written one by one, each would wait as long again.
            for pending in batch:
                self._done(pending, error=exc)
            return
        except Exception as exc:  # noqa: BLE001 - handed to the waiting request, never lost
            if len(batch) > 1:
                # One bad row must not fail the others: write them one by one.
                for pending in batch:
                    self._flush([pending])
                return
            self._done(batch[0], error=exc)
            return
        for pending, attempt_id in assigned:
            pending.attempt.pk = attempt_id
            self._done(pending)

    @staticmethod
    def _done(pending: _Pending, error: Exception | None = None) -> None:
        pending.error = error
        pending.leads = False
        pending.woken.set()

    def _insert_retrying(self, attempts: list) -> list[int]:
        if self._connection is None:
            self._connection = self._connect()
        try:
            return self._insert(attempts, self._connection)
        except (OperationalError, InterfaceError) as exc:
            if self._connection.is_usable():
                raise  # the statement failed (its time ran out, say), not the connection
            # A connection the server dropped (a restart, a failover): once more, on a new one.
            logger.warning("Audit writer reconnecting after: %s", exc)
            self._connection.close()
            self._connection = None  # so that the next statement connects, if this cannot
            self._connection = self._connect()
            return self._insert(attempts, self._connection)
