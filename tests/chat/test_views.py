import re

import pytest

from chat.views import CHATKIT_ORIGIN
from sessions_api.identity import user_ref_for_user

pytestmark = pytest.mark.django_db


def directives(response) -> dict[str, list[str]]:
    policy = response["Content-Security-Policy"]
    return {name: rest for name, *rest in (part.split() for part in policy.split(";"))}


def test_the_page_allows_chatkits_origin_and_nothing_more(client):
    response = client.get("/")

    assert response.status_code == 200
    policy = directives(response)
    assert policy["script-src"] == ["'self'", CHATKIT_ORIGIN]
    assert policy["frame-src"] == [CHATKIT_ORIGIN]
    assert policy["default-src"] == ["'self'"]
    # The page's own script is a file: every <script> has a src, none is inline.
    scripts = re.findall(r"<script\b([^>]*)>", response.content.decode())
    assert scripts and all("src=" in attributes for attributes in scripts)


def test_other_pages_keep_the_site_policy(client):
    policy = directives(client.get("/admin/login/"))

    assert policy["script-src"] == ["'self'"]
    assert "frame-src" not in policy


def test_the_page_sets_the_csrf_cookie_and_mints_no_anonymous_id(client, settings):
    response = client.get("/")

    assert "csrftoken" in response.cookies
    # An id minted by a page view would let a script collect signed cookies past the session
    # endpoint's per-address limit.
    assert settings.CHATKIT_ANON_COOKIE_NAME not in response.cookies
    assert b"new visitor" in response.content


def test_identity_of_a_new_browser_is_unknown_until_its_first_session(client, upstream):
    assert client.get("/chat/identity").json() == {"signed_in": False, "pseudonym": None}

    assert client.post("/api/chatkit/session/", content_type="application/json").status_code == 200
    [request] = upstream.state.received()
    response = client.get("/chat/identity")

    assert response.json() == {"signed_in": False, "pseudonym": request["json"]["user"][:12] + "…"}
    assert response["Cache-Control"] == "no-store"
    assert request["json"]["user"][:12] + "…" in client.get("/").content.decode()


def test_identity_of_a_signed_in_user_is_their_pseudonym(client, user):
    client.force_login(user)

    identity = client.get("/chat/identity").json()

    assert identity == {"signed_in": True, "pseudonym": user_ref_for_user(user)[:12] + "…"}
    assert user.username not in client.get("/").content.decode()


def test_identity_without_the_hmac_key_shows_no_pseudonym(client, user, settings):
    settings.CHATKIT_USER_ID_SECRET = ""
    client.force_login(user)

    assert client.get("/chat/identity").json() == {"signed_in": True, "pseudonym": None}


@pytest.mark.parametrize("mode", ["username", "pk"])
def test_short_user_refs_are_shown_whole(client, user, settings, mode):
    settings.CHATKIT_USER_ID_MODE = mode
    client.force_login(user)

    assert client.get("/chat/identity").json()["pseudonym"] == user_ref_for_user(user)
