"""What an alert notification says: the text an on-call person reads and the payload's fields,
for an incident's life (firing, repeat, resolved) and for alerts with and without a workflow or
an upstream status."""

from datetime import UTC, datetime, timedelta

import pytest

from audit.alerting.engine import alerts_evaluate
from audit.models import Alert, AlertNotification, SessionAttempt
from tests.factories import record_attempts

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
BASE = "https://ops.example"
AUDIT = f"{BASE}/admin/audit/sessionattempt/"


@pytest.fixture(autouse=True)
def admin_base_url(alert_settings):
    alert_settings.ALERT_ADMIN_BASE_URL = BASE + "/"  # as operators paste it, with the slash


def webhook_payloads(queued: list[AlertNotification]) -> list[dict]:
    return [n.payload for n in queued if n.channel == "webhook"]


def test_a_firing_incident_on_a_workflow(settings):
    ok = record_attempts(2, at=T0, workflow="wf_support", outcome="success", status=None)
    failed = record_attempts(3, at=T0 + timedelta(seconds=5), workflow="wf_support")
    [payload] = webhook_payloads(alerts_evaluate(now=T0 + timedelta(minutes=1)))
    alert = Alert.objects.get()

    assert payload["text"] == (
        "[CRITICAL] upstream_auth: upstream 401 on wf_support, 3 since 2026-11-28T12:00:05+00:00"
        ' (threshold 3 in 5 min). Sample: "Incorrect API key provided: sk-[REDACTED]"'
        f" Audit log: {AUDIT}?created_at__gte=2026-11-28T12%3A00%3A05%2B00%3A00"
        "&workflow_id=wf_support&status_code__exact=401"
    )
    assert payload == {
        "id": f"{alert.fingerprint}:{alert.pk}:firing:0",
        "status": "firing",
        "rule": "upstream_auth",
        "severity": "critical",
        "status_code": 401,
        "error_code": "invalid_api_key",
        "workflow_id": "wf_support",
        "sample_message": "Incorrect API key provided: sk-[REDACTED]",
        "count": 3,
        "threshold": 3,
        "window_seconds": 300,
        "min_ratio": None,
        "first_seen": "2026-11-28T12:00:05+00:00",
        "last_seen": "2026-11-28T12:00:07+00:00",
        "resolved_at": None,
        "resolved_reason": None,
        "fingerprint": alert.fingerprint,
        "sample_attempt_ids": [a.pk for a in reversed(failed)],
        "sample_request_ids": [a.request_id for a in reversed(failed)],
        "repeat": 0,
        "audit_url": payload["text"].split("Audit log: ")[1],
        "alert_url": f"{BASE}/admin/audit/alert/{alert.pk}/change/",
    } | {"text": payload["text"]}
    assert ok[0].pk not in payload["sample_attempt_ids"]


def test_an_incident_without_a_workflow_or_status_names_its_rule():
    """Timeouts have no upstream status, and callers may name no workflow."""
    record_attempts(20, at=T0, workflow="", status=None, outcome="timeout", error_message="")
    [payload] = webhook_payloads(alerts_evaluate(now=T0 + timedelta(minutes=1)))

    assert payload["text"] == (
        "[WARNING] upstream_unavailable: upstream_unavailable, 20 since 2026-11-28T12:00:00+00:00"
        f" (threshold 20 in 5 min). Audit log: {AUDIT}"
        "?created_at__gte=2026-11-28T12%3A00%3A00%2B00%3A00"
    )
    assert (payload["status_code"], payload["workflow_id"]) == (None, "")


def test_a_repeat_says_which_and_a_long_sample_is_cut():
    message = "Upstream said: " + "x" * 300
    record_attempts(3, at=T0, workflow="wf_support", error_message=message)
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    # Still failing an hour on: the reminder.
    record_attempts(3, at=T0 + timedelta(minutes=59), workflow="wf_support", error_message=message)
    [payload] = webhook_payloads(alerts_evaluate(now=T0 + timedelta(minutes=61)))

    alert = Alert.objects.get()
    assert (payload["status"], payload["repeat"]) == ("firing", 1)
    assert payload["id"] == f"{alert.fingerprint}:{alert.pk}:firing:1"
    assert payload["count"] == 6
    assert f' Sample: "{message[:200]}" Audit log: ' in payload["text"]


def test_a_quiet_incident_resolves():
    record_attempts(3, at=T0, workflow="wf_support")
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    alerts_evaluate(now=T0 + timedelta(minutes=6))  # quiet from here
    [payload] = webhook_payloads(alerts_evaluate(now=T0 + timedelta(minutes=16)))

    alert = Alert.objects.get()
    assert payload["text"] == (
        "[RESOLVED] upstream_auth: upstream 401 on wf_support is quiet again."
        f" {BASE}/admin/audit/alert/{alert.pk}/change/"
    )
    assert (payload["status"], payload["repeat"]) == ("resolved", None)
    assert (payload["resolved_at"], payload["resolved_reason"]) == (
        "2026-11-28T12:16:00+00:00",
        "quiet",
    )
    assert payload["id"] == f"{alert.fingerprint}:{alert.pk}:resolved:0"


def test_an_incident_closed_by_disabling_its_rule(settings):
    record_attempts(20, at=T0, workflow="", status=None, outcome="timeout")
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    settings.ALERT_RULES = {"upstream_unavailable": {"enabled": False}}
    [payload] = webhook_payloads(alerts_evaluate(now=T0 + timedelta(minutes=2)))

    alert = Alert.objects.get()
    assert payload["text"] == (
        "[RESOLVED] upstream_unavailable: upstream_unavailable closed: the rule was disabled."
        f" {BASE}/admin/audit/alert/{alert.pk}/change/"
    )
    assert payload["resolved_reason"] == "rule_disabled"


def test_a_pruned_sample_drops_out_of_the_request_ids():
    failed = record_attempts(3, at=T0, workflow="wf_support")
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    SessionAttempt.objects.filter(pk=failed[1].pk).delete()  # retention pruned it
    alerts_evaluate(now=T0 + timedelta(minutes=6))
    [payload] = webhook_payloads(alerts_evaluate(now=T0 + timedelta(minutes=16)))

    newest_first = list(reversed(failed))
    assert payload["sample_attempt_ids"] == [a.pk for a in newest_first]
    assert payload["sample_request_ids"] == [newest_first[0].request_id, newest_first[2].request_id]
