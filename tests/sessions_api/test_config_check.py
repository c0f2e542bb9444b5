"""The configuration check, from the command line and from the admin dashboard, against the
emulator over a real socket."""

from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.alerting.engine import alerts_evaluate
from audit.models import Alert, SessionAttempt
from sessions_api import client, services
from sessions_api.config_check import CHECK_USER_REF, chatkit_config_check
from sessions_api.services import chatkit_client
from tests.factories import record_attempts

pytestmark = pytest.mark.django_db

CHECK = reverse("admin:chatkit_check")


def test_the_command_mints_cancels_and_says_so(upstream, capsys):
    call_command("chatkit_check")

    [session] = upstream.state.sessions.values()
    assert session["status"] == "cancelled" and session["user"] == CHECK_USER_REF
    attempt = SessionAttempt.objects.get()
    assert (attempt.kind, attempt.outcome, attempt.user_ref) == ("check", "success", CHECK_USER_REF)
    printed = capsys.readouterr().out
    assert printed.startswith(f"OK: minted a session in {attempt.latency_ms} ms and cancelled it.")
    assert attempt.upstream_request_id in printed and attempt.request_id in printed
    assert session["client_secret"] not in printed


def test_a_rotated_key_that_does_not_work_fails_the_command_with_the_upstream_answer(
    upstream, settings
):
    settings.OPENAI_API_KEY = "sk-rotated-but-wrong-" + "x" * 24
    with pytest.raises(CommandError) as failed:
        call_command("chatkit_check")

    attempt = SessionAttempt.objects.get()
    assert (attempt.kind, attempt.status_code) == ("check", 401)
    assert str(failed.value).startswith(
        "FAILED: upstream_auth_failed (upstream_error) upstream 401:"
    )
    assert attempt.request_id in str(failed.value)
    assert settings.OPENAI_API_KEY not in str(failed.value)
    assert not upstream.state.sessions


def test_a_check_is_exit_status_one_for_a_deploy_pipeline(upstream, settings):
    settings.OPENAI_WORKFLOW_ID = ""
    with pytest.raises(CommandError) as failed:
        call_command("chatkit_check")
    assert "not_configured" in str(failed.value)
    assert failed.value.returncode == 1


def test_failing_checks_never_fire_an_alert(upstream, settings):
    settings.OPENAI_API_KEY = "sk-rotated-but-wrong-" + "x" * 24
    for _ in range(5):
        with pytest.raises(CommandError):
            call_command("chatkit_check")
    assert alerts_evaluate() == [] and not Alert.objects.exists()

    # The same failures from browsers do.
    record_attempts(
        3, at=timezone.now() - timedelta(seconds=30), workflow=settings.OPENAI_WORKFLOW_ID
    )
    alerts_evaluate()
    assert Alert.objects.get().count == 3


def test_the_dashboard_button_runs_the_check_and_logs_who_ran_it(
    upstream, django_user_model, ops_group
):
    operator = django_user_model.objects.create_user(username="oncall", is_staff=True)
    operator.groups.add(ops_group)
    client = Client()
    client.force_login(operator)
    assert b"Check the configuration" in client.get(reverse("admin:index")).content

    page = client.post(CHECK, follow=True).content.decode()

    attempt = SessionAttempt.objects.get()
    assert "OK: minted a session in" in page and attempt.request_id in page
    entry = LogEntry.objects.get()
    assert (entry.user, entry.object_id) == (operator, str(attempt.pk))
    assert entry.change_message.startswith("Ran the configuration check: OK")


def test_the_check_needs_its_permission_and_a_post(upstream, django_user_model, admin_client):
    viewer = django_user_model.objects.create_user(username="viewer", is_staff=True)
    client = Client()
    client.force_login(viewer)
    assert b"Check the configuration" not in client.get(reverse("admin:index")).content
    assert client.post(CHECK).status_code == 403
    assert admin_client.get(CHECK).status_code == 405
    assert not SessionAttempt.objects.exists() and not upstream.state.sessions


def test_a_session_minted_but_not_cancelled_fails_the_check_and_says_it_expires(
    upstream, monkeypatch
):
    def refused(session_id):
        raise client.UpstreamHTTPError(status_code=500, error_message="cancel is down")

    monkeypatch.setattr(chatkit_client(), "cancel_session", refused)
    result = chatkit_config_check()

    attempt = SessionAttempt.objects.get()
    assert (result.ok, result.attempt) == (False, attempt)
    assert result.summary.startswith(
        f"FAILED: minted a session in {attempt.latency_ms} ms but could not cancel it ("
    )
    assert "cancel is down" in result.summary and "it expires on its own." in result.summary
    assert result.summary.endswith(
        f"(upstream request {attempt.upstream_request_id}, audit row {attempt.request_id})"
    )
    [session] = upstream.state.sessions.values()
    assert session["status"] == "active"


def test_a_check_that_never_reached_the_upstream_names_no_upstream_request(upstream, settings):
    settings.OPENAI_WORKFLOW_ID = ""
    result = chatkit_config_check()
    attempt = SessionAttempt.objects.get()
    assert (result.ok, result.attempt, attempt.anonymous) == (False, attempt, False)
    assert result.summary == (
        "FAILED: not_configured (not_configured) Not set on the server: OPENAI_WORKFLOW_ID. "
        f"(upstream request none, audit row {attempt.request_id})"
    )


def test_a_check_whose_row_cannot_be_written_says_so(upstream, monkeypatch):
    def database_down(**fields):
        raise DatabaseError("the database is down")

    monkeypatch.setattr(services, "session_attempt_record", database_down)
    result = chatkit_config_check()
    assert (result.ok, result.attempt) == (False, None)
    assert result.summary.startswith("FAILED: audit_unavailable: ")
    assert result.summary.endswith("(no audit row could be written).")


def test_the_check_user_is_a_signed_in_kind_of_caller_not_an_anonymous_browser(upstream):
    result = chatkit_config_check()
    assert result.ok is True
    assert (result.attempt.anonymous, result.attempt.user_id) == (False, None)
