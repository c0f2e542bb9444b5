"""Group commit: the audit rows of concurrent requests in one statement and one commit.

A request hands its row to this process's writer thread and waits until the row is committed,
so no secret leaves before its row is durable; meanwhile rows of other requests that arrived
while the previous batch was being written go into the next statement together. Under load that
turns many round trips, commits and WAL flushes into one, which is most of an audit write's
cost; alone, a request pays one hand-over between threads.

PostgreSQL only (SQLite serialises its writers anyway). The writer keeps one database
connection of its own, so it never waits for the pool, and never joins a caller's transaction.
"""

import logging
import os
import queue
import threading
from dataclasses import dataclass, field

from django.db import InterfaceError, OperationalError, connection

logger = logging.getLogger(__name__)

# Rows in one statement at most; a burst larger than this is written in several.
MAX_BATCH = 256
# A request gives up waiting after this long, and is answered 503 (its minted session is
# cancelled): a database that does not answer must not hold requests for ever. As long as the
# pool's wait for a connection (DB_POOL_TIMEOUT), so a database that is down costs 5 s.
WAIT_SECONDS = 5.0


@dataclass
class _Pending:
    attempt: object
    done: threading.Event = field(default_factory=threading.Event)
    error: Exception | None = None


class GroupWriter:
    def __init__(self, insert) -> None:
        # insert(attempts) writes the rows in one statement on the current thread's connection
        # and returns their ids in order.
        self._insert = insert
        self._queue: queue.SimpleQueue  # made with the thread, in _start
        self._lock = threading.Lock()
        self._pid: int | None = None

    def write(self, attempt) -> None:
        """Write one row; return once it is committed, with attempt.pk set, or raise."""
        self._start()
        pending = _Pending(attempt)
        self._queue.put(pending)
        if not pending.done.wait(WAIT_SECONDS):
            raise OperationalError(f"the audit writer did not commit within {WAIT_SECONDS:g} s")
        if pending.error is not None:
            raise pending.error

    def _start(self) -> None:
        # Per process: a thread does not survive a fork (gunicorn and Celery fork workers).
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                self._queue = queue.SimpleQueue()
                threading.Thread(target=self._run, name="audit-writer", daemon=True).start()
                self._pid = os.getpid()

    def stop(self) -> None:
        """End the thread once the rows queued so far are written, and close its connection."""
        if self._pid == os.getpid():
            done = threading.Event()
            self._queue.put(done)
            done.wait(WAIT_SECONDS)
            self._pid = None

    def _run(self) -> None:
        pending_queue = self._queue
        while True:
            batch = [pending_queue.get()]
            while len(batch) < MAX_BATCH and not isinstance(batch[-1], threading.Event):
                try:
                    batch.append(pending_queue.get_nowait())
                except queue.Empty:
                    break
            stopping = batch[-1] if isinstance(batch[-1], threading.Event) else None
            if stopping is not None:
                batch.pop()
            if batch:
                self._flush(batch)
            if stopping is not None:
                connection.close()
                stopping.set()
                return

    def _flush(self, batch: list[_Pending]) -> None:
        try:
            ids = self._insert_retrying([pending.attempt for pending in batch])
            # Every failure, this one included, goes to the waiting requests: this thread
            # must outlive them all.
            assigned = list(zip(batch, ids, strict=True))
        except (OperationalError, InterfaceError) as exc:
            # The database, not a row: written one by one, each would wait as long again.
            for pending in batch:
                pending.error = exc
                pending.done.set()
            return
        except Exception as exc:  # noqa: BLE001 - handed to the waiting request, never lost
            if len(batch) > 1:
                # One bad row must not fail the others: write them one by one.
                for pending in batch:
                    self._flush([pending])
                return
            batch[0].error = exc
            batch[0].done.set()
            return
        for pending, attempt_id in assigned:
            pending.attempt.pk = attempt_id
            pending.done.set()

    def _insert_retrying(self, attempts: list) -> list[int]:
        try:
            return self._insert(attempts)
        except (OperationalError, InterfaceError) as exc:
            # A connection the server dropped (a restart, a failover): once more, on a new one.
            logger.warning("Audit writer reconnecting after: %s", exc)
            connection.close()
            return self._insert(attempts)
