"""broker/cache.py: one redis-py client per process and settings, whatever the thread."""

import threading

import fakeredis
import pytest

from broker import cache as cache_module
from broker.cache import SharedRedisCache


@pytest.fixture(autouse=True)
def no_clients_yet(monkeypatch):
    """Each test starts from a process with no shared client, whatever ran before it."""
    monkeypatch.setattr(cache_module, "_clients", {})


def backend(location: str) -> SharedRedisCache:
    options = {"connection_class": fakeredis.FakeRedisConnection}
    return SharedRedisCache(location, {"OPTIONS": options})


def test_backends_of_the_same_settings_share_one_client_across_threads():
    here = backend("redis://fakeredis-shared:6379/0")
    there = []
    thread = threading.Thread(target=lambda: there.append(backend(here._servers[0])._cache))
    thread.start()
    thread.join()

    assert there == [here._cache]
    assert backend(here._servers[0])._cache is here._cache


def test_the_shared_client_is_built_from_the_backends_settings():
    # fakeredis comes in through OPTIONS: a client built without them would look for a real
    # server named fakeredis-shared.
    cache = backend("redis://fakeredis-shared:6379/2")
    cache.set("key", "value", timeout=60)

    assert cache.get("key") == "value"


def test_other_settings_have_a_client_of_their_own():
    first = backend("redis://fakeredis-shared:6379/0")

    assert backend("redis://fakeredis-shared:6379/1")._cache is not first._cache
    assert SharedRedisCache(first._servers[0], {})._cache is not first._cache
