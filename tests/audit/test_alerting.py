"""The incident state machine, with time controlled by passing `now` explicitly."""

import json
import threading
from datetime import UTC, datetime, timedelta
from hashlib import sha256

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.alerting import sweep
from audit.alerting.engine import alerts_evaluate, fingerprint
from audit.alerting.rules import DEFAULT_RULES, AlertRule, alert_rules_resolve
from audit.checks import alerting_settings_check
from audit.models import (
    Alert,
    AlertNotification,
    AlertSilence,
    ErrorReport,
    Heartbeat,
    SessionAttempt,
)
from audit.services import session_attempt_record
from sessions_api import errors
from tests.factories import record_attempts

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("alert_settings")]

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
WF = "wf_alerting"


def attempts(n, *, at=T0, workflow=WF, **kwargs) -> list[SessionAttempt]:
    return record_attempts(n, at=at, workflow=workflow, **kwargs)


def firing_events() -> list[tuple[str, int]]:
    rows = AlertNotification.objects.filter(channel="webhook").order_by("id")
    return [(n.event, n.sequence) for n in rows]


def queued_events(queued: list[AlertNotification]) -> set[tuple[str, int, str]]:
    return {(n.event, n.sequence, n.channel) for n in queued}


def test_threshold_minus_one_fires_nothing():
    attempts(2)
    assert alerts_evaluate(now=T0 + timedelta(minutes=1)) == []
    assert not Alert.objects.exists()


def test_threshold_fires_one_critical_incident_with_one_notification_per_channel():
    attempts(3)
    queued = alerts_evaluate(now=T0 + timedelta(minutes=1))

    alert = Alert.objects.get()
    assert (alert.rule, alert.severity, alert.state) == ("upstream_auth", "critical", "firing")
    assert (alert.status_code, alert.workflow_id, alert.count) == (401, WF, 3)
    assert alert.first_seen == T0 and alert.last_seen == T0 + timedelta(seconds=2)
    assert alert.error_code == "invalid_api_key"
    assert len(alert.sample_attempt_ids) == 3
    assert sorted(n.channel for n in queued) == ["log", "webhook"]
    assert firing_events() == [("firing", 0)]


def test_evaluating_again_changes_nothing_until_the_repeat_interval():
    attempts(3)
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    attempts(3, at=T0 + timedelta(minutes=2))
    assert alerts_evaluate(now=T0 + timedelta(minutes=3)) == []
    assert Alert.objects.get().count == 6

    # Still failing an hour after the first notification: one repeat.
    attempts(3, at=T0 + timedelta(minutes=59))
    assert alerts_evaluate(now=T0 + timedelta(minutes=60, seconds=59)) == []
    # Exactly the repeat interval after the first notification.
    assert queued_events(alerts_evaluate(now=T0 + timedelta(minutes=61))) == {
        ("firing", 1, "log"),
        ("firing", 1, "webhook"),
    }
    assert alerts_evaluate(now=T0 + timedelta(minutes=62)) == []
    assert firing_events() == [("firing", 0), ("firing", 1)]
    assert Alert.objects.count() == 1


def test_acknowledgement_stops_repeats():
    attempts(3)
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    Alert.objects.update(acknowledged_at=T0 + timedelta(minutes=2), acknowledged_by="ops")
    attempts(3, at=T0 + timedelta(minutes=90))
    assert alerts_evaluate(now=T0 + timedelta(minutes=91)) == []
    assert firing_events() == [("firing", 0)]


def test_silenced_rule_records_but_does_not_notify_until_the_silence_ends():
    AlertSilence.objects.create(rule="upstream_auth", until=T0 + timedelta(minutes=30))
    attempts(3)
    assert alerts_evaluate(now=T0 + timedelta(minutes=1)) == []
    assert Alert.objects.get().state == "firing"

    attempts(3, at=T0 + timedelta(minutes=31))
    assert queued_events(alerts_evaluate(now=T0 + timedelta(minutes=32))) == {
        ("firing", 0, "log"),
        ("firing", 0, "webhook"),
    }
    assert firing_events() == [("firing", 0)]


