"""GET /metrics for Prometheus: the web processes' metrics (broker/metrics.py), and what is read
at scrape time: the dependencies' state and the alerts in the database.

Closed to the public by default: only addresses in METRICS_ALLOWED_NETWORKS (loopback and
private networks unless configured) are served, read as the throttle reads them
(DJANGO_NUM_PROXIES), and with METRICS_TOKEN set, only requests that also carry
`Authorization: Bearer <token>`. Refused addresses get a 404, as if there were no such page;
an allowed address with a wrong or missing token gets a 403.
"""

import functools
import hmac
import ipaddress
import os

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseForbidden
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from audit.metrics import AlertCollector
from broker.redis_breaker import redis_breaker
from broker.views import cache_answers, database_answers
from sessions_api.throttle import client_address


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not address_allowed(client_address(request)):
        raise Http404
    if not token_valid(request.headers.get("Authorization", "")):
        return HttpResponseForbidden()
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = HttpResponse(encoder(scrape_registry()), content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response


def address_allowed(address: str) -> bool:
    networks = allowed_networks(tuple(settings.METRICS_ALLOWED_NETWORKS))
    if not networks:
        return True  # configured open: the token, if any, is the lock
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


@functools.cache
def allowed_networks(values: tuple[str, ...]) -> tuple:
    """Parsed once per setting value; broker/checks.py refuses a malformed one at start-up."""
    return tuple(ipaddress.ip_network(value.strip(), strict=False) for value in values)


def token_valid(authorization: str) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return True
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def scrape_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # every gunicorn worker's files, added up
    else:
        registry.register(_ThisProcess())
    registry.register(DependencyCollector())
    registry.register(AlertCollector())
    return registry


class _ThisProcess:
    """The process's own registry (runserver, tests), with its process and GC metrics."""

    def collect(self):
        return REGISTRY.collect()


class DependencyCollector:
    """Whether the database and Redis answer now, asked by the process that serves the scrape."""

    def collect(self):
        up = GaugeMetricFamily(
            "broker_dependency_up",
            "1 when the dependency answers the scraping process now, else 0. Redis is not asked "
            "(0) while this process skips it after a failure.",
            labels=["dependency"],
        )
        up.add_metric(["database"], float(database_answers()))
        if isinstance(caches["default"], RedisCache):
            up.add_metric(["redis"], float(redis_breaker.available() and cache_answers()))
        yield up
