import secrets
import socket
import threading
import time

import pytest
import time_machine
from django.contrib.auth.models import AnonymousUser
from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.test import APIClient, APIRequestFactory

from audit.models import SessionAttempt
from sessions_api.drf import SessionCreateThrottle

pytestmark = pytest.mark.django_db

URL = "/api/chatkit/session/"


def throttle_key(ident: str) -> str:
    return SessionCreateThrottle.cache_format % {
        "scope": SessionCreateThrottle.scope,
        "ident": ident,
    }


@pytest.fixture
def address() -> str:
    """A fresh client address per test, so counts left in a shared Redis never interfere."""
    return f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250)}"


def test_anonymous_limit_is_per_address_and_answers_429(upstream, settings, address):
    settings.CHATKIT_THROTTLE_ANON = "2/min"
    client = APIClient(REMOTE_ADDR=address)
    assert [client.post(URL).status_code for _ in range(2)] == [200, 200]

    response = client.post(URL)
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "rate_limited"
    assert 59 <= int(response["Retry-After"]) <= 60  # the window began with the first request
    # Refused before any upstream call, and still on record.
    assert len(upstream.state.received()) == 2
    rejected = SessionAttempt.objects.get(pk=error["request_id"])
    assert (rejected.outcome, rejected.api_error_code) == ("rejected", "rate_limited")

    # Dropping the anonymous cookie does not help; another address has its own budget.
    client.cookies.clear()
    assert client.post(URL).status_code == 429
    assert APIClient(REMOTE_ADDR=address + "0").post(URL).status_code == 200


def test_logged_in_users_are_counted_per_user(upstream, settings, django_user_model, address):
    settings.CHATKIT_THROTTLE_USER = "1/min"
    users = [django_user_model.objects.create_user(username=f"{n}{address}") for n in "uv"]
    # Primary keys start over in each test database, while a real Redis keeps counts for a
    # minute: a run right after another would otherwise find these users' counts in place.
    cache.delete_many([throttle_key(f"user-{user.pk}") for user in users])
    first, second = APIClient(REMOTE_ADDR=address), APIClient(REMOTE_ADDR=address)
    first.force_login(users[0])
    second.force_login(users[1])
    assert first.post(URL).status_code == 200
    assert first.post(URL).status_code == 429
    assert second.post(URL).status_code == 200


def test_a_broken_cache_lets_requests_through(upstream, settings, address, caplog):
    with socket.socket() as probe:  # a port where no Redis listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
    settings.CHATKIT_THROTTLE_ANON = "1/min"
    client = APIClient(REMOTE_ADDR=address)
    assert [client.post(URL).status_code for _ in range(3)] == [200, 200, 200]
    warnings = [r.getMessage() for r in caplog.records if r.name == "sessions_api.drf"]
    assert warnings == ["Throttle cache unavailable; allowing the session request."] * 3


def test_parallel_requests_cannot_slip_past_the_limit(settings, address):
    """Every worker thread counts at once; exactly the limit gets through."""
    settings.CHATKIT_THROTTLE_ANON = "20/min"
    factory = APIRequestFactory()
    start = threading.Barrier(40)
    allowed = []

    def request_once() -> None:
        request = Request(factory.post(URL, REMOTE_ADDR=address))
        request.user = AnonymousUser()
        start.wait()
        allowed.append(SessionCreateThrottle().allow_request(request, None))

    threads = [threading.Thread(target=request_once) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert (allowed.count(True), allowed.count(False)) == (20, 20)


def test_without_redis_the_local_cache_counts(upstream, settings, address):
    """`make run` without Redis: each process counts on its own, in its local memory."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    settings.CHATKIT_THROTTLE_ANON = "2/min"
    client = APIClient(REMOTE_ADDR=address)
    assert [client.post(URL).status_code for _ in range(3)] == [200, 200, 429]
    assert int(client.post(URL)["Retry-After"]) == 60


def test_later_requests_do_not_restart_the_window(upstream, settings, address):
    """The window starts with the first request; refusals must not push its end further out."""
    settings.CHATKIT_THROTTLE_ANON = "1/min"
    client = APIClient(REMOTE_ADDR=address)
    assert client.post(URL).status_code == 200
    time.sleep(1.1)  # Redis keeps time itself: a second must really pass
    refused = client.post(URL)
    assert refused.status_code == 429
    assert 57 <= int(refused["Retry-After"]) <= 59


def test_the_local_window_ends_and_counting_starts_over(upstream, settings, address):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    settings.CHATKIT_THROTTLE_ANON = "1/min"
    client = APIClient(REMOTE_ADDR=address)
    start = time.time()
    with time_machine.travel(start, tick=False):
        assert [client.post(URL).status_code for _ in range(2)] == [200, 429]
    with time_machine.travel(start + 61, tick=False):
        assert client.post(URL).status_code == 200


def test_other_methods_are_not_counted(upstream, settings, address):
    settings.CHATKIT_THROTTLE_ANON = "1/min"
    client = APIClient(REMOTE_ADDR=address)
    assert [client.get(URL).status_code for _ in range(3)] == [405, 405, 405]
    assert client.post(URL).status_code == 200


def test_the_redis_client_is_made_once_per_cache_backend(monkeypatch):
    # Django's get_client() builds a new redis-py client on every call, which cost more CPU
    # than the round trip itself; the throttle asks once per backend (one per thread).
    from django.core.cache import caches

    from sessions_api.drf import rate_count

    backend = caches["default"]
    backend.__dict__.pop("_throttle_redis_client", None)  # made by an earlier test, maybe
    asked = []
    real = backend._cache.get_client
    monkeypatch.setattr(
        backend._cache, "get_client", lambda *args, **kwargs: asked.append(kwargs) or real()
    )
    prefix = f"throttle-client-{secrets.token_hex(4)}"

    assert [rate_count(f"{prefix}-{i}", 60)[0] for i in (1, 2, 1)] == [1, 1, 2]
    assert asked == [{"write": True}]
