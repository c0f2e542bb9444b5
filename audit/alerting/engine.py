"""The incident state machine: turn rule matches in the audit log into alerts and notifications.

For each rule and key (workflow, plus status code for most rules) at evaluation time `now`:

- the condition holds and no incident is open → open one (firing) and notify;
- it holds and an incident is open → update it; notify again only when the repeat interval has
  passed, nobody acknowledged it and the rule is not silenced;
- it stopped holding → remember since when; resolve, with one resolved notification, only once
  it has stayed false for the quiet period. Matching again before that simply continues the same
  incident, so a flapping condition neither resolves nor fires twice.

Rules are evaluated on the raw audit rows of the window (the status/time and time indexes make
that a small range scan), so a window is exact to the second rather than to the minute.
"""

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Min, Sum
from django.utils import timezone

from audit.alerting.notify import notifications_create
from audit.alerting.rules import AlertRule, alert_rules
from audit.models import Alert, AlertNotification, AlertSilence, SessionAttempt

logger = logging.getLogger(__name__)

SAMPLE_SIZE = 5
# Longer than any request takes from its start (an audit row's created_at) to its commit: the
# upstream's total timeout plus the audit write's wait, with room to spare.
SETTLE = timedelta(minutes=2)


@dataclass(frozen=True)
class Match:
    workflow_id: str
    status_code: int | None
    first_seen: datetime
    last_seen: datetime


def fingerprint(rule: AlertRule, workflow_id: str, status_code: int | None) -> str:
    raw = f"{rule.name}|{workflow_id}|{status_code if rule.per_status else '*'}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def alerts_evaluate(*, now: datetime | None = None) -> list[AlertNotification]:
    """Evaluate every rule once; returns the notifications it queued.

    Each rule runs in its own transaction, and one that fails is logged and skipped: the
    others still fire and resolve.
    """
    now = now or timezone.now()
    silenced = set(AlertSilence.objects.filter(until__gt=now).values_list("rule", flat=True))
    queued = []
    for rule in alert_rules():
        evaluate = _rule_evaluate if rule.enabled else _rule_disabled
        try:
            queued += evaluate(rule, now=now, silenced=rule.name in silenced)
        except Exception:  # noqa: BLE001 - one broken rule must not stop the others
            logger.exception("Alert rule %s failed; the other rules were evaluated.", rule.name)
    return queued


def _rule_evaluate(rule: AlertRule, *, now: datetime, silenced: bool) -> list[AlertNotification]:
    with transaction.atomic():
        _lock(rule)
        matches = {(m.workflow_id, m.status_code): m for m in _matches(rule, now=now)}
        open_alerts = {
            (alert.workflow_id, alert.status_code): alert
            for alert in Alert.objects.filter(rule=rule.name, state=Alert.State.FIRING)
        }
        queued = []
        for key, match in matches.items():
            alert = open_alerts.get(key) or _alert_open(rule, match)
            queued += _alert_update(rule, alert, match, now=now, silenced=silenced)
        for key, alert in open_alerts.items():
            if key not in matches:
                queued += _alert_quiet(alert, now=now, silenced=silenced)
        return queued


def _rule_disabled(rule: AlertRule, *, now: datetime, silenced: bool) -> list[AlertNotification]:
    """A rule switched off closes its open incidents, or they would stay firing forever."""
    with transaction.atomic():
        _lock(rule)
        queued = []
        for alert in Alert.objects.filter(rule=rule.name, state=Alert.State.FIRING):
            queued += _alert_resolve(alert, now=now, silenced=silenced, reason="rule_disabled")
        return queued


def _lock(rule: AlertRule) -> None:
    """Serialize evaluations of one rule: two workers must not both open or notify an incident.

    SQLite needs nothing: its transactions already take the write lock when they begin.
    """
    # Not mutated: mutation runs use SQLite; the PostgreSQL concurrency test in CI covers it.
    if connection.vendor == "postgresql":  # pragma: no mutate block
        key = int(hashlib.sha256(f"alert-rule:{rule.name}".encode()).hexdigest()[:15], 16)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])


def _matches(rule: AlertRule, *, now: datetime) -> list[Match]:
    """Keys whose condition holds in the window.

    A key whose previous incident resolved inside the window counts only attempts after that
    resolution: the attempts of a closed incident must not open the next one (with a ratio rule
    they could, once other attempts leave the window and the ratio rises again).
    """
    start = now - timedelta(seconds=rule.window_seconds)
    resolved = (
        # Only a resolved incident has resolved_at.
        Alert.objects.filter(rule=rule.name, resolved_at__gt=start)
        .values("workflow_id", "status_code")
        .annotate(last=Max("resolved_at"))
        .order_by()
    )
    resolutions = {(row["workflow_id"], row["status_code"]): row["last"] for row in resolved}
    found = {
        (m.workflow_id, m.status_code): m
        for m in _counted(rule, start=start, now=now)
        if (m.workflow_id, m.status_code) not in resolutions
    }
    for key, resolved_at in resolutions.items():
        for m in _counted(rule, start=resolved_at, now=now, key=key):
            found[(m.workflow_id, m.status_code)] = m
    return list(found.values())