def test_resolves_only_after_the_quiet_period_with_one_resolved_notification():
    attempts(3)
    alerts_evaluate(now=T0 + timedelta(minutes=1))

    # The window (5 min) has passed: the condition is false, the quiet period starts.
    assert alerts_evaluate(now=T0 + timedelta(minutes=6)) == []
    assert Alert.objects.get().state == "firing"
    assert alerts_evaluate(now=T0 + timedelta(minutes=15)) == []
    assert Alert.objects.get().state == "firing"

    queued = alerts_evaluate(now=T0 + timedelta(minutes=16))
    assert {n.event for n in queued} == {"resolved"}
    alert = Alert.objects.get()
    assert (alert.state, alert.resolved_at) == ("resolved", T0 + timedelta(minutes=16))
    assert alerts_evaluate(now=T0 + timedelta(minutes=30)) == []
    assert firing_events() == [("firing", 0), ("resolved", 0)]


def test_flapping_within_the_quiet_period_neither_resolves_nor_fires_again():
    attempts(3)
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    alerts_evaluate(now=T0 + timedelta(minutes=6))  # false: quiet period starts
    attempts(3, at=T0 + timedelta(minutes=10))
    assert alerts_evaluate(now=T0 + timedelta(minutes=11)) == []  # true again: same incident
    alert = Alert.objects.get()
    assert (alert.state, alert.condition_false_since) == ("firing", None)

    # False again; the quiet period starts over from this point.
    alerts_evaluate(now=T0 + timedelta(minutes=16))
    assert alerts_evaluate(now=T0 + timedelta(minutes=25)) == []
    assert Alert.objects.get().state == "firing"
    assert queued_events(alerts_evaluate(now=T0 + timedelta(minutes=26))) == {
        ("resolved", 0, "log"),
        ("resolved", 0, "webhook"),
    }
    assert firing_events() == [("firing", 0), ("resolved", 0)]


def test_a_new_incident_after_resolution_notifies_again():
    attempts(3)
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    alerts_evaluate(now=T0 + timedelta(minutes=6))
    alerts_evaluate(now=T0 + timedelta(minutes=16))
    attempts(3, at=T0 + timedelta(minutes=20))
    alerts_evaluate(now=T0 + timedelta(minutes=21))
    assert list(Alert.objects.order_by("id").values_list("state", flat=True)) == [
        "resolved",
        "firing",
    ]
    assert len(set(Alert.objects.values_list("fingerprint", flat=True))) == 1
    assert firing_events() == [("firing", 0), ("resolved", 0), ("firing", 0)]


def test_one_incident_per_workflow_and_status():
    attempts(3, status=401)
    attempts(3, status=403)
    attempts(3, status=401, workflow="wf_other")
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    keys = set(Alert.objects.values_list("status_code", "workflow_id"))
    assert keys == {(401, WF), (403, WF), (401, "wf_other")}


def test_404_rule():
    attempts(3, status=404)
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    assert Alert.objects.get().rule == "upstream_workflow_not_found"


def test_400_rule_needs_both_count_and_ratio():
    attempts(10, status=400)
    attempts(41, status=200, outcome="success")  # 10 of 51 attempts: under 20%
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    assert not Alert.objects.exists()

    attempts(1, status=422, at=T0 + timedelta(seconds=30))  # 11 of 52 ≥ 20%
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    assert not Alert.objects.exists()  # 400 and 422 are separate keys: 10 and 1

    attempts(1, status=400, at=T0 + timedelta(seconds=40))  # 11 × 400 of 53 attempts
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    alert = Alert.objects.get()
    assert (alert.rule, alert.severity, alert.status_code) == ("upstream_rejected", "warning", 400)


def test_unavailable_rule_counts_5xx_timeouts_and_network_errors_together():
    attempts(8, status=502)
    attempts(6, status=None, outcome="timeout", at=T0 + timedelta(seconds=10))
    attempts(5, status=None, outcome="network_error", at=T0 + timedelta(seconds=20))
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    assert not Alert.objects.exists()  # 19
    attempts(1, status=503, at=T0 + timedelta(seconds=30))
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    alert = Alert.objects.get()
    assert (alert.rule, alert.status_code, alert.count) == ("upstream_unavailable", None, 20)


def test_rules_can_be_overridden_from_settings(settings):
    settings.ALERT_RULES = {"upstream_auth": {"threshold": 5, "severity": "warning"}}
    attempts(4)
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    assert not Alert.objects.exists()
    attempts(1, at=T0 + timedelta(seconds=30))
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    assert Alert.objects.get().severity == "warning"

    settings.ALERT_RULES = {"upstream_auth": {"enabled": False}}
    attempts(3, status=401, workflow="wf_other")
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    assert Alert.objects.count() == 1


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"no_such_rule": {}}, "ALERT_RULES names unknown rules ['no_such_rule']; known: ["),
        (
            {"upstream_auth": {"status_codes": [500]}},
            "ALERT_RULES['upstream_auth'] sets ['status_codes']; allowed: ",
        ),
    ],
)
def test_invalid_rule_overrides_fail_the_system_check(settings, rules, message):
    settings.ALERT_RULES = rules
    with pytest.raises(SystemCheckError, match="audit.E001") as failure:
        call_command("check")
    assert message in str(failure.value)


