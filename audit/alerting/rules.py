"""The alert rules: defaults in code, overridable by name from settings.ALERT_RULES."""

import dataclasses
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Q

from audit.models import Alert, SessionAttempt

logger = logging.getLogger(__name__)


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
    # What matches: attempts answered with any of these error codes. The codes are the API's
    # (sessions_api/errors.py), chosen for each upstream failure in one place
    # (sessions_api/services.py upstream_error_class), so a rule cannot disagree with it.
    error_codes: tuple[str, ...] = ()
    # One incident per workflow and upstream status code, or per workflow only.
    per_status: bool = True
    enabled: bool = True

    def matches(self) -> Q:
        # A configuration check that fails is the operator's answer, not an incident.
        return Q(api_error_code__in=self.error_codes) & ~Q(kind=SessionAttempt.Kind.CHECK)


DEFAULT_RULES = (
    AlertRule(
        name="upstream_auth",
        title="OpenAI refuses our key or project",
        severity=Alert.Severity.CRITICAL,
        threshold=3,
        error_codes=("upstream_auth_failed",),
    ),
    AlertRule(
        name="upstream_workflow_not_found",
        title="Workflow not found for our key",
        severity=Alert.Severity.CRITICAL,
        threshold=3,
        error_codes=("upstream_workflow_not_found",),
    ),
    AlertRule(
        name="upstream_rejected",
        title="OpenAI rejects our session requests",
        severity=Alert.Severity.WARNING,
        threshold=10,
        min_ratio=0.2,
        error_codes=("upstream_rejected",),
    ),
    AlertRule(
        name="upstream_unavailable",
        title="OpenAI unavailable, slow or unreachable",
        severity=Alert.Severity.WARNING,
        threshold=20,
        error_codes=("upstream_unavailable", "upstream_timeout"),
        per_status=False,
    ),
    # Signed-out visitors are being refused: CHATKIT_THROTTLE_ANON_BUDGET is spent, by a crowd
    # or by a script (sessions_api/throttle.py).
    AlertRule(
        name="anonymous_budget",
        title="Anonymous session budget spent: signed-out visitors are refused",
        severity=Alert.Severity.WARNING,
        threshold=1,
        error_codes=("anonymous_budget_spent",),
        per_status=False,
    ),
)


def _whole_number(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _ratio(value) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return value is None or (number and 0 < value <= 1)


# What each overridable field accepts, and how to say so. JSON gives "5" as easily as 5, and a
# string threshold would only fail at the first comparison, in the middle of a sweep.
OVERRIDABLE = {
    "threshold": (_whole_number, "a whole number ≥ 1"),
    "window_seconds": (_whole_number, "a whole number of seconds ≥ 1"),
    "min_ratio": (_ratio, "a number in (0, 1] or null"),
    "severity": (lambda value: value in Alert.Severity.values, f"one of {Alert.Severity.values}"),
    "enabled": (lambda value: isinstance(value, bool), "true or false"),
}


def alert_rules_resolve() -> tuple[list[AlertRule], list[str]]:
    """The defaults with settings.ALERT_RULES applied by name, and what is wrong with it.

    A rule whose override is invalid is left out rather than run with a guess: the system check
    reports every error, but a worker never runs the checks, and the other rules must go on.
    """
    overrides = settings.ALERT_RULES or {}
    by_name = {rule.name: rule for rule in DEFAULT_RULES}
    if not isinstance(overrides, dict):
        return list(DEFAULT_RULES), [
            f"ALERT_RULES must be an object of rule names, not {type(overrides).__name__}."
        ]
    errors = []
    unknown = set(overrides) - set(by_name)
    if unknown:
        errors.append(
            f"ALERT_RULES names unknown rules {sorted(unknown)}; known: {sorted(by_name)}."
        )
    rules = []
    for name, rule in by_name.items():
        problems = _override_problems(name, overrides.get(name, {}))
        if problems:
            errors += problems
        else:
            rules.append(dataclasses.replace(rule, **overrides.get(name, {})))
    return rules, errors


def _override_problems(name: str, changes) -> list[str]:
    where = f"ALERT_RULES[{name!r}]"
    if not isinstance(changes, dict):
        return [f'{where} must be an object such as {{"threshold": 5}}, not {changes!r}.']
    bad = set(changes) - set(OVERRIDABLE)
    if bad:
        return [f"{where} sets {sorted(bad)}; allowed: {sorted(OVERRIDABLE)}."]
    return [
        f"{where}: {field} must be {expected}, not {changes[field]!r}."
        for field, (valid, expected) in OVERRIDABLE.items()
        if field in changes and not valid(changes[field])
    ]


def alert_rules() -> list[AlertRule]:
    """The rules in force; a rule with an invalid override is skipped, and logged."""
    rules, errors = alert_rules_resolve()
    for error in errors:
        logger.error("Invalid alert configuration: %s", error)
    return rules
