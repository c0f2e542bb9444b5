"""How fast callers may mint sessions: every session spends our OpenAI quota.

The policy (README, "Throttling"), each limit a rate such as "30/min", empty for off:

- a logged-in user: CHATKIT_THROTTLE_USER per user;
- an anonymous browser that sends back its signed cookie: CHATKIT_THROTTLE_ANON per browser;
- a caller without that cookie (a browser's first request, or a script that drops cookies):
  CHATKIT_THROTTLE_ADDRESS per address, an IPv4 address or an IPv6 /64 (one subscriber's
  network), loose enough for the many browsers behind one NAT;
- every anonymous caller together, when CHATKIT_THROTTLE_ANON_BUDGET is set: a budget that,
  once spent, refuses anonymous callers and fires the `anonymous_budget` alert.

Each caller has fixed windows that start with its first request. The counters live in the
shared cache (Redis in production), so the limits hold across workers and replicas, and all of
a request's counters are checked in one atomic operation: parallel requests cannot slip past a
limit. When the cache fails the request is allowed, and so are all requests of the next few
seconds without asking it (broker/redis_breaker.py): serving the chat matters more than
counting it.
"""

import hashlib
import ipaddress
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.utils import timezone
from django.utils.crypto import salted_hmac
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle

from broker import metrics
from broker.redis_batch import BatchedScript
from broker.redis_breaker import redis_breaker
from sessions_api import errors
from sessions_api.identity import anon_identity_of

# Counts this request in each counter in turn, each window starting with its counter's first
# request, and stops at the first counter over its limit: a caller refused by its own limit
# spends nothing of the shared budget. Returns that counter's number (0: none) and the seconds
# left in its window. ARGV holds window and limit for each key.
_COUNT_SCRIPT = """
for i, key in ipairs(KEYS) do
  local window, limit = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local count = redis.call('INCR', key)
  if count == 1 then redis.call('EXPIRE', key, window) end
  if count > limit then
    local left = redis.call('TTL', key)
    if left < 0 then
      -- A counter without an expiry would refuse for ever: give it its window again.
      redis.call('EXPIRE', key, window)
      left = window
    end
    return {i, left}
  end
end
return {0, 0}
"""


@dataclass(frozen=True)
class Limit:
    scope: str  # user, browser, address or budget
    ident: str
    limit: int
    window: int

    @property
    def cache_key(self) -> str:
        # Hashed: cache keys carry no address or anonymous id, and no character a cache refuses.
        digest = hashlib.sha256(self.ident.encode()).hexdigest()[:32]
        return f"throttle_chatkit_{self.scope}_{digest}"

    def refusal_key(self) -> str:
        """Whose refusals, in which minute: one audit row each (audit.models.SessionAttempt)."""
        minute = timezone.now().strftime("%Y-%m-%dT%H:%M")
        value = f"{self.scope}:{self.ident}:{minute}"
        return salted_hmac("sessions_api.throttle", value).hexdigest()[:32]


class SessionCreateThrottle(SimpleRateThrottle):
    """The policy above, as a DRF throttle that raises the API's own errors when it refuses."""

    def get_rate(self) -> None:
        return None  # one rate per limit, chosen per request in allow_request

    def allow_request(self, request, view) -> bool:
        if request.method != "POST":
            return True
        limits = self.limits_for(request)
        if not limits or not redis_breaker.available():
            return True  # off, or the cache failed a moment ago: allowed, as below
        try:
            refused, seconds_left = count(limits)
        except Exception as exc:  # noqa: BLE001 - a cache outage must not stop chats
            redis_breaker.failed(f"throttle: {type(exc).__name__}")
            return True
        if not refused:
            return True
        limit = limits[refused - 1]
        metrics.THROTTLE_REFUSALS.labels(limit.scope).inc()
        error_class = errors.AnonymousBudgetSpent if limit.scope == "budget" else errors.RateLimited
        raise error_class(retry_after=max(seconds_left, 1), refusal_key=limit.refusal_key())

    def limits_for(self, request) -> list[Limit]:
        """The caller's own limit, then the anonymous budget; those that are switched on."""
        user = request.user
        if user.is_authenticated:
            limits = [("user", str(user.pk), settings.CHATKIT_THROTTLE_USER)]
        elif identity := anon_identity_of(request):
            limits = [("browser", identity.user_ref, settings.CHATKIT_THROTTLE_ANON)]
        else:
            address = network_of(client_address(request))
            limits = [("address", address, settings.CHATKIT_THROTTLE_ADDRESS)]
        if not user.is_authenticated:
            limits.append(("budget", "anonymous", settings.CHATKIT_THROTTLE_ANON_BUDGET))
        return [
            Limit(scope, ident, *self.parse_rate(rate)) for scope, ident, rate in limits if rate
        ]


def client_address(request) -> str:
    """The caller's address: X-Forwarded-For is read only as far as DJANGO_NUM_PROXIES says.

    DRF's reading of it, shared by the throttle, the audit row's client IP and the admin-login
    lockout (django-axes, AXES_CLIENT_IP_CALLABLE).
    """
    return BaseThrottle().get_ident(request)


def network_of(address: str) -> str:
    """What one subscriber holds: an IPv4 address, or the /64 of an IPv6 address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an address (a proxy's odd header): counted as it is
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.version == 4:
        return str(ip)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


def count(limits: list[Limit]) -> tuple[int, int]:
    """Count one request against each limit in turn, stopping at the first it is over.

    Returns that limit's number, from 1 (0: none), and the seconds left in its window. On
    Redis: one round trip, one script, atomic across every process that shares the server. Any
    other cache (the local-memory default without Redis) adds then increments, atomic per
    process, and answers the whole window as the time left: an upper bound.
    """
    backend = caches["default"]
    if not isinstance(backend, RedisCache):
        for number, limit in enumerate(limits, start=1):
            backend.add(limit.cache_key, 0, timeout=limit.window)
            if backend.incr(limit.cache_key) > limit.limit:
                return number, limit.window
        return 0, 0
    keys = [backend.make_and_validate_key(limit.cache_key) for limit in limits]
    arguments = [value for limit in limits for value in (limit.window, limit.limit)]
    refused, seconds_left = _count_script(backend)(keys, arguments)
    return refused, seconds_left


def _count_script(backend: RedisCache) -> BatchedScript:
    """The counting script on the backend's redis-py client, made once per client.

    get_client() is the backend's hook for reaching Redis, but it builds a new client on every
    call, which costs more CPU than the whole round trip; the client it builds shares the
    backend's connection pool, so keeping it is safe. With broker.cache.SharedRedisCache that
    pool, and so the script, is one per process, and the counts of concurrent requests go to
    Redis together (broker/redis_batch.py). The script is sent by its SHA1 (EVALSHA), and
    loaded again if the server has forgotten it.
    """
    shared = vars(backend._cache)
    script = shared.get("_throttle_script")
    if script is None:
        client = backend._cache.get_client(write=True)
        script = shared["_throttle_script"] = BatchedScript(client, _COUNT_SCRIPT)
    return script