@pytest.mark.parametrize(
    ("field", "value", "valid"),
    [
        ("threshold", 1, True),
        ("threshold", 0, False),
        ("threshold", 2.0, False),
        ("threshold", False, False),
        ("window_seconds", 1, True),
        ("window_seconds", 0, False),
        ("min_ratio", None, True),
        ("min_ratio", 1, True),
        ("min_ratio", 1.0, True),
        ("min_ratio", 0.05, True),
        ("min_ratio", 0, False),
        ("min_ratio", 1.01, False),
        ("min_ratio", True, False),
        ("severity", "critical", True),
        ("severity", "warning", True),
        ("severity", "info", False),
        ("severity", "CRITICAL", False),
        ("enabled", False, True),
        ("enabled", 0, False),
    ],
)
def test_override_values_on_each_boundary(settings, field, value, valid):
    settings.ALERT_RULES = {"upstream_rejected": {field: value}}
    rules, errors = alert_rules_resolve()
    names = [rule.name for rule in rules]
    if valid:
        assert errors == []
        [rule] = [rule for rule in rules if rule.name == "upstream_rejected"]
        assert getattr(rule, field) == value
    else:
        assert len(errors) == 1 and f"{field} must be" in errors[0]
        assert "upstream_rejected" not in names
    assert len(names) == len(DEFAULT_RULES) - (0 if valid else 1)


def test_a_rule_matches_any_of_its_error_codes():
    rule = AlertRule(
        name="custom",
        title="Custom",
        severity="warning",
        threshold=1,
        error_codes=("upstream_rate_limited", "upstream_timeout"),
    )
    for status in (200, 401, 429, 500):
        attempts(1, status=status, outcome="upstream_error", workflow=f"wf_{status}")
    attempts(1, status=None, outcome="timeout", workflow="wf_timeout")
    attempts(1, status=None, outcome="network_error", workflow="wf_network")

    matched = SessionAttempt.objects.filter(rule.matches()).values_list("workflow_id", flat=True)
    assert sorted(matched) == ["wf_429", "wf_timeout"]
    nothing = AlertRule(name="none", title="None", severity="warning", threshold=1)
    assert not SessionAttempt.objects.filter(nothing.matches()).exists()


@pytest.mark.parametrize(
    ("outcome", "status", "rule"),
    [
        ("upstream_error", 401, "upstream_auth"),
        ("upstream_error", 403, "upstream_auth"),
        ("upstream_error", 404, "upstream_workflow_not_found"),
        ("upstream_error", 400, "upstream_rejected"),
        ("upstream_error", 409, "upstream_rejected"),
        ("upstream_error", 422, "upstream_rejected"),
        ("upstream_error", 500, "upstream_unavailable"),
        ("upstream_error", 503, "upstream_unavailable"),
        ("timeout", None, "upstream_unavailable"),
        ("network_error", None, "upstream_unavailable"),
        ("upstream_error", 429, None),
        ("invalid_response", 200, None),
    ],
)
def test_each_upstream_failure_falls_under_the_rule_of_its_error(outcome, status, rule):
    # The rules follow the service's one classification: a 409 is upstream_rejected for the
    # browser, so it counts towards that rule too.
    attempts(1, status=status, outcome=outcome)

    matched = [r.name for r in DEFAULT_RULES if SessionAttempt.objects.filter(r.matches()).exists()]
    assert matched == ([rule] if rule else [])


def test_every_error_code_a_rule_names_is_one_the_api_answers_with():
    codes = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.ApplicationError)
    }
    for rule in DEFAULT_RULES:
        assert rule.error_codes and set(rule.error_codes) <= codes, rule.name


def test_every_answer_the_browser_sees_as_unavailable_counts_as_unavailable():
    # 5xx, and what is not a 4xx either (a redirect, a status past 599): the same errors the
    # browser is given, so the alert and the answers agree.
    [unavailable] = [rule for rule in DEFAULT_RULES if rule.name == "upstream_unavailable"]
    for status in (302, 499, 500, 599, 600):
        attempts(1, status=status, workflow=f"wf_{status}")
    matched = SessionAttempt.objects.filter(unavailable.matches()).values_list(
        "workflow_id", flat=True
    )
    assert sorted(matched) == ["wf_302", "wf_500", "wf_599", "wf_600"]


