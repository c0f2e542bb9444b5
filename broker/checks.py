"""System checks of the metrics endpoint's access settings (broker/metrics_endpoint.py)."""

import ipaddress

from django.conf import settings
from django.core.checks import Error, Warning, register

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
