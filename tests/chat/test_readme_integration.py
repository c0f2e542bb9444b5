"""The README's getClientSecret functions, taken from the README itself and run in Chromium
against the live server and the emulator: same-origin, and from a frontend on another origin
of the same site (another port of localhost, a real server), signed in and not."""

import re
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client

from sessions_api.identity import user_ref_for_user

pytestmark = pytest.mark.django_db(transaction=True)

README = Path(django_settings.BASE_DIR, "README.md").read_text()
HARNESS = (
    '<!doctype html><script type="module">'
    'import { getClientSecret } from "./chatkit-api.js";'
    "window.getClientSecret = getClientSecret;</script>"
)


def readme_snippet(first_line: str) -> str:
    """The README's ```js block that begins with this line."""
    blocks = re.findall(r"```js\n(.*?)```", README, flags=re.S)
    [block] = [b for b in blocks if b.startswith(first_line)]
    return block


def serve(context, origin: str, files: dict[str, str]) -> None:
    """Answers the browser's requests for these files at `origin` from the test."""

    def answer(body: str, content_type: str):
        return lambda route: route.fulfill(body=body, content_type=content_type)

    for name, body in files.items():
        content_type = "text/html" if name.endswith(".html") else "text/javascript"
        context.route(f"{origin}/{name}", answer(body, content_type))


@pytest.fixture
def frontend(httpserver, live_server) -> str:
    """A frontend on another origin of the same site (another port of localhost), a real server
    of the README's cross-origin module pointed at the live server; its origin."""
    cross_origin = readme_snippet("// Plain JS, React or Next.js alike")
    files = {
        "/index.html": ("text/html", HARNESS),
        "/chatkit-api.js": (
            "text/javascript",
            cross_origin.replace("https://chat.example.com", live_server.url),
        ),
        "/chatkit-session.js": ("text/javascript", readme_snippet("// chatkit-session.js")),
    }
    for path, (content_type, body) in files.items():
        httpserver.expect_request(path).respond_with_data(body, content_type=content_type)
    return httpserver.url_for("/").rstrip("/")


@pytest.fixture
def signed_in_context(chromium, live_server, user):
    browser = Client()
    browser.force_login(user)
    context = chromium.new_context()
    context.add_cookies(
        [{"name": "sessionid", "value": browser.cookies["sessionid"].value, "url": live_server.url}]
    )
    yield context
    connection.close()


def secrets_minted(page) -> tuple[str, str]:
    page.wait_for_function("typeof window.getClientSecret === 'function'")
    first = page.evaluate("getClientSecret(null)")
    second = page.evaluate("secret => getClientSecret(secret)", first)
    return first, second


def test_same_origin_readme_function_mints_for_a_signed_in_user(
    signed_in_context, live_server, upstream, user
):
    serve(
        signed_in_context,
        live_server.url,
        {
            "readme/index.html": HARNESS,
            "readme/chatkit-api.js": readme_snippet("// chatkit-api.js: same origin"),
            "readme/chatkit-session.js": readme_snippet("// chatkit-session.js"),
        },
    )
    page = signed_in_context.new_page()
    page.goto(f"{live_server.url}/api/csrf/")  # as a page of this site would, sets csrftoken
    page.goto(f"{live_server.url}/readme/index.html")

    first, second = secrets_minted(page)

    sessions = list(upstream.state.sessions.values())
    assert [s["client_secret"] for s in sessions] == [first, second]
    assert {s["user"] for s in sessions} == {user_ref_for_user(user)}


@pytest.mark.parametrize("signed_in", [True, False])
def test_cross_origin_readme_function_keeps_the_user_and_sends_the_token(
    request, chromium, live_server, upstream, settings, frontend, signed_in
):
    settings.CORS_ALLOWED_ORIGINS = [frontend]
    settings.CSRF_TRUSTED_ORIGINS = [frontend]
    context = request.getfixturevalue("signed_in_context") if signed_in else chromium.new_context()
    page = context.new_page()
    page.goto(f"{frontend}/index.html")

    first, second = secrets_minted(page)

    sessions = list(upstream.state.sessions.values())
    assert [s["client_secret"] for s in sessions] == [first, second]
    # The browser kept the broker's cookies between the two: one user, the same both times.
    [user_sent] = {s["user"] for s in sessions}
    assert user_sent.startswith("u_" if signed_in else "anon_")
    connection.close()


def test_cross_origin_readme_function_throws_the_envelopes_message_and_reference(
    chromium, live_server, upstream, settings, frontend
):
    settings.CORS_ALLOWED_ORIGINS = [frontend]
    page = chromium.new_context().new_page()
    page.goto(f"{frontend}/index.html")
    page.wait_for_function("typeof window.getClientSecret === 'function'")
    upstream.state.push_faults([{"status": 404}])

    message = page.evaluate("getClientSecret(null).catch(error => error.message)")

    assert re.fullmatch(
        r"The chat workflow was not found for this server's credentials\. "
        r"\(reference brk_[0-9a-f]+\)",
        message,
    )
    connection.close()