def test_payload_is_complete_and_free_of_secrets_and_usernames(django_user_model):
    user = django_user_model.objects.create_user(username="grace.hopper")
    for i in range(3):
        session_attempt_record(
            outcome="upstream_error",
            status_code=401,
            api_error_code="upstream_auth_failed",
            workflow_id=WF,
            user=user,
            user_ref="u_pseudonymous",
            anonymous=False,
            started_at=T0 + timedelta(seconds=i),
            error_message="Incorrect API key provided: sk-live-abcdefghijklmnop1234",
        )
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    payload = AlertNotification.objects.get(channel="webhook").payload

    expected = {
        "id", "status", "rule", "severity", "status_code", "error_code", "workflow_id",
        "sample_message", "count", "threshold", "window_seconds", "first_seen", "last_seen",
        "fingerprint", "sample_attempt_ids", "audit_url", "text",
    }  # fmt: skip
    assert expected <= set(payload)
    assert payload["status"] == "firing" and payload["count"] == 3 and payload["threshold"] == 3
    dumped = json.dumps(payload)
    assert "grace.hopper" not in dumped
    assert "sk-live-abcdefghijklmnop1234" not in dumped
    assert "[CRITICAL] upstream_auth: upstream 401 on wf_alerting" in payload["text"]


def test_audit_link_opens_the_prefiltered_audit_list(admin_client):
    attempts(3)
    attempts(2, workflow="wf_elsewhere")
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    url = AlertNotification.objects.get(channel="webhook").payload["audit_url"]
    path = url.removeprefix("http://127.0.0.1:8000")
    response = admin_client.get(path)
    assert response.status_code == 200
    assert response.content.decode().count("anon_") == 3


@pytest.mark.django_db(transaction=True)
def test_two_evaluations_at_once_make_one_incident_and_one_notification():
    if connection.vendor != "postgresql":
        pytest.skip("concurrent transactions need PostgreSQL (SQLite serializes them anyway)")
    attempts(3)
    barrier = threading.Barrier(2)
    errors = []

    def evaluate():
        try:
            barrier.wait()
            alerts_evaluate(now=T0 + timedelta(minutes=1))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=evaluate) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert Alert.objects.count() == 1
    assert firing_events() == [("firing", 0)]


def test_a_failing_sweep_step_does_not_stop_the_others(monkeypatch, settings, mailoutbox):
    attempts(3, at=timezone.now() - timedelta(seconds=10))
    report = ErrorReport.objects.create(
        period_start=T0,
        period_end=T0 + timedelta(days=1),
        data={"errors": 0, "success_rate": 1.0},
        text="report",
        email_retry_at=timezone.now(),
    )
    settings.ALERT_EMAIL_TO = ["ops@example.com"]

    def broken(**kwargs):
        raise RuntimeError("redelivery broke")

    monkeypatch.setattr(sweep, "notifications_redeliver", broken)
    with pytest.raises(RuntimeError, match="redelivery broke"):
        sweep.alerts_sweep()

    assert Heartbeat.objects.filter(name=sweep.SWEEP_HEARTBEAT).exists()
    assert Alert.objects.filter(rule="upstream_auth").exists()  # evaluated
    report.refresh_from_db()
    assert report.emailed_at is not None and len(mailoutbox) == 1  # and the report went out


def test_each_incident_has_its_own_payload_ids():
    """Receivers drop repeats by id: a later incident of the same rule and key is not a repeat."""
    attempts(3)
    first = alerts_evaluate(now=T0 + timedelta(minutes=1))
    alerts_evaluate(now=T0 + timedelta(minutes=6))
    resolved = alerts_evaluate(now=T0 + timedelta(minutes=16))
    attempts(3, at=T0 + timedelta(minutes=20))
    second = alerts_evaluate(now=T0 + timedelta(minutes=21))

    ids = [n.payload["id"] for n in (*first, *resolved, *second) if n.channel == "webhook"]
    assert len(ids) == len(set(ids)) == 3
    old, new = Alert.objects.order_by("id")
    assert old.fingerprint == new.fingerprint  # same rule and key…
    assert ids[0] != ids[2]  # …different incidents


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"upstream_rejected": {"threshold": "5"}}, "threshold must be a whole number ≥ 1"),
        ({"upstream_rejected": {"threshold": 0}}, "threshold must be a whole number ≥ 1"),
        ({"upstream_auth": {"threshold": True}}, "threshold must be a whole number ≥ 1"),
        ({"upstream_auth": {"window_seconds": 2.5}}, "window_seconds must be a whole number"),
        ({"upstream_rejected": {"min_ratio": "0.2"}}, "min_ratio must be a number in (0, 1]"),
        ({"upstream_rejected": {"min_ratio": 1.5}}, "min_ratio must be a number in (0, 1]"),
        ({"upstream_auth": {"severity": "loud"}}, "severity must be one of"),
        ({"upstream_auth": {"enabled": "false"}}, "enabled must be true or false"),
        ({"upstream_auth": 5}, "ALERT_RULES['upstream_auth'] must be an object"),
        (["upstream_auth"], "ALERT_RULES must be an object of rule names, not list."),
    ],
)
def test_mistyped_rule_overrides_fail_the_system_check(settings, rules, message):
    settings.ALERT_RULES = rules
    with pytest.raises(SystemCheckError, match="audit.E001") as failure:
        call_command("check")
    assert message in str(failure.value)


