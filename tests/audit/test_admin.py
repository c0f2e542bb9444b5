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
