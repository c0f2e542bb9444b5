"""The chat page in a real browser (Debian's Chromium, as tests/test_admin_browser.py), against
the emulator as upstream. ChatKit's script is refused at the browser, as it is on a machine
without network, so the page shows the broker's side: identity, countdown, errors.
SCREENSHOT_DIR=docs/screenshots saves what the page looked like (README)."""

import os
import re
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client
from playwright.sync_api import expect

from audit.models import SessionAttempt
from chat.views import CHATKIT_SCRIPT_URL
from sessions_api.identity import user_ref_for_user

pytestmark = pytest.mark.django_db(transaction=True)

COUNTDOWN = re.compile(r"^[0-9]+:[0-5][0-9]$")


@pytest.fixture
def open_context(chromium, live_server):
    """Opens browser contexts (separate cookie jars: separate browsers to the server) that
    reach only the live server; every other request is refused and listed in `refused`, and
    console messages about the Content-Security-Policy are listed in `blocked`."""
    refused, blocked = [], []

    def route(request_route):
        if request_route.request.url.startswith(live_server.url):
            request_route.continue_()
        else:
            refused.append(request_route.request.url)
            request_route.abort()

    def new_context(**options):
        context = chromium.new_context(viewport={"width": 1280, "height": 820}, **options)
        context.route("**/*", route)
        context.on(
            "console",
            lambda m: blocked.append(m.text) if "Content Security" in m.text else None,
        )
        return context

    new_context.refused, new_context.blocked = refused, blocked
    yield new_context
    # Under Playwright's greenlets the test's ORM calls got a connection of their own; close
    # it, or it keeps the test database from being dropped at the end of the run.
    connection.close()


def open_chat(context, live_server):
    page = context.new_page()
    page.goto(f"{live_server.url}/")
    return page


def new_session(page) -> None:
    """Clicks "New session" and waits for the session endpoint's answer."""
    with page.expect_response(lambda response: "/api/chatkit/session" in response.url):
        page.click("#new-session")


def created_users(upstream) -> list[str]:
    return [r["json"]["user"] for r in upstream.state.received() if r["json"]]


def screenshot(page, name: str) -> None:
    shots = os.environ.get("SCREENSHOT_DIR")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=f"{shots}/{name}", full_page=True)


def test_a_visitor_gets_a_session_a_new_one_and_a_neighbour_another_user(
    open_context, live_server, upstream
):
    page = open_chat(open_context(), live_server)

    # 1. The page asked for a session as soon as ChatKit's script failed, and counts down.
    countdown = page.locator("#session-countdown")
    expect(countdown).to_have_text(COUNTDOWN)
    first_reading = countdown.inner_text()
    expect(countdown).not_to_have_text(first_reading)  # it counts
    expect(page.locator("#session-state")).to_contain_text("Active until")
    [user] = created_users(upstream)
    assert user.startswith("anon_")
    expect(page.locator("#identity-kind")).to_have_text("Anonymous browser")
    expect(page.locator("#identity-ref")).to_have_text(user[:12] + "…")
    expect(page.locator("#chat-placeholder-title")).to_have_text("The chat window couldn't load")
    assert open_context.refused == [CHATKIT_SCRIPT_URL]  # loaded from exactly there, allowed
    screenshot(page, "chat-page.png")
    page.emulate_media(color_scheme="dark")
    screenshot(page, "chat-page-dark.png")

    # 2. "New session": a refresh for the same user.
    new_session(page)
    assert created_users(upstream) == [user, user]
    assert list(SessionAttempt.objects.order_by("id").values_list("kind", "outcome")) == [
        ("initial", "success"),
        ("refresh", "success"),
    ]
    # The secrets stay in the script: neither is anywhere in the page.
    html = page.content()
    assert not [s for s in upstream.state.sessions.values() if s["client_secret"] in html]

    # 3. Another browser is another anonymous user.
    neighbour = open_chat(open_context(), live_server)
    expect(neighbour.locator("#session-countdown")).to_have_text(COUNTDOWN)
    other = created_users(upstream)[2]
    assert other.startswith("anon_") and other != user
    expect(neighbour.locator("#identity-ref")).to_have_text(other[:12] + "…")
    assert page.locator("#last-error").is_hidden()
    assert open_context.blocked == []


def test_an_upstream_401_shows_a_friendly_error_with_its_reference(
    open_context, live_server, upstream
):
    upstream.state.push_faults([{"status": 401}])

    page = open_chat(open_context(), live_server)

    error = page.locator("#last-error")
    expect(error).to_be_visible()
    expect(page.locator("#error-title")).to_have_text("We couldn't start your chat")
    expect(page.locator("#error-message")).to_have_text(
        "The chat service refused this server's credentials."
    )
    expect(page.locator("#session-state")).to_have_text("No session")
    [user] = created_users(upstream)
    expect(page.locator("#identity-ref")).to_have_text(user[:12] + "…")  # named all the same
    request_id = page.locator("#error-request-id").inner_text()
    assert request_id.startswith("brk_")
    attempt = SessionAttempt.objects.get(request_id=request_id)
    assert (attempt.outcome, attempt.status_code, attempt.api_error_code, attempt.kind) == (
        "upstream_error",
        401,
        "upstream_auth_failed",
        "initial",
    )
    assert "Incorrect API key" not in error.inner_text()  # the upstream's words stay with us
    screenshot(page, "chat-page-error.png")

    # Once the upstream answers again, the next session clears it.
    new_session(page)
    expect(error).to_be_hidden()
    expect(page.locator("#session-countdown")).to_have_text(COUNTDOWN)
    assert open_context.blocked == []


def test_a_signed_in_user_is_shown_by_pseudonym_and_sends_the_csrf_token(
    open_context, live_server, upstream, user
):
    browser = Client()
    browser.force_login(user)
    context = open_context()
    context.add_cookies(
        [{"name": "sessionid", "value": browser.cookies["sessionid"].value, "url": live_server.url}]
    )

    page = open_chat(context, live_server)

    # Minted: the session endpoint enforces CSRF for signed-in users, so the header was sent.
    expect(page.locator("#session-countdown")).to_have_text(COUNTDOWN)
    ref = user_ref_for_user(user)
    assert created_users(upstream) == [ref]
    expect(page.locator("#identity-kind")).to_have_text("Signed in")
    expect(page.locator("#identity-ref")).to_have_text(ref[:12] + "…")
    assert user.username not in page.locator("aside").inner_text()
    assert open_context.blocked == []
