"""broker/redis_batch.py: concurrent calls of one script share a round trip, each keeps its
own answer and its own error, and nobody waits for ever. Real Redis in CI (REDIS_URL), fakeredis
locally, through the cache's own client, as the throttle uses it."""

import secrets
import threading

import pytest
import redis
from django.core.cache import caches

from broker import redis_batch
from broker.redis_batch import BatchedScript
from tests.forking import in_forked_child

# Echoes its first key and argument, so that every caller can tell its answer is its own, and
# counts on its second key: a key holding text there makes INCR fail, for that call only.
ECHO = "return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[2])}"
RUN = secrets.token_hex(6)  # a shared Redis may hold counters of earlier runs


class Trips:
    """The cache's redis-py client, counting the calls of each pipeline it sends; the first
    trip can be held until a test lets it go."""

    def __init__(self, client, *, hold_first: bool = False) -> None:
        self.client = client
        self.sizes: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def pipeline(self, **kwargs):
        pipe = self.client.pipeline(**kwargs)
        execute = pipe.execute

        def counted(**options):
            self.sizes.append(len(pipe.command_stack))
            self.entered.set()
            assert self.release.wait(30)
            return execute(**options)

        pipe.execute = counted
        return pipe

    def script_load(self, source: str) -> str:
        return self.client.script_load(source)


@pytest.fixture
def client():
    return caches["default"]._cache.get_client(write=True)


@pytest.fixture
def held(client) -> tuple[Trips, BatchedScript]:
    """The echo script, known to the server, on a client whose first trip is held."""
    client.script_load(ECHO)
    trips = Trips(client, hold_first=True)
    return trips, BatchedScript(trips, ECHO)


def keys(tag: str) -> list[str]:
    return [f"batch-{tag}", f"batch-counter-{tag}-{RUN}"]


def in_threads(script: BatchedScript, tags: list[str], answers: dict) -> list[threading.Thread]:
    """Each tag's call on a thread of its own; its answer, or what it raised, goes in answers."""

    def call(tag: str) -> None:
        try:
            answers[tag] = script(keys(tag), [tag])
        except Exception as exc:  # noqa: BLE001 - the test reads it
            answers[tag] = exc

    threads = [threading.Thread(target=call, args=(tag,)) for tag in tags]
    for thread in threads:
        thread.start()
    return threads


def wait_for(condition) -> None:
    for _ in range(3000):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("timed out")


def held_until_queued(script: BatchedScript, trips: Trips, rest: list[str]) -> dict:
    """The call "first" is held in its trip until the calls of `rest` are all queued behind it;
    every answer (or error) by tag."""
    answers: dict[str, object] = {}
    threads = in_threads(script, ["first"], answers)
    assert trips.entered.wait(30)
    threads += in_threads(script, rest, answers)
    wait_for(lambda: len(script._queue) == len(rest))
    trips.release.set()
    for thread in threads:
        thread.join(timeout=30)
    return answers


def echoed(answers: dict) -> dict:
    return {tag: answer[:2] for tag, answer in answers.items()}


def test_a_lone_call_is_one_trip_of_one(client):
    client.script_load(ECHO)
    trips = Trips(client)
    script = BatchedScript(trips, ECHO)

    assert script(keys("alone"), ["a"])[:2] == [b"batch-alone", b"a"]
    assert trips.sizes == [1]
    assert not script._leading


def test_calls_that_arrive_during_a_trip_share_the_next_one(held):
    trips, script = held

    answers = held_until_queued(script, trips, ["b", "c", "d"])

    assert trips.sizes == [1, 3]
    assert echoed(answers) == {
        tag: [f"batch-{tag}".encode(), tag.encode()] for tag in ["first", "b", "c", "d"]
    }
    assert not script._leading and script._queue == []


def test_a_burst_larger_than_a_batch_goes_in_several(held, monkeypatch):
    trips, script = held
    monkeypatch.setattr(redis_batch, "MAX_BATCH", 2)

    answers = held_until_queued(script, trips, ["b", "c", "d", "e", "f"])

    assert trips.sizes == [1, 2, 2, 1]
    assert echoed(answers) == {
        tag: [f"batch-{tag}".encode(), tag.encode()] for tag in ["first", "b", "c", "d", "e", "f"]
    }


def test_one_call_failing_in_redis_fails_only_that_call(client, held):
    trips, script = held
    client.set(keys("bad")[1], "not a number")

    answers = held_until_queued(script, trips, ["b", "bad", "c"])

    assert trips.sizes == [1, 3]
    assert isinstance(answers.pop("bad"), redis.ResponseError)
    assert echoed(answers) == {tag: [f"batch-{tag}".encode(), tag.encode()] for tag in answers}


def test_a_script_the_server_forgot_is_loaded_again(client):
    source = f"{ECHO} -- {secrets.token_hex(8)}"  # a script this server has never seen
    trips = Trips(client)
    script = BatchedScript(trips, source)

    assert script(keys("new"), ["n"])[:2] == [b"batch-new", b"n"]
    assert trips.sizes == [1, 1]  # refused as unknown, loaded, sent again
    assert client.script_exists(script.sha) == [True]
    assert script(keys("again"), ["m"])[:2] == [b"batch-again", b"m"]
    assert trips.sizes == [1, 1, 1]


def test_redis_down_fails_every_call_of_the_trip(unreachable_cache):
    script = BatchedScript(caches["default"]._cache.get_client(write=True), ECHO)
    answers: dict[str, object] = {}
    for thread in in_threads(script, ["a", "b", "c"], answers):
        thread.join(timeout=30)

    assert sorted(answers) == ["a", "b", "c"]
    assert all(isinstance(answer, redis.ConnectionError) for answer in answers.values())
    assert not script._leading and script._queue == []


def test_a_queued_call_gives_up_and_is_never_sent(held, monkeypatch):
    trips, script = held
    monkeypatch.setattr(redis_batch, "WAIT_SECONDS", 0.2)
    answers: dict[str, object] = {}
    first = in_threads(script, ["first"], answers)
    assert trips.entered.wait(30)

    with pytest.raises(TimeoutError, match="no Redis answer within 0.2 s"):
        script(keys("late"), ["late"])
    trips.release.set()
    first[0].join(timeout=30)

    assert trips.sizes == [1]
    assert script._queue == [] and not script._leading
    assert echoed(answers) == {"first": [b"batch-first", b"first"]}


def test_a_forked_child_starts_afresh_whatever_its_parent_was_doing(held):
    trips, script = held
    first = in_threads(script, ["parent"], {})
    assert trips.entered.wait(30)  # the parent leads a trip, on another thread, when it forks

    def in_child():
        trips.release.set()
        return script(keys("child"), ["child"])[:2]  # leads: no leader here to wake it

    report = in_forked_child(in_child)
    trips.release.set()
    first[0].join(timeout=30)

    assert report == str([b"batch-child", b"child"])
