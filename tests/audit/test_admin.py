import pytest
from django.urls import reverse

from audit.models import SessionAttempt
from audit.services import session_attempt_record

pytestmark = pytest.mark.django_db


@pytest.fixture
def attempt() -> SessionAttempt:
    return session_attempt_record(
        outcome="upstream_error",
        status_code=401,
        api_error_code="upstream_auth_failed",
        error_message="Incorrect API key provided: sk-[REDACTED]",
        user_ref="u_0123",
        anonymous=False,
        workflow_id="wf_demo",
        upstream_request_id="req_abc",
    )


def test_changelist_shows_attempts_with_filters(admin_client, attempt):
    response = admin_client.get(reverse("admin:audit_sessionattempt_changelist"))
    assert response.status_code == 200
    page = response.content.decode()
    assert "upstream_auth_failed" in page
    assert "By outcome" in page and "By upstream status" in page


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ("outcome__exact=upstream_error", True),
        ("status_code__exact=500", False),
        ("q=req_abc", True),
    ],
)
def test_filters_and_exact_search(admin_client, attempt, query, found):
    url = reverse("admin:audit_sessionattempt_changelist") + "?" + query
    assert ("u_0123" in admin_client.get(url).content.decode()) is found


def test_detail_is_read_only_even_for_a_superuser(admin_client, attempt):
    url = reverse("admin:audit_sessionattempt_change", args=[attempt.pk])
    response = admin_client.get(url)
    assert response.status_code == 200
    assert b'name="_save"' not in response.content
    # Posting a change is refused and changes nothing.
    admin_client.post(url, {"outcome": "success", "user_ref": "u_forged"})
    attempt.refresh_from_db()
    assert (attempt.outcome, attempt.user_ref) == ("upstream_error", "u_0123")


def test_no_add_and_no_delete_for_anyone(admin_client, attempt):
    assert admin_client.get(reverse("admin:audit_sessionattempt_add")).status_code == 403
    delete_url = reverse("admin:audit_sessionattempt_delete", args=[attempt.pk])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403
    changelist = reverse("admin:audit_sessionattempt_changelist")
    admin_client.post(
        changelist, {"action": "delete_selected", "_selected_action": [attempt.pk], "post": "yes"}
    )
    assert SessionAttempt.objects.filter(pk=attempt.pk).exists()


@pytest.fixture
def alert(db):
    from datetime import UTC, datetime

    from audit.models import Alert

    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    return Alert.objects.create(
        rule="upstream_auth",
        fingerprint="f" * 32,
        severity="critical",
        status_code=401,
        workflow_id="wf_demo",
        first_seen=now,
        last_seen=now,
        count=3,
        threshold=3,
        window_seconds=300,
    )


def changelist_action(admin_client, model: str, action: str, pk: int):
    url = reverse(f"admin:audit_{model}_changelist")
    return admin_client.post(url, {"action": action, "_selected_action": [pk]}, follow=True)


def test_alert_list_and_acknowledge_action(admin_client, alert):
    page = admin_client.get(reverse("admin:audit_alert_changelist")).content.decode()
    assert "upstream_auth" in page and "Acknowledge" in page

    response = changelist_action(admin_client, "alert", "acknowledge", alert.pk)
    assert "Acknowledged 1 alert(s)." in response.content.decode()
    alert.refresh_from_db()
    assert alert.acknowledged_at is not None and alert.acknowledged_by == "admin"
    assert alert.state == "firing"


def test_silence_action_creates_a_silence_for_the_rule(admin_client, alert):
    from audit.models import AlertSilence

    changelist_action(admin_client, "alert", "silence_rule_1h", alert.pk)
    silence = AlertSilence.objects.get()
    assert (silence.rule, silence.created_by) == ("upstream_auth", "admin")


def test_silence_form_rejects_an_unknown_rule(admin_client):
    from audit.models import AlertSilence

    url = reverse("admin:audit_alertsilence_add")
    data = {"rule": "no_such_rule", "until_0": "2030-01-01", "until_1": "00:00:00", "reason": ""}
    response = admin_client.post(url, data)
    assert response.status_code == 200
    assert "Select a valid choice. no_such_rule is not one of" in response.content.decode()
    assert not AlertSilence.objects.exists()


def service_record(model: str, alert) -> object:
    """One row of each kind the service writes, with ordinary values."""
    from audit.models import AlertNotification, AttemptMinuteStat, ErrorReport

    if model == "alert":
        return alert
    if model == "alertnotification":
        return AlertNotification.objects.create(
            alert=alert, event="firing", sequence=0, channel="log", payload={"text": "x"}
        )
    if model == "attemptminutestat":
        return AttemptMinuteStat.objects.create(
            minute=alert.first_seen,
            workflow_id="",
            outcome="success",
            status_code=200,
            error_code="",
            attempts=1,
            users=0,
        )
    return ErrorReport.objects.create(
        period_start=alert.first_seen, period_end=alert.last_seen, data={}, text="report"
    )


@pytest.mark.parametrize(
    "model", ["alert", "alertnotification", "attemptminutestat", "errorreport"]
)
def test_service_records_cannot_be_added_or_deleted_by_hand(admin_client, alert, model):
    record = service_record(model, alert)
    assert admin_client.get(reverse(f"admin:audit_{model}_changelist")).status_code == 200
    assert admin_client.get(reverse(f"admin:audit_{model}_add")).status_code == 403
    delete_url = reverse(f"admin:audit_{model}_delete", args=[record.pk])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403
    admin_client.post(
        reverse(f"admin:audit_{model}_changelist"),
        {"action": "delete_selected", "_selected_action": [record.pk], "post": "yes"},
    )
    assert type(record).objects.filter(pk=record.pk).exists()


@pytest.mark.parametrize(
    "query",
    [
        "workflow_id=%00",
        "q=req%00abc",
        "status_code__exact=4%000",
        "o=%00",
        "a%00b=1",
        "q=a&q=b%00",
    ],
)
def test_nul_bytes_in_filters_are_a_clean_400(admin_client, attempt, query):
    """PostgreSQL refuses NUL in text, which made this a 500."""
    url = reverse("admin:audit_sessionattempt_changelist") + "?" + query
    response = admin_client.get(url)
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "invalid_request",
            "message": "Query parameters must not contain NUL bytes.",
            "request_id": None,
        }
    }
