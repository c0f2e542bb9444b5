"""System checks of the project's own settings: /metrics access, database connections."""

import ipaddress
import os

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.db import DatabaseError, connection

# A token is the only lock on /metrics when every address is allowed: it must not be guessable.
METRICS_TOKEN_MIN_LENGTH = 32


@register()
def metrics_access_check(app_configs=None, **kwargs) -> list:
    messages = []
    for value in settings.METRICS_ALLOWED_NETWORKS:
        try:
            ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            messages.append(
                Error(
                    f"METRICS_ALLOWED_NETWORKS contains {value!r}, which is not an IP address "
                    "or network.",
                    hint="Give addresses or CIDR networks, comma-separated: 10.0.0.0/8,::1",
                    id="broker.E001",
                )
            )
    token = settings.METRICS_TOKEN
    if token and (len(token) < METRICS_TOKEN_MIN_LENGTH or token.strip() != token):
        messages.append(
            Error(
                f"METRICS_TOKEN must be at least {METRICS_TOKEN_MIN_LENGTH} characters, without "
                "surrounding spaces.",
                hint="Generate one: python -c 'import secrets; print(secrets.token_urlsafe(32))'",
                id="broker.E002",
            )
        )
    if not settings.METRICS_ALLOWED_NETWORKS and not token and not settings.DEBUG:
        messages.append(
            Warning(
                "/metrics is readable from every address: METRICS_ALLOWED_NETWORKS is empty and "
                "METRICS_TOKEN is not set.",
                hint="List the scraper's networks in METRICS_ALLOWED_NETWORKS, or set a token.",
                id="broker.W001",
            )
        )
    return messages


def web_workers() -> int:
    """How many gunicorn workers this machine runs: gunicorn.conf.py's rule (a test keeps the
    two alike)."""
    return int(os.environ.get("WEB_CONCURRENCY", max(2, len(os.sched_getaffinity(0)))))


@register(Tags.database)
def database_connections_check(app_configs=None, databases=None, **kwargs) -> list:
    """Warn when this machine's web workers alone could open more PostgreSQL connections than
    the server allows. Run by migrate and by `check --database default`."""
    if "default" not in (databases or ()) or connection.vendor != "postgresql":
        return []
    pool = connection.settings_dict["OPTIONS"].get("pool")
    if not isinstance(pool, dict):
        return []
    # Not mutated: mutation runs use SQLite; CI runs these tests on PostgreSQL.
    try:  # pragma: no mutate block
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting('max_connections')::int"
                " - current_setting('superuser_reserved_connections')::int"
            )
            [(allowed,)] = cursor.fetchall()
    except DatabaseError:  # not reachable: migrate, /readyz and the pool say so themselves
        return []
    # The group-commit writer's connection is its own, outside the pool (audit/writer.py).
    writer = 1 if settings.AUDIT_GROUP_COMMIT else 0
    return connection_budget_warnings(web_workers(), pool["max_size"], writer, allowed)


def connection_budget_warnings(workers: int, pool_max: int, writer: int, allowed: int) -> list:
    per_worker = pool_max + writer
    if workers * per_worker <= allowed:
        return []
    each = f"DB_POOL_MAX_SIZE {pool_max}"
    if writer:
        each = f"({each} + 1 for the audit writer)"
    return [
        Warning(
            f"The {workers} web workers of this machine may open up to "
            f"{workers * per_worker} PostgreSQL connections ({workers} × {each}), more than the "
            f"{allowed} the server allows (max_connections less its superuser reserve): under "
            "load, requests would fail to get one.",
            hint="Lower WEB_CONCURRENCY or DB_POOL_MAX_SIZE, raise PostgreSQL's max_connections, "
            "or put PgBouncer in transaction mode in front. Celery workers need connections too.",
            id="broker.W002",
        )
    ]