def test_a_misconfigured_rule_does_not_stop_the_others(settings, caplog):
    """The check refuses bad values, but a worker started without it must still alert."""
    settings.ALERT_RULES = {"upstream_rejected": {"threshold": "5"}, "upstream_auth": 5}
    attempts(3, status=404)
    attempts(20, status=400)

    alerts_evaluate(now=T0 + timedelta(minutes=1))

    # The 404 rule still fires; the two broken rules are skipped and say why.
    assert set(Alert.objects.values_list("rule", flat=True)) == {"upstream_workflow_not_found"}
    logged = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert logged == [
        "Invalid alert configuration: ALERT_RULES['upstream_auth'] must be an object such as "
        '{"threshold": 5}, not 5.',
        "Invalid alert configuration: ALERT_RULES['upstream_rejected']: threshold must be a "
        "whole number ≥ 1, not '5'.",
    ]


def test_a_rule_that_fails_to_evaluate_does_not_stop_the_others(monkeypatch, caplog):
    from audit.alerting import engine

    real = engine._matches

    def broken_for_auth(rule, **kwargs):
        if rule.name == "upstream_auth":
            raise RuntimeError("boom")
        return real(rule, **kwargs)

    monkeypatch.setattr(engine, "_matches", broken_for_auth)
    attempts(3, status=401)
    attempts(3, status=404)

    alerts_evaluate(now=T0 + timedelta(minutes=1))

    assert set(Alert.objects.values_list("rule", flat=True)) == {"upstream_workflow_not_found"}
    [failure] = [record for record in caplog.records if record.levelname == "ERROR"]
    assert (
        failure.getMessage() == "Alert rule upstream_auth failed; the other rules were evaluated."
    )
    assert failure.exc_info[1].args == ("boom",)


def test_disabling_a_rule_resolves_its_open_incidents_once(settings):
    attempts(3)
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    attempts(3, at=T0 + timedelta(minutes=2))

    settings.ALERT_RULES = {"upstream_auth": {"enabled": False}}
    queued = alerts_evaluate(now=T0 + timedelta(minutes=3))

    alert = Alert.objects.get()
    assert (alert.state, alert.resolved_at) == ("resolved", T0 + timedelta(minutes=3))
    [webhook] = [n for n in queued if n.channel == "webhook"]
    assert webhook.payload["status"] == "resolved"
    assert webhook.payload["resolved_reason"] == "rule_disabled"
    assert "the rule was disabled" in webhook.payload["text"]
    assert alerts_evaluate(now=T0 + timedelta(minutes=4)) == []
    assert firing_events() == [("firing", 0), ("resolved", 0)]


def test_a_silenced_rule_resolves_without_telling_anyone():
    attempts(3)
    alerts_evaluate(now=T0 + timedelta(minutes=1))  # fired and notified
    AlertSilence.objects.create(rule="upstream_auth", until=T0 + timedelta(hours=1))

    alerts_evaluate(now=T0 + timedelta(minutes=6))
    assert alerts_evaluate(now=T0 + timedelta(minutes=16)) == []

    assert Alert.objects.get().state == "resolved"
    assert firing_events() == [("firing", 0)]


def test_a_silence_that_has_ended_lets_the_resolved_message_through():
    attempts(3)
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    AlertSilence.objects.create(rule="upstream_auth", until=T0 + timedelta(minutes=16))

    alerts_evaluate(now=T0 + timedelta(minutes=6))
    alerts_evaluate(now=T0 + timedelta(minutes=16))  # the silence ends exactly now

    assert firing_events() == [("firing", 0), ("resolved", 0)]


