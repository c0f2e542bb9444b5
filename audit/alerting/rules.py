"""The alert rules: defaults in code, overridable by name from settings.ALERT_RULES."""

import dataclasses
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Q

from audit.models import Alert, SessionAttempt


@dataclass(frozen=True)
class AlertRule:
    name: str
    title: str
    severity: str
    # Fires when at least `threshold` matching attempts fall within the last `window_seconds`
    # (and, with min_ratio, they are at least that share of all attempts on the workflow).
    threshold: int
    window_seconds: int = 300
    min_ratio: float | None = None
    # What matches: any of these upstream statuses, this status range, or these outcomes.
    status_codes: tuple[int, ...] = ()
    status_range: tuple[int, int] | None = None
    outcomes: tuple[str, ...] = ()
    # One incident per workflow and status code, or per workflow only.
    per_status: bool = True
    enabled: bool = True

    def matches(self) -> Q:
        condition = Q(pk__in=[])
        if self.status_codes:
            condition |= Q(status_code__in=self.status_codes)
        if self.status_range:
            low, high = self.status_range
            condition |= Q(status_code__gte=low, status_code__lte=high)
        if self.outcomes:
            condition |= Q(outcome__in=self.outcomes)
        return condition


DEFAULT_RULES = (
    AlertRule(
        name="upstream_auth",
        title="OpenAI refuses our key or project",
        severity=Alert.Severity.CRITICAL,
        threshold=3,
        status_codes=(401, 403),
    ),
    AlertRule(
        name="upstream_workflow_not_found",
        title="Workflow not found for our key",
        severity=Alert.Severity.CRITICAL,
        threshold=3,
        status_codes=(404,),
    ),
    AlertRule(
        name="upstream_rejected",
        title="OpenAI rejects our session requests",
        severity=Alert.Severity.WARNING,
        threshold=10,
        min_ratio=0.2,
        status_codes=(400, 422),
    ),
    AlertRule(
        name="upstream_unavailable",
        title="OpenAI unavailable, slow or unreachable",
        severity=Alert.Severity.WARNING,
        threshold=20,
        status_range=(500, 599),
        outcomes=(SessionAttempt.Outcome.TIMEOUT, SessionAttempt.Outcome.NETWORK_ERROR),
        per_status=False,
    ),
)

OVERRIDABLE = {"threshold", "window_seconds", "min_ratio", "severity", "enabled"}


def alert_rules() -> list[AlertRule]:
    """The rules in force: the defaults with settings.ALERT_RULES applied by name."""
    overrides = settings.ALERT_RULES or {}
    by_name = {rule.name: rule for rule in DEFAULT_RULES}
    unknown = set(overrides) - set(by_name)
    if unknown:
        raise ImproperlyConfigured(
            f"ALERT_RULES names unknown rules {sorted(unknown)}; known: {sorted(by_name)}."
        )
    rules = []
    for name, rule in by_name.items():
        changes = overrides.get(name, {})
        bad = set(changes) - OVERRIDABLE
        if bad:
            raise ImproperlyConfigured(
                f"ALERT_RULES[{name!r}] sets {sorted(bad)}; allowed: {sorted(OVERRIDABLE)}."
            )
        rules.append(dataclasses.replace(rule, **changes))
    return rules
