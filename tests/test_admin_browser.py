"""The ops console in a real browser: Debian's Chromium driven by Playwright, never a download."""

import os
import shutil
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from audit.alerting.engine import alerts_evaluate
from audit.models import Alert
from audit.services import session_attempt_record
from tests.factories import record_attempts

CHROMIUM = "/usr/bin/chromium"
# As the machine's notes advise: no background traffic on a machine without internet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def browser_page(live_server, monkeypatch):
    """A Chromium page; closed before the live server stops, so no request thread lingers."""
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the test's own ORM calls are
    # still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 1400, "height": 900})
        browser.close()


@pytest.fixture
def incident(settings):
    settings.ALERT_WEBHOOK_URL = ""
    now = timezone.now()
    record_attempts(
        3,
        at=now - timedelta(seconds=30),
        workflow="wf_browser",
        api_error_code="upstream_auth_failed",
    )
    session_attempt_record(
        outcome="success", status_code=200, workflow_id="wf_browser", user_ref="anon_9",
        anonymous=True, session_id="cksess_browser",
    )  # fmt: skip
    alerts_evaluate(now=now)
    return Alert.objects.get()


@pytest.mark.django_db(transaction=True)
def test_operator_reviews_attempts_and_acknowledges_an_alert(
    browser_page, live_server, admin_user, incident
):
    page = browser_page
    # The admin must work under the Content-Security-Policy: nothing of it may be blocked.
    blocked = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security" in m.text else None)
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "password")
    page.click("input[type=submit]")

    page.goto(f"{live_server.url}/admin/audit/sessionattempt/")
    assert page.locator("#result_list tbody tr").count() == 4
    page.click("#changelist-filter >> text=401")
    assert "status_code=401" in page.url
    assert page.locator("#result_list tbody tr").count() == 3
    assert page.locator("#result_list").inner_text().count("upstream_auth_failed") == 3

    page.goto(f"{live_server.url}/admin/audit/alert/")
    assert "upstream_auth" in page.locator("#result_list").inner_text()
    page.check("input.action-select")
    page.select_option("select[name=action]", "acknowledge")
    page.click("button[name=index]")
    assert "Acknowledged 1 alert(s)." in page.locator("ul.messagelist").inner_text()

    incident.refresh_from_db()
    assert incident.acknowledged_by == "admin"
    assert blocked == []
    # Under Playwright's greenlets this ORM call got a connection of its own; close it, or it
    # keeps the test database from being dropped at the end of the run.
    connection.close()