def test_a_resolved_ratio_alert_does_not_fire_again_on_old_attempts(settings):
    """Quiet period shorter than the window: old 400s must not open a second incident."""
    settings.ALERT_QUIET_PERIOD_SECONDS = 60
    attempts(40, at=T0 - timedelta(seconds=150), status=200, outcome="success")
    attempts(12, status=400)  # 12 of 52: 23 %, fires
    alerts_evaluate(now=T0 + timedelta(seconds=15))
    attempts(10, at=T0 + timedelta(seconds=20), status=500)  # 12 of 62: 19 %, false
    alerts_evaluate(now=T0 + timedelta(seconds=40))
    alerts_evaluate(now=T0 + timedelta(seconds=101))
    assert Alert.objects.get().state == "resolved"

    # The successes leave the window: 12 old 400s of 22 attempts would be 55 %.
    assert alerts_evaluate(now=T0 + timedelta(seconds=200)) == []
    assert Alert.objects.count() == 1

    # New 400s after the resolution are a new incident, counted from the resolution on.
    attempts(10, at=T0 + timedelta(seconds=210), status=400)
    alerts_evaluate(now=T0 + timedelta(seconds=225))
    new = Alert.objects.filter(state="firing").get()
    assert (new.first_seen, new.count) == (T0 + timedelta(seconds=210), 10)


def test_incidents_record_the_rule_as_it_was_and_the_latest_sample():
    attempts(10, status=400)
    record_attempts(  # the newest 400 says something else
        1,
        at=T0 + timedelta(seconds=30),
        workflow=WF,
        status=400,
        error_message="Bad param",
        error_code="invalid_param",
    )
    alerts_evaluate(now=T0 + timedelta(minutes=1))

    alert = Alert.objects.get()
    assert (alert.rule, alert.threshold, alert.window_seconds, alert.min_ratio) == (
        "upstream_rejected",
        10,
        300,
        0.2,
    )
    assert (alert.count, alert.last_seen) == (11, T0 + timedelta(seconds=30))
    assert (alert.sample_message, alert.error_code) == ("Bad param", "invalid_param")
    newest = SessionAttempt.objects.order_by("-created_at")[:5]
    assert alert.sample_attempt_ids == [attempt.id for attempt in newest]


def test_samples_are_the_latest_by_time_even_when_committed_out_of_order():
    late = attempts(3, at=T0 + timedelta(seconds=20))  # written first, happened last
    early = attempts(3, at=T0)
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    expected = [a.id for a in reversed(late)] + [a.id for a in reversed(early)][:2]
    assert Alert.objects.get().sample_attempt_ids == expected


def test_a_ratio_of_exactly_the_minimum_fires():
    attempts(10, status=400)
    attempts(40, at=T0 + timedelta(seconds=10), status=200, outcome="success")  # 10 of 50: 20 %
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    assert Alert.objects.get().rule == "upstream_rejected"


def test_attempts_after_the_evaluation_moment_do_not_count():
    attempts(2)
    attempts(3, at=T0 + timedelta(minutes=2))
    assert alerts_evaluate(now=T0 + timedelta(minutes=1)) == []
    alerts_evaluate(now=T0 + timedelta(minutes=3))
    assert Alert.objects.get().count == 5


def test_each_incident_counts_only_its_own_key_and_rule():
    attempts(3, status=401)
    attempts(4, status=401, workflow="wf_other")
    attempts(20, status=502)
    attempts(5, status=200, outcome="success", at=T0 + timedelta(seconds=30))
    queued = alerts_evaluate(now=T0 + timedelta(minutes=1))

    counts = {(a.rule, a.workflow_id, a.status_code): a.count for a in Alert.objects.all()}
    assert counts == {
        ("upstream_auth", WF, 401): 3,
        ("upstream_auth", "wf_other", 401): 4,
        ("upstream_unavailable", WF, None): 20,
    }
    assert len([n for n in queued if n.channel == "webhook"]) == 3


def test_two_incidents_resolving_at_once_each_say_so():
    attempts(3)
    attempts(3, workflow="wf_other")
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    alerts_evaluate(now=T0 + timedelta(minutes=6))
    queued = alerts_evaluate(now=T0 + timedelta(minutes=16))
    resolved = [n for n in queued if n.channel == "webhook"]
    assert sorted(n.payload["workflow_id"] for n in resolved) == [WF, "wf_other"]
    assert {n.payload["resolved_reason"] for n in resolved} == {"quiet"}
    assert all("is quiet again" in n.payload["text"] for n in resolved)


