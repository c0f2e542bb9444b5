import pytest

from audit.models import SessionAttempt

pytestmark = pytest.mark.django_db

URL = "/api/chatkit/session/"


def test_logged_in_post_without_csrf_token_is_refused_and_audited(logged_in_client, user, upstream):
    response = logged_in_client.post(URL)

    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "csrf_failed"
    assert upstream.state.received() == []
    attempt = SessionAttempt.objects.get()
    assert error["request_id"] == attempt.request_id
    assert (attempt.outcome, attempt.api_error_code, attempt.user) == (
        "rejected",
        "csrf_failed",
        user,
    )
    assert attempt.user_ref.startswith("u_")


def test_logged_in_post_with_csrf_token_succeeds(logged_in_client, upstream):
    token = logged_in_client.get("/admin/login/").cookies["csrftoken"].value

    response = logged_in_client.post(URL, HTTP_X_CSRFTOKEN=token)

    assert response.status_code == 200
    assert response.json()["client_secret"]


def test_anonymous_post_needs_no_csrf_token(api_client, upstream):
    # DRF exempts unauthenticated requests: there is no session to ride on.
    assert api_client.post(URL).status_code == 200
