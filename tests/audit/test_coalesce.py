"""Asking for an alert evaluation after a failure: one task per burst, and never a failed request
when Redis (the cache or the broker) is down."""

import logging

import pytest
from django.core.cache import cache

from audit.alerting import coalesce
from audit.tasks import evaluate_alerts
from broker.redis_breaker import redis_breaker

pytestmark = pytest.mark.django_db


@pytest.fixture
def enqueued(monkeypatch) -> list[str]:
    """The tasks published; the broker accepts them."""
    published = []
    monkeypatch.setattr(
        coalesce, "publish_safely", lambda task, **kw: published.append(task) or True
    )
    cache.delete(coalesce.EVALUATION_PENDING_KEY)
    return published


def pending_flag_ttl() -> int:
    """Seconds the flag has left, as `TTL <key>` in redis-cli shows it (-2: no such key)."""
    key = cache.make_and_validate_key(coalesce.EVALUATION_PENDING_KEY)
    return cache._cache.get_client(key).ttl(key)


def test_a_burst_of_failures_asks_for_one_evaluation_until_it_starts(
    monkeypatch, django_capture_on_commit_callbacks
):
    enqueued = []
    monkeypatch.setattr(coalesce, "publish_safely", lambda task, **kw: enqueued.append(task) or 1)
    cache.delete(coalesce.EVALUATION_PENDING_KEY)

    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(1000):
            coalesce.alerts_evaluation_request()
    assert len(enqueued) == 1

    # Once the evaluation starts, the next failure asks for a fresh one.
    coalesce.evaluation_started()
    with django_capture_on_commit_callbacks(execute=True):
        coalesce.alerts_evaluation_request()
    assert len(enqueued) == 2


def test_a_lost_enqueue_does_not_block_the_next_request(
    monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(coalesce, "publish_safely", lambda task, **kw: False)
    cache.delete(coalesce.EVALUATION_PENDING_KEY)
    with django_capture_on_commit_callbacks(execute=True):
        coalesce.alerts_evaluation_request()
    assert cache.get(coalesce.EVALUATION_PENDING_KEY) is None


def test_with_redis_failing_the_request_leaves_the_evaluation_to_the_sweep(
    monkeypatch, django_capture_on_commit_callbacks, unreachable_cache
):
    enqueued = []
    monkeypatch.setattr(coalesce, "publish_safely", lambda task, **kw: enqueued.append(task))
    with django_capture_on_commit_callbacks(execute=True):
        coalesce.alerts_evaluation_request()  # the cache fails: Redis is paused
    monkeypatch.setattr(coalesce, "cache", None)  # not even asked while paused
    with django_capture_on_commit_callbacks(execute=True):
        coalesce.alerts_evaluation_request()
    assert enqueued == []
    assert not redis_breaker.available()


def test_the_request_queues_the_evaluate_task_and_holds_the_flag_for_30_seconds(
    enqueued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        coalesce.alerts_evaluation_request()

    assert enqueued == [evaluate_alerts.name] == ["audit.tasks.evaluate_alerts"]
    # Should the task be lost, the flag expires and the next failure asks again.
    assert 25 < pending_flag_ttl() <= 30


def test_nothing_is_asked_before_the_commit(enqueued, django_capture_on_commit_callbacks):
    """A failure rolled back with its transaction asks for nothing; the flag waits too."""
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        coalesce.alerts_evaluation_request()
    assert (enqueued, pending_flag_ttl()) == ([], -2)
    assert len(callbacks) == 1


def test_a_cache_failure_pauses_redis_and_says_what_failed(
    enqueued, django_capture_on_commit_callbacks, unreachable_cache, caplog
):
    caplog.set_level(logging.WARNING, logger="broker.redis_breaker")
    with django_capture_on_commit_callbacks(execute=True):
        coalesce.alerts_evaluation_request()

    assert enqueued == []  # left to the minute sweep
    assert not redis_breaker.available()
    [record] = [r for r in caplog.records if r.name == "broker.redis_breaker"]
    assert record.getMessage().startswith("Redis failed (alert coalescing: ConnectionError);")


def test_redis_lost_between_the_flag_and_the_publish_fails_no_request(
    monkeypatch, settings, django_capture_on_commit_callbacks
):
    """The broker refuses the task and the flag cannot be cleared either: the request goes on,
    and the flag expires on its own."""
    cache.delete(coalesce.EVALUATION_PENDING_KEY)

    def broker_down(task, **kwargs):
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
            }
        }
        return False

    monkeypatch.setattr(coalesce, "publish_safely", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        coalesce.alerts_evaluation_request()  # does not raise


def test_a_started_evaluation_with_the_cache_down_says_the_flag_stays(unreachable_cache, caplog):
    caplog.set_level(logging.WARNING, logger="audit.alerting.coalesce")
    coalesce.evaluation_started()  # does not raise: the evaluation goes on

    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "Cache unavailable; could not clear the evaluation-pending flag.")
    ]