def test_evaluating_with_nothing_new_writes_nothing():
    attempts(3)
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    with CaptureQueriesContext(connection) as queries:
        assert alerts_evaluate(now=T0 + timedelta(minutes=2)) == []
    writes = [q["sql"] for q in queries if q["sql"].startswith(("INSERT", "UPDATE", "DELETE"))]
    assert writes == []


def test_a_ratio_incident_that_holds_again_clears_its_quiet_period():
    """The same 400s hold again once older successes leave the window: no new rows."""
    attempts(40, at=T0 - timedelta(seconds=150), status=200, outcome="success")
    attempts(12, status=400)
    alerts_evaluate(now=T0 + timedelta(seconds=15))
    attempts(10, at=T0 + timedelta(seconds=20), status=500)
    alerts_evaluate(now=T0 + timedelta(seconds=40))
    assert Alert.objects.get(rule="upstream_rejected").condition_false_since is not None

    alerts_evaluate(now=T0 + timedelta(seconds=200))  # 12 of 22
    alert = Alert.objects.get(rule="upstream_rejected")
    assert (alert.state, alert.condition_false_since) == ("firing", None)


def test_a_resolution_older_than_the_window_does_not_stretch_it():
    attempts(3)
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    alerts_evaluate(now=T0 + timedelta(minutes=6))
    alerts_evaluate(now=T0 + timedelta(minutes=16))  # resolved
    attempts(2, at=T0 + timedelta(minutes=50))
    attempts(1, at=T0 + timedelta(minutes=58))
    alerts_evaluate(now=T0 + timedelta(minutes=59))  # 1 in the window, 3 since the resolution
    assert not Alert.objects.filter(state="firing").exists()


def test_a_resolution_narrows_only_its_own_key():
    """Other workflows and statuses keep the whole window, first attempt included."""
    attempts(3)  # (WF, 401) fires, then resolves at T0+16 min
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    alerts_evaluate(now=T0 + timedelta(minutes=6))
    alerts_evaluate(now=T0 + timedelta(minutes=16))
    for workflow, status in (("wf_other", 401), (WF, 403)):
        attempts(1, at=T0 + timedelta(minutes=15), workflow=workflow, status=status)
        attempts(3, at=T0 + timedelta(minutes=16, seconds=10), workflow=workflow, status=status)

    alerts_evaluate(now=T0 + timedelta(minutes=17))

    firing = Alert.objects.filter(state="firing")
    assert {(a.workflow_id, a.status_code, a.first_seen, a.count) for a in firing} == {
        ("wf_other", 401, T0 + timedelta(minutes=15), 4),
        (WF, 403, T0 + timedelta(minutes=15), 4),
    }


def test_disabling_a_rule_leaves_other_rules_and_closed_incidents_alone(settings):
    attempts(3)
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    alerts_evaluate(now=T0 + timedelta(minutes=6))
    alerts_evaluate(now=T0 + timedelta(minutes=16))  # the first incident resolved
    attempts(3, at=T0 + timedelta(minutes=20))
    attempts(3, at=T0 + timedelta(minutes=20), workflow="wf_other")
    attempts(3, at=T0 + timedelta(minutes=20), status=404)
    alerts_evaluate(now=T0 + timedelta(minutes=21))

    settings.ALERT_RULES = {"upstream_auth": {"enabled": False}}
    queued = alerts_evaluate(now=T0 + timedelta(minutes=22))

    states = {(a.rule, a.workflow_id, a.resolved_at) for a in Alert.objects.exclude(state="firing")}
    assert states == {
        ("upstream_auth", WF, T0 + timedelta(minutes=16)),  # untouched
        ("upstream_auth", WF, T0 + timedelta(minutes=22)),
        ("upstream_auth", "wf_other", T0 + timedelta(minutes=22)),
    }
    assert Alert.objects.get(state="firing").rule == "upstream_workflow_not_found"
    assert len([n for n in queued if n.channel == "webhook"]) == 2


def test_disabling_a_silenced_rule_closes_its_incidents_quietly(settings):
    attempts(3)
    alerts_evaluate(now=T0 + timedelta(minutes=1))
    AlertSilence.objects.create(rule="upstream_auth", until=T0 + timedelta(hours=1))
    settings.ALERT_RULES = {"upstream_auth": {"enabled": False}}
    assert alerts_evaluate(now=T0 + timedelta(minutes=2)) == []
    assert Alert.objects.get().state == "resolved"


