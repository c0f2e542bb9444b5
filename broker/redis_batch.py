"""One Redis script run for concurrent callers in one round trip.

Leader and followers (batching.py), as audit/writer.py writes audit rows: a call that finds no
round trip under way is sent at once; calls that arrive meanwhile queue, and go together in one
pipeline when the trip ahead returns. Each call is still its own EVALSHA, atomic on the server;
only the trips are shared. Alone, a call costs what a plain call costs.

Under load (the throttle counts every request) that turns many round trips, each a wait, a
system call either way and a read by Redis, into one: in a pipeline of four a call costs the
client about 30 µs of CPU against 70 alone, and Redis 6 µs against 13 (docs/benchmarks.md).
"""

import hashlib

from redis.exceptions import NoScriptError

from batching import Batcher, Pending

# Calls in one pipeline at most; a burst larger than this goes in several.
MAX_BATCH = 128
# A queued call gives up after this long and raises TimeoutError: the leader's own trip is
# bounded by the client's socket timeout, so only a leader stuck elsewhere holds its followers.
WAIT_SECONDS = 2.0


class BatchedScript(Batcher):
    """A Lua script on one redis-py client, its concurrent calls sent together."""

    def __init__(self, client, source: str) -> None:
        self.client = client
        self.source = source
        # Redis names a script by its SHA1.
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        super().__init__()

    def __call__(self, keys: list, args: list):
        """The script's answer for these keys and arguments; raises what Redis raised."""
        return self._submit((keys, args))

    def _max_batch(self) -> int:
        return MAX_BATCH

    def _wait_seconds(self) -> float:
        return WAIT_SECONDS

    def _timed_out(self) -> Exception:
        return TimeoutError(f"no Redis answer within {WAIT_SECONDS:g} s")

    def _flush(self, batch: list[Pending]) -> None:
        results = self._pipeline(batch)
        if any(isinstance(result, NoScriptError) for result in results):
            # The server has forgotten the script (a restart, SCRIPT FLUSH): load it, once more.
            self.client.script_load(self.source)
            results = self._pipeline(batch)
        for pending, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                pending.error = result
            else:
                pending.result = result

    def _pipeline(self, batch: list[Pending]) -> list:
        # EVALSHA itself: redis-py's Script in a pipeline asks SCRIPT EXISTS first, a second
        # round trip on every execute.
        pipe = self.client.pipeline(transaction=False)
        for pending in batch:
            keys, args = pending.item
            pipe.evalsha(self.sha, len(keys), *keys, *args)
        return pipe.execute(raise_on_error=False)
