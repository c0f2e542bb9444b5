"""The DRF classes that settings.REST_FRAMEWORK names.

They live apart from the views: DRF reads its settings while rest_framework.views is imported,
so a view module cannot also hold them without an import cycle.
"""

import io
import logging

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from rest_framework import exceptions
from rest_framework.authentication import SessionAuthentication
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.throttling import SimpleRateThrottle

from sessions_api import errors

logger = logging.getLogger(__name__)


class CsrfSessionAuthentication(SessionAuthentication):
    """DRF's session auth (CSRF enforced for logged-in users) with a recognisable CSRF error."""

    def enforce_csrf(self, request) -> None:
        try:
            super().enforce_csrf(request)
        except exceptions.PermissionDenied as exc:
            # The envelope says csrf_failed in its own words; DRF's reason stays in the cause.
            raise errors.CsrfRejected() from exc


class JSONOnlyNegotiation(DefaultContentNegotiation):
    """Answers in JSON whatever the Accept header asks: the API has no other format.

    DRF's negotiation parses Accept on every request only to pick between renderers, and with
    one renderer it can only choose it or answer 406; that cost 2 % of a request's CPU.
    """

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class LimitedJSONParser(JSONParser):
    """JSON parser that reads at most CHATKIT_MAX_BODY_BYTES, whatever Content-Length claims."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.CHATKIT_MAX_BODY_BYTES
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise errors.RequestTooLarge(f"The request body is larger than {limit} bytes.")
        return super().parse(io.BytesIO(body), media_type, parser_context)


class SessionCreateThrottle(SimpleRateThrottle):
    """Caps how fast one user, or one IP address when logged out, can mint sessions.

    Every session spends our OpenAI quota. The counts live in the shared cache (Redis in
    production), so the limit holds across gunicorn workers and replicas. Each caller has a
    fixed window that starts with its first request; counting is one atomic operation, so
    parallel requests cannot slip past the limit (DRF's own throttle reads its history, then
    writes it back). When the cache is down the request is allowed with a warning: serving the
    chat matters more than counting it.
    """

    scope = "chatkit_session"

    def get_rate(self) -> None:
        return None  # chosen per request in allow_request: users and addresses differ

    def allow_request(self, request, view) -> bool:
        if request.method != "POST":
            return True
        user = request.user
        rate = (
            settings.CHATKIT_THROTTLE_USER
            if user.is_authenticated
            else settings.CHATKIT_THROTTLE_ANON
        )
        if not rate:
            return True
        limit, window = self.parse_rate(rate)
        try:
            count, self.seconds_left = rate_count(self.get_cache_key(request, view), window)
        except Exception:  # noqa: BLE001 - a cache outage must not stop chats
            logger.warning("Throttle cache unavailable; allowing the session request.")
            return True
        return count <= limit

    def wait(self) -> int:
        return self.seconds_left

    def get_cache_key(self, request, view) -> str:
        user = request.user
        ident = f"user-{user.pk}" if user.is_authenticated else f"ip-{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


def rate_count(key: str, window: int) -> tuple[int, int]:
    """Count one request in key's window; return the count so far and the window's seconds left.

    On Redis: one round trip, INCR, EXPIRE NX (only a window's first request starts its clock)
    and TTL in one MULTI/EXEC, atomic across every process that shares the server. Any other
    cache (the local-memory default without Redis) adds then increments, atomic per process,
    and answers the whole window as the time left: an upper bound.
    """
    backend = caches["default"]
    if not isinstance(backend, RedisCache):
        backend.add(key, 0, timeout=window)
        return backend.incr(key), window
    name = backend.make_and_validate_key(key)
    # A pipeline is a MULTI/EXEC transaction unless told otherwise.
    pipeline = _redis_client(backend).pipeline()
    pipeline.incr(name).expire(name, window, nx=True).ttl(name)
    count, _, seconds_left = pipeline.execute()
    return count, max(seconds_left, 1)  # TTL says 0 in a window's last half second


def _redis_client(backend: RedisCache):
    """The redis-py client of a Redis cache backend, made once per backend (that is, per thread).

    get_client() is the backend's hook for reaching it, but it builds a new client on every call,
    which costs more CPU than the whole round trip; the client it builds shares the backend's
    connection pool, so keeping it is safe.
    """
    client = backend.__dict__.get("_throttle_redis_client")
    if client is None:
        client = backend.__dict__["_throttle_redis_client"] = backend._cache.get_client(write=True)
    return client