def test_fingerprints_are_stable_across_versions():
    """Receivers group notifications by fingerprint: changing the recipe regroups them."""
    auth, _, _, unavailable, _ = DEFAULT_RULES
    assert fingerprint(auth, "wf_1", 401) == sha256(b"upstream_auth|wf_1|401").hexdigest()[:32]
    assert (
        fingerprint(unavailable, "wf_1", None)
        == fingerprint(unavailable, "wf_1", 502)
        == sha256(b"upstream_unavailable|wf_1|*").hexdigest()[:32]
    )


def test_the_webhook_check_never_prints_the_url(settings):
    # A Slack webhook's path is its token; `manage.py check` output ends up in CI logs.
    settings.ALERT_WEBHOOK_URL = "ftp://hooks.example/services/T000/B000/tokentokentoken"
    [message] = alerting_settings_check()
    assert "tokentokentoken" not in f"{message.msg} {message.hint}"


@pytest.mark.parametrize(
    ("setting", "value", "error"),
    [
        ("ALERT_WEBHOOK_URL", "ftp://hooks.example/x", "audit.E002"),
        ("ALERT_WEBHOOK_URL", "https://", "audit.E002"),
        ("ALERT_WEBHOOK_URL", "https://hooks.example/x", None),
        ("ALERT_EMAIL_TO", ["ops@example.com", "oncall"], "audit.E003"),
        ("ALERT_EMAIL_TO", ["ops@example.com"], None),
    ],
)
def test_alert_destinations_are_checked(settings, setting, value, error):
    setattr(settings, setting, value)
    assert [message.id for message in alerting_settings_check()] == ([error] if error else [])


def test_an_incident_without_a_workflow_and_with_a_unicode_message(admin_client, settings):
    """Ordinary data: callers that named no workflow, and an upstream that speaks French."""
    settings.ALERT_ADMIN_BASE_URL = "https://ops.example/"
    attempts(3, workflow="", error_message="Clé API incorrecte : « sk-[REDACTED] » ✗")
    alerts_evaluate(now=T0 + timedelta(minutes=1))

    payload = AlertNotification.objects.get(channel="webhook").payload
    assert (payload["workflow_id"], payload["status_code"]) == ("", 401)
    assert payload["sample_message"] == "Clé API incorrecte : « sk-[REDACTED] » ✗"
    assert payload["text"].startswith("[CRITICAL] upstream_auth: upstream 401, 3 since ")
    assert "workflow_id" not in payload["audit_url"]
    assert json.loads(json.dumps(payload)) == payload
    page = admin_client.get(payload["audit_url"].removeprefix("https://ops.example"))
    assert page.status_code == 200 and len(page.context["cl"].result_list) == 3


def test_a_long_incident_is_counted_exactly_while_each_evaluation_counts_only_the_recent_tail():
    """Three hours of 401s among successes, evaluated every minute: the count is every matching
    attempt since first seen, yet attempts older than the settle margin are counted once. The
    proof: once settled, the incident's first hour can be pruned and the count stays."""
    total = 0
    for minute in range(180):
        at = T0 + timedelta(minutes=minute)
        attempts(2, at=at, status=200, outcome="success")
        failed = 3 if minute % 3 == 0 else 1
        attempts(failed, at=at + timedelta(seconds=10))
        total += failed
        alerts_evaluate(now=at + timedelta(seconds=30))
        if minute == 120:  # a late row: committed now, started 90 s ago, inside the margin
            attempts(1, at=at - timedelta(seconds=90))
            total += 1
    alert = Alert.objects.get()
    assert alert.count == total == 60 * 3 + 120 * 1 + 1

    SessionAttempt.objects.filter(created_at__lt=T0 + timedelta(hours=1)).delete()
    attempts(1, at=T0 + timedelta(minutes=180))
    alerts_evaluate(now=T0 + timedelta(minutes=180, seconds=30))
    alert.refresh_from_db()
    assert alert.count == total + 1
    assert alert.settled_until == T0 + timedelta(minutes=178, seconds=30)


def test_an_incident_first_evaluated_after_the_settle_margin_counts_only_its_settled_attempts():
    """Nothing in the recent tail (every attempt is older than two minutes): the count is the
    settled attempts alone, not one more."""
    attempts(3)
    alerts_evaluate(now=T0 + timedelta(minutes=4))
    alert = Alert.objects.get()
    assert (alert.count, alert.settled_count) == (3, 3)
    assert alert.settled_until == T0 + timedelta(minutes=2)
