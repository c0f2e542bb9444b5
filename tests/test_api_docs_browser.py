"""The API docs in a real browser (Debian's Chromium), under the Content-Security-Policy."""

import pytest

pytestmark = pytest.mark.django_db(transaction=True)

REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.fixture
def page(chromium):
    return chromium.new_page(viewport={"width": 1400, "height": 900})


def watch(page) -> list[str]:
    """Collects what the page reports going wrong: CSP violations, script errors, failed loads."""
    problems = []
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
    page.on(
        "response",
        lambda response: (
            problems.append(f"{response.status}: {response.url}")
            if response.status >= 400
            else None
        ),
    )
    return problems


def test_swagger_ui_renders_the_session_operation_and_its_errors(page, live_server):
    problems = watch(page)
    page.goto(f"{live_server.url}/api/docs/")

    operation = page.locator(".opblock-post").first
    operation.wait_for()
    assert "/api/chatkit/session/" in operation.inner_text()
    operation.locator(".opblock-summary").click()
    responses = page.locator(".responses-table").first
    responses.wait_for()
    for status in ("200", "400", "403", "429", "502", "503", "504"):
        assert responses.locator(f"tr.response[data-code='{status}']").count() == 1, status
    assert "upstream_auth_failed" in responses.inner_text()
    assert problems == [], "\n".join(problems)


def test_redoc_renders_the_session_operation(page, live_server):
    problems = watch(page)
    page.goto(f"{live_server.url}/api/docs/redoc/")

    heading = page.locator("h2", has_text="Mint a ChatKit client secret for the caller")
    heading.wait_for()
    assert "csrf_failed" in page.content()
    # Redoc's sidebar always shows its maker's logo from its maker's CDN; the policy blocks it,
    # as it should, and Redoc hides the image. Nothing else is refused or fails.
    assert problems == [
        f"Loading the image '{REDOC_LOGO}' violates the following Content Security Policy "
        "directive: \"img-src 'self' data:\". The action has been blocked.",
        f"failed: {REDOC_LOGO}",
    ], "\n".join(problems)