def _counted(
    rule: AlertRule, *, start: datetime, now: datetime, key: tuple[str, int | None] | None = None
) -> list[Match]:
    """Keys with at least the threshold (and ratio) of matching attempts in (start, now].

    With key (workflow, status code), only that key: the ratio's denominator is still the
    whole workflow.
    """
    window = SessionAttempt.objects.filter(created_at__gt=start, created_at__lte=now)
    matching = window.filter(rule.matches())
    if key is not None:
        workflow_id, status_code = key
        window = window.filter(workflow_id=workflow_id)
        matching = matching.filter(workflow_id=workflow_id)
        if rule.per_status:
            matching = matching.filter(status_code=status_code)  # None means IS NULL
    keys = ["workflow_id", "status_code"] if rule.per_status else ["workflow_id"]
    rows = (
        matching.values(*keys)
        .annotate(n=Sum("requests"), first=Min("created_at"), last=Max("created_at"))
        .order_by()
    )
    totals = {}
    if rule.min_ratio:
        totals = dict(
            window.values("workflow_id").annotate(n=Sum("requests")).values_list("workflow_id", "n")
        )
    return [
        Match(row["workflow_id"], row.get("status_code"), row["first"], row["last"])
        for row in rows
        if row["n"] >= rule.threshold
        and (not rule.min_ratio or row["n"] >= rule.min_ratio * totals[row["workflow_id"]])
    ]


def _alert_open(rule: AlertRule, match: Match) -> Alert:
    """A new incident, unsaved: _alert_update fills in the figures and saves it."""
    return Alert(
        rule=rule.name,
        fingerprint=fingerprint(rule, match.workflow_id, match.status_code),
        severity=rule.severity,
        status_code=match.status_code,
        workflow_id=match.workflow_id,
        first_seen=match.first_seen,
        threshold=rule.threshold,
        window_seconds=rule.window_seconds,
        min_ratio=rule.min_ratio,
    )


def _alert_update(
    rule: AlertRule, alert: Alert, match: Match, *, now: datetime, silenced: bool
) -> list[AlertNotification]:
    notify = not silenced and alert.acknowledged_at is None and _repeat_due(alert, now=now)
    unchanged = alert.pk and alert.last_seen == match.last_seen and not alert.condition_false_since
    if unchanged and not notify:
        return []  # nothing new since the last evaluation: keep evaluations cheap
    matching = SessionAttempt.objects.filter(
        rule.matches(), workflow_id=alert.workflow_id, created_at__gte=alert.first_seen
    )
    if rule.per_status:
        matching = matching.filter(status_code=alert.status_code)
    # Never empty: the match that brought us here is among these attempts.
    latest = list(matching.order_by("-created_at", "-id")[:SAMPLE_SIZE])
    alert.last_seen = match.last_seen
    _count(alert, matching, now=now)
    alert.sample_attempt_ids = [attempt.id for attempt in latest]
    alert.sample_message = latest[0].error_message
    alert.error_code = latest[0].error_code
    alert.condition_false_since = None
    if notify:
        alert.last_notified_at = now
        alert.notifications_sent += 1
    alert.save()
    if not notify:
        return []
    return notifications_create(
        alert, event=AlertNotification.Event.FIRING, sequence=alert.notifications_sent - 1
    )


def _count(alert: Alert, matching, *, now: datetime) -> None:
    """Matching attempts since first seen, at a cost bounded by the time since the last count.

    Counting every row since first_seen on each evaluation grows without end during a long
    incident (and holds the rule's lock meanwhile). Attempts that started before now - SETTLE
    are all committed, so they are counted once into settled_count; only the recent tail is
    counted again each time.
    """
    settled_until = alert.settled_until or alert.first_seen
    settle_to = max(settled_until, now - SETTLE)
    newly_settled = matching.filter(created_at__gte=settled_until, created_at__lt=settle_to)
    alert.settled_count += newly_settled.aggregate(n=Sum("requests", default=0))["n"]
    alert.settled_until = settle_to
    recent = matching.filter(created_at__gte=settle_to).aggregate(n=Sum("requests", default=0))
    alert.count = alert.settled_count + recent["n"]


def _repeat_due(alert: Alert, *, now: datetime) -> bool:
    if alert.last_notified_at is None:
        return True
    interval = timedelta(seconds=settings.ALERT_REPEAT_INTERVAL_SECONDS)
    return now - alert.last_notified_at >= interval


def _alert_quiet(alert: Alert, *, now: datetime, silenced: bool) -> list[AlertNotification]:
    if alert.condition_false_since is None:
        alert.condition_false_since = now
        alert.save(update_fields=["condition_false_since"])
        return []
    if now - alert.condition_false_since < timedelta(seconds=settings.ALERT_QUIET_PERIOD_SECONDS):
        return []
    return _alert_resolve(alert, now=now, silenced=silenced, reason="quiet")


def _alert_resolve(
    alert: Alert, *, now: datetime, silenced: bool, reason: str
) -> list[AlertNotification]:
    alert.state = Alert.State.RESOLVED
    alert.resolved_at = now
    alert.save(update_fields=["state", "resolved_at"])
    # Nobody hears "resolved" while the rule is silenced, nor about an incident nobody was told
    # of (silenced or acknowledged at once).
    if silenced or alert.notifications_sent == 0:
        return []
    return notifications_create(
        alert, event=AlertNotification.Event.RESOLVED, sequence=0, resolved_reason=reason
    )
