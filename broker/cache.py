"""Django's Redis cache, with one redis-py client (and connection pool) per process."""

import threading

from django.core.cache.backends.redis import RedisCache
from django.utils.functional import cached_property

_clients: dict[str, object] = {}
_clients_lock = threading.Lock()


class SharedRedisCache(RedisCache):
    """Django's Redis cache backend, its client shared by every backend of the same settings.

    Django makes a cache backend per thread, and under gunicorn's gevent worker per greenlet,
    that is per request; each RedisCache builds a redis-py client and connection pool of its
    own. Every request that touched the cache (with the throttle on, every request) would open
    a connection to Redis of its own. redis-py's pool is safe to share between threads
    and greenlets, and after a fork it starts afresh in the child.
    """

    @cached_property
    def _cache(self):
        return _client(self._class, self._servers, self._options)


def _client(client_class, servers: list[str], options: dict):
    key = repr((servers, sorted(options.items())))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = client_class(servers, **options)
    return client
