import pytest
from rest_framework.test import APIClient

from audit.models import SessionAttempt

pytestmark = pytest.mark.django_db

URL = "/api/chatkit/session/"


def sent_users(upstream) -> list[str]:
    return [request["json"]["user"] for request in upstream.state.received()]


def test_two_anonymous_browsers_get_different_ids(upstream):
    first, second = APIClient(), APIClient()
    assert first.post(URL).status_code == 200
    assert second.post(URL).status_code == 200
    one, two = sent_users(upstream)
    assert one != two
    assert one.startswith("anon_") and two.startswith("anon_")
    assert "anonymous" not in (one, two)


def test_one_browser_keeps_its_id(api_client, upstream):
    for _ in range(3):
        assert api_client.post(URL).status_code == 200
    assert len(set(sent_users(upstream))) == 1


def test_anonymous_cookie_is_signed_httponly_lax_and_secure(api_client, upstream):
    response = api_client.post(URL)
    cookie = response.cookies["chatkit_anon"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["secure"] is True
    assert cookie["max-age"] == 365 * 24 * 3600
    # Signed: the raw value is not what is sent upstream, and a later request does not re-issue it.
    assert sent_users(upstream)[0] != f"anon_{cookie.value}"
    assert "chatkit_anon" not in api_client.post(URL).cookies


def test_cookie_is_not_secure_in_debug(api_client, upstream, settings):
    settings.DEBUG = True
    assert api_client.post(URL).cookies["chatkit_anon"]["secure"] == ""


def test_tampered_cookie_gets_a_fresh_id(api_client, upstream):
    api_client.post(URL)
    api_client.cookies["chatkit_anon"] = "forged-value"
    response = api_client.post(URL)
    assert "chatkit_anon" in response.cookies
    first, second = sent_users(upstream)
    assert first != second
    assert second != "anon_forged-value"


def test_logged_in_user_is_stable_and_pseudonymous(user, upstream):
    client = APIClient()  # CSRF is covered in test_csrf; here only identity matters
    client.force_login(user)
    for _ in range(2):
        assert client.post(URL).status_code == 200
    first, second = sent_users(upstream)
    assert first == second
    assert first.startswith("u_") and len(first) == 34
    assert user.username not in first and user.email not in first and str(user.pk) != first
    attempt = SessionAttempt.objects.filter(outcome="success").latest("id")
    assert (attempt.user, attempt.username, attempt.user_ref) == (user, "ada", first)
    assert attempt.anonymous is False


def test_different_users_differ_and_secret_matters(upstream, django_user_model, settings):
    for name in ("grace", "linus"):
        client = APIClient()
        client.force_login(django_user_model.objects.create_user(username=name))
        client.post(URL)
    refs = sent_users(upstream)
    assert refs[0] != refs[1]

    upstream.state.reset()
    settings.CHATKIT_USER_ID_SECRET = "another-secret"
    client = APIClient()
    client.force_login(django_user_model.objects.get(username="grace"))
    client.post(URL)
    assert sent_users(upstream)[0] != refs[0]


def test_without_a_user_id_secret_signed_in_users_are_refused_not_named_guessably(
    upstream, user, settings
):
    settings.CHATKIT_USER_ID_SECRET = ""
    client = APIClient()
    client.force_login(user)
    response = client.post(URL)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert upstream.state.received() == []
    row = SessionAttempt.objects.get()
    assert (row.outcome, row.user, row.user_ref) == ("internal_error", user, "")


@pytest.mark.parametrize(("mode", "expected"), [("username", "ada"), ("pk", "PK")])
def test_user_id_mode_can_keep_the_guides_behaviour(upstream, user, settings, mode, expected):
    settings.CHATKIT_USER_ID_MODE = mode
    client = APIClient()
    client.force_login(user)
    client.post(URL)
    assert sent_users(upstream) == [str(user.pk) if expected == "PK" else expected]


def test_anonymous_refused_when_not_allowed(api_client, upstream, settings):
    settings.CHATKIT_ALLOW_ANONYMOUS = False
    response = api_client.post(URL)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_required"
    assert "chatkit_anon" not in response.cookies
    assert upstream.state.received() == []
    attempt = SessionAttempt.objects.get()
    assert (attempt.outcome, attempt.anonymous, attempt.user_ref) == ("rejected", True, "")


def test_logged_in_user_allowed_when_anonymous_is_not(upstream, user, settings):
    settings.CHATKIT_ALLOW_ANONYMOUS = False
    client = APIClient()
    client.force_login(user)
    assert client.post(URL).status_code == 200
