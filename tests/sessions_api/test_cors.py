"""A frontend on another origin: CORS for the listed origins on /api/ only, with cookies, and
Django's CSRF check (token and origin) for signed-in users' POSTs."""

import pytest
from django.test import Client

from audit.models import SessionAttempt

pytestmark = pytest.mark.django_db

URL = "/api/chatkit/session/"
FRONTEND = "https://app.example.com"


@pytest.fixture(autouse=True)
def frontend_allowed(settings):
    settings.CORS_ALLOWED_ORIGINS = [FRONTEND]
    settings.CSRF_TRUSTED_ORIGINS = [FRONTEND]


def preflight(client, path: str, origin: str):
    return client.options(
        path,
        HTTP_ORIGIN=origin,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="content-type, x-csrftoken",
    )


def test_a_preflight_from_the_listed_origin_is_allowed_with_credentials(client):
    response = preflight(client, URL, FRONTEND)

    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == FRONTEND
    assert response["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in response["Access-Control-Allow-Methods"]
    assert {"content-type", "x-csrftoken"} <= set(
        response["Access-Control-Allow-Headers"].split(", ")
    )


@pytest.mark.parametrize(
    ("path", "origin"),
    [
        (URL, "https://evil.example.net"),
        (URL, "http://app.example.com"),  # the scheme is part of the origin
        ("/", FRONTEND),  # the chat page and the admin stay same-origin
        ("/admin/login/", FRONTEND),
    ],
)
def test_no_cors_headers_for_other_origins_or_outside_the_api(client, path, origin):
    response = preflight(client, path, origin)

    assert "Access-Control-Allow-Origin" not in response
    assert "Access-Control-Allow-Credentials" not in response


def test_an_anonymous_cross_origin_post_gets_its_secret_and_its_cookie(upstream, settings):
    browser = Client(enforce_csrf_checks=True)

    response = browser.post(URL, content_type="application/json", HTTP_ORIGIN=FRONTEND)

    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == FRONTEND
    assert settings.CHATKIT_ANON_COOKIE_NAME in response.cookies


@pytest.fixture
def signed_in_frontend(user, upstream):
    """A signed-in browser on the frontend's page, holding the CSRF token it was given by
    /api/csrf/ (its script cannot read the broker's cookie)."""
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    answer = browser.get("/api/csrf/", HTTP_ORIGIN=FRONTEND)
    assert answer["Access-Control-Allow-Origin"] == FRONTEND
    assert answer["Cache-Control"] == "no-store"
    return browser, answer.json()["csrf_token"]


def test_a_signed_in_cross_origin_post_with_the_csrf_token_succeeds(signed_in_frontend):
    browser, token = signed_in_frontend

    response = browser.post(
        URL, content_type="application/json", HTTP_ORIGIN=FRONTEND, HTTP_X_CSRFTOKEN=token
    )

    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == FRONTEND
    assert response.json()["client_secret"]


def test_a_signed_in_cross_origin_post_without_the_token_is_refused(signed_in_frontend, upstream):
    browser, _ = signed_in_frontend

    response = browser.post(URL, content_type="application/json", HTTP_ORIGIN=FRONTEND)

    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "csrf_failed"
    # The frontend's script can read the refusal: it carries the CORS headers too.
    assert response["Access-Control-Allow-Origin"] == FRONTEND
    assert SessionAttempt.objects.get(request_id=error["request_id"]).api_error_code == (
        "csrf_failed"
    )
    assert upstream.state.received() == []


def test_the_token_is_not_enough_from_an_origin_csrf_does_not_trust(
    signed_in_frontend, settings, upstream
):
    browser, token = signed_in_frontend
    settings.CSRF_TRUSTED_ORIGINS = []  # listed for CORS, forgotten for CSRF

    response = browser.post(
        URL, content_type="application/json", HTTP_ORIGIN=FRONTEND, HTTP_X_CSRFTOKEN=token
    )

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "csrf_failed"
    assert upstream.state.received() == []
