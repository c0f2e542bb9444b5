"""Group commit: the audit rows of concurrent requests in one statement and one commit.

Leader and followers (batching.py), with no thread of its own. A request whose row finds no
statement under way writes it at once, on its own thread: the leader. Rows that arrive while a
statement is under way queue, and their requests wait; when the statement returns, its leader
wakes the first of them, which writes everything queued meanwhile in one statement, and so on.
Each request returns only once its own row is committed, so no secret leaves before its row is
durable.

Under load that turns many round trips, commits and WAL flushes into one, which is most of an
audit write's cost. Alone, a request pays no hand-over to another thread: measured against a
writer thread, a quarter to a third fewer context switches per request and 8 % more sessions
per second (docs/benchmarks.md).

PostgreSQL only (SQLite serialises its writers anyway). The leaders of a process take turns on
one database connection of the writer's own, so a write never waits for the pool and never joins
a caller's transaction; its statements are cut off after WAIT_SECONDS (services.py).
"""

import logging

from django.db import InterfaceError, OperationalError

from batching import Batcher, Pending

logger = logging.getLogger(__name__)

# Rows in one statement at most; a burst larger than this is written in several.
MAX_BATCH = 256
# A request queued behind a statement gives up waiting after this long, and is answered 503
# (its minted session is cancelled): a database that does not answer must not hold requests for
# ever. PostgreSQL cuts the leader's own statement off after as long (services.py); only a server
# that stops answering altogether holds a leader longer. As long as the pool's wait for a
# connection (DB_POOL_TIMEOUT), so a database that is down costs 5 s.
WAIT_SECONDS = 5.0


class GroupWriter(Batcher):
    def __init__(self, insert, connect) -> None:
        # insert(attempts, connection) writes the rows in one statement and returns their ids
        # in order; connect() opens the connection the leaders take turns on.
        self._insert = insert
        self._connect = connect
        super().__init__()

    def _forget(self) -> None:
        super()._forget()
        self._connection = None  # after a fork, the parent's: not the child's to use

    def write(self, attempt) -> None:
        """Write one row; return once it is committed, with attempt.pk set, or raise."""
        self._submit(attempt)

    def _max_batch(self) -> int:
        return MAX_BATCH

    def _wait_seconds(self) -> float:
        return WAIT_SECONDS

    def _timed_out(self) -> Exception:
        return OperationalError(f"the audit writer did not commit within {WAIT_SECONDS:g} s")

    def stop(self) -> None:
        """Close the writer's connection, once no row is being written (the next write opens
        another)."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _flush(self, batch: list[Pending]) -> None:
        try:
            ids = self._insert_retrying([pending.item for pending in batch])
            # Every failure, this one included, goes to the waiting requests.
            assigned = list(zip(batch, ids, strict=True))
        except (OperationalError, InterfaceError) as exc:
            # The database, not a row: written one by one, each would wait as long again.
            for pending in batch:
                pending.error = exc
            return
        except Exception as exc:  # noqa: BLE001 - handed to the waiting request, never lost
            if len(batch) > 1:
                # One bad row must not fail the others: write them one by one.
                for pending in batch:
                    self._flush([pending])
                return
            batch[0].error = exc
            return
        for pending, attempt_id in assigned:
            pending.item.pk = attempt_id

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
