"""Alerts in the admin: who may acknowledge and silence, the ops group, silences' lifecycle."""

from datetime import timedelta

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.alerting.engine import alerts_evaluate
from audit.models import Alert, AlertSilence
from tests.factories import record_attempts

pytestmark = pytest.mark.django_db

ALERTS = reverse("admin:audit_alert_changelist")
SILENCES = reverse("admin:audit_alertsilence_changelist")


@pytest.fixture
def alert() -> Alert:
    now = timezone.now()
    record_attempts(5, at=now - timedelta(minutes=3), workflow="wf_ops", status=200,
                    outcome="success")  # fmt: skip
    record_attempts(3, at=now - timedelta(minutes=2), workflow="wf_ops")
    alerts_evaluate(now=now)
    return Alert.objects.get()


def staff(django_user_model, name: str, *permissions: str, groups=()) -> Client:
    user = django_user_model.objects.create_user(username=name, password="pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="audit", codename__in=permissions)
    )
    user.groups.add(*groups)
    client = Client()
    client.force_login(user)
    return client


def act(client: Client, url: str, action: str, pk: int):
    return client.post(url, {"action": action, "_selected_action": [pk]}, follow=True)


def test_a_view_only_operator_sees_alerts_but_can_neither_acknowledge_nor_silence(
    django_user_model, alert
):
    viewer = staff(django_user_model, "viewer", "view_alert", "view_alertsilence")
    page = viewer.get(ALERTS).content.decode()
    assert "upstream_auth" in page
    assert "Acknowledge (stop" not in page and "Silence these rules" not in page

    act(viewer, ALERTS, "acknowledge", alert.pk)
    act(viewer, ALERTS, "silence_rule_1h", alert.pk)
    alert.refresh_from_db()
    assert alert.acknowledged_at is None
    assert not AlertSilence.objects.exists()
    assert viewer.get(reverse("admin:audit_alertsilence_add")).status_code == 403


def test_each_action_needs_its_own_permission(django_user_model, alert):
    acknowledger = staff(django_user_model, "ack", "view_alert", "acknowledge_alert")
    act(acknowledger, ALERTS, "silence_rule_1h", alert.pk)
    assert not AlertSilence.objects.exists()
    act(acknowledger, ALERTS, "acknowledge", alert.pk)
    alert.refresh_from_db()
    assert alert.acknowledged_by == "ack"

    silencer = staff(django_user_model, "quiet", "view_alert", "add_alertsilence")
    act(silencer, ALERTS, "silence_rule_24h", alert.pk)
    silence = AlertSilence.objects.get()
    assert (silence.rule, silence.created_by) == ("upstream_auth", "quiet")


def test_the_ops_group_reads_everything_acknowledges_and_silences_and_changes_nothing_else(
    django_user_model, alert, ops_group
):
    ops = staff(django_user_model, "oncall", groups=[ops_group])
    for model in ("sessionattempt", "attemptminutestat", "errorreport", "alert"):
        assert ops.get(reverse(f"admin:audit_{model}_changelist")).status_code == 200, model
    user = django_user_model.objects.get(username="oncall")
    assert user.has_perm("audit.acknowledge_alert") and user.has_perm("audit.add_alertsilence")
    assert not user.has_perm("audit.change_alert") and not user.has_perm("auth.change_user")

    act(ops, ALERTS, "acknowledge", alert.pk)
    act(ops, ALERTS, "silence_rule_1h", alert.pk)
    alert.refresh_from_db()
    assert alert.acknowledged_by == "oncall" and AlertSilence.objects.count() == 1


def silence_form(until) -> dict:
    local = timezone.localtime(until)
    return {
        "rule": "upstream_auth",
        "until_0": local.strftime("%Y-%m-%d"),
        "until_1": local.strftime("%H:%M:%S"),
        "reason": "deploying a new key",
    }


@pytest.mark.parametrize(
    ("hours", "error"),
    [
        (-1, "A silence must end in the future."),
        (169, "A silence lasts at most 168 hours"),
    ],
)
def test_a_silence_ends_in_the_future_and_within_the_longest_allowed(admin_client, hours, error):
    until = timezone.now() + timedelta(hours=hours)
    response = admin_client.post(reverse("admin:audit_alertsilence_add"), silence_form(until))
    assert error in response.content.decode()
    assert not AlertSilence.objects.exists()

    longest = timezone.now() + timedelta(hours=167, minutes=59)
    admin_client.post(reverse("admin:audit_alertsilence_add"), silence_form(longest))
    assert AlertSilence.objects.get().created_by == "admin"


def test_the_silence_actions_never_exceed_the_longest_allowed(admin_client, alert, settings):
    settings.ALERT_SILENCE_MAX_HOURS = 8
    act(admin_client, ALERTS, "silence_rule_24h", alert.pk)
    silence = AlertSilence.objects.get()
    assert silence.until - silence.created_at < timedelta(hours=8, seconds=5)


def test_a_silence_is_never_edited_or_deleted_only_ended_early_with_who_and_when(
    admin_client, alert
):
    act(admin_client, ALERTS, "silence_rule_24h", alert.pk)
    silence = AlertSilence.objects.get()
    change = reverse("admin:audit_alertsilence_change", args=[silence.pk])
    admin_client.post(change, silence_form(timezone.now() + timedelta(hours=100)))
    delete = reverse("admin:audit_alertsilence_delete", args=[silence.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    silence.refresh_from_db()
    assert silence.until - silence.created_at < timedelta(hours=24, seconds=5)

    ended = timezone.now() + timedelta(hours=1)
    with time_machine.travel(ended, tick=False):
        response = act(admin_client, SILENCES, "end_now", silence.pk)
    assert "Ended 1 silence(s)." in response.content.decode()
    silence.refresh_from_db()
    assert (silence.until, silence.ended_at, silence.ended_by) == (ended, ended, "admin")
    # The rule is heard again: the next repeat is not muted.
    assert not AlertSilence.objects.filter(until__gt=ended).exists()
