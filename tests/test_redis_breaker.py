import logging

import pytest

from broker.redis_breaker import RedisBreaker

LOGGER = "broker.redis_breaker"


class Clock:
    now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_one_failure_pauses_redis_for_the_configured_seconds(clock, settings, caplog):
    settings.REDIS_PAUSE_SECONDS = 5
    caplog.set_level(logging.WARNING, logger=LOGGER)
    breaker = RedisBreaker(clock=clock)
    assert breaker.available()

    breaker.failed("throttle: TimeoutError")
    clock.now += 4.9
    assert not breaker.available()
    clock.now += 0.1
    assert breaker.available()
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        "Redis failed (throttle: TimeoutError); skipping it for 5 s: throttles allow, alerts "
        "wait for the minute sweep."
    ]


def test_failures_during_a_pause_extend_it_without_saying_so_again(clock, settings, caplog):
    settings.REDIS_PAUSE_SECONDS = 5
    caplog.set_level(logging.WARNING, logger=LOGGER)
    breaker = RedisBreaker(clock=clock)
    breaker.failed("throttle")
    clock.now += 3
    breaker.failed("enqueue")  # a call that was already waiting when the first one failed
    clock.now += 4
    assert not breaker.available()
    clock.now += 1
    assert breaker.available()
    breaker.failed("again, after the pause")
    assert len([r for r in caplog.records if r.name == LOGGER]) == 2


def test_reset_forgets_the_failure(clock):
    breaker = RedisBreaker(clock=clock)
    breaker.failed("throttle")
    breaker.reset()
    assert breaker.available()
