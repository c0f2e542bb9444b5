"""Leader and followers: the work of concurrent callers done together, with no thread of its own.

A caller that finds nothing under way does its work at once, on its own thread: the leader.
Work that arrives meanwhile queues, and its callers wait; when the leader is done, it wakes the
first of them, which does everything queued meanwhile in one go, and so on. Each caller returns
only once its own item is done, with its own result or its own error. Alone, a caller pays
nothing for the queue. Used for the audit rows of concurrent requests (one statement and one
commit, audit/writer.py) and for their throttle counts (one Redis round trip,
broker/redis_batch.py).
"""

import os
import threading
import weakref


class Interrupted(RuntimeError):
    """The batch holding this caller's item stopped part-way (its leader was interrupted)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"the batch was interrupted: {cause!r}")


class Pending:
    """One caller's item, and what became of it."""

    __slots__ = ("item", "leads", "woken", "result", "error")

    def __init__(self, item, *, leads: bool) -> None:
        self.item = item
        self.leads = leads
        # Set when the item is done (or failed), or when its caller is to lead.
        self.woken = threading.Event()
        self.result = None
        self.error: Exception | None = None


class Batcher:
    """Subclasses say how a batch is done (_flush), how large one may be and how long a queued
    caller waits before it gives up (_max_batch, _wait_seconds, _timed_out)."""

    pending_class = Pending

    def __init__(self) -> None:
        self._forget()
        # A forked child has none of its parent's threads: a lock one of them held would stay
        # held (gunicorn and Celery fork their workers). A weak reference, so that a batcher
        # still goes away when dropped.
        forget = weakref.WeakMethod(self._forget)
        os.register_at_fork(after_in_child=lambda: (method := forget()) and method())

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[Pending] = []  # items no batch has taken yet
        self._leading = False  # a caller is leading, or has been woken to lead

    def _flush(self, batch: list[Pending]) -> None:
        """Do the batch: set each pending's result or error. What it raises goes to all."""
        raise NotImplementedError

    def _max_batch(self) -> int:
        raise NotImplementedError

    def _wait_seconds(self) -> float:
        raise NotImplementedError

    def _timed_out(self) -> Exception:
        raise NotImplementedError

    def _submit(self, item):
        """Do one item, alone or with others; its result, or raise its error."""
        with self._lock:
            pending = self.pending_class(item, leads=not self._leading)
            self._queue.append(pending)
            self._leading = True
        if not pending.leads and not pending.woken.wait(self._wait_seconds()):
            with self._lock:
                # Woken at the last moment, done or to lead: go on as woken (to lead, no one
                # else would).
                if not pending.woken.is_set():
                    if pending in self._queue:  # in no batch yet: never done
                        self._queue.remove(pending)
                    raise self._timed_out()
        if pending.leads:
            self._lead()
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _lead(self) -> None:
        # The leader's own item is first in the queue: it queued when no one led, or it is the
        # one the previous leader woke.
        with self._lock:
            size = self._max_batch()
            batch = self._queue[:size]
            del self._queue[:size]
        try:
            self._flush(batch)
        except BaseException as exc:
            # Handed to every caller of the batch. An interruption (the worker stopping) fails
            # them too, rather than letting them return as if their items were done.
            for pending in batch:
                pending.error = exc if isinstance(exc, Exception) else Interrupted(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            with self._lock:
                if self._queue:
                    successor = self._queue[0]
                    successor.leads = True
                    successor.woken.set()
                else:
                    self._leading = False
            for pending in batch:
                pending.leads = False
                pending.woken.set()
