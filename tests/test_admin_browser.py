"""The ops console in a real browser: Debian's Chromium driven by Playwright, never a download."""

import csv
import math
import os
import random
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.db import connection
from django.utils import timezone

from audit.alerting.engine import alerts_evaluate
from audit.models import Alert, AlertSilence, AttemptMinuteStat
from audit.services import session_attempt_record
from audit.stats import attempt_stats_aggregate
from tests.factories import record_attempts


@pytest.fixture
def browser_page(chromium):
    return chromium.new_page(viewport={"width": 1400, "height": 900})


def follow(page, selector: str) -> None:
    """Click what opens a new page, and wait until it has loaded. A click waits only for the
    new page to start loading, so a read straight after it can see the page half parsed: an
    absent element would pass a check for absence, a present one fail (CI saw the second)."""
    page.click(selector)
    page.wait_for_load_state()


def admin_login(page, live_server) -> list[str]:
    """Logs the admin user in; returns the list that collects Content-Security-Policy
    violations from then on: the admin must work under the policy, nothing of it blocked."""
    blocked = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security" in m.text else None)
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "password")
    follow(page, "input[type=submit]")
    return blocked


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
    blocked = admin_login(page, live_server)

    page.goto(f"{live_server.url}/admin/audit/sessionattempt/")
    assert page.locator("#result_list tbody tr").count() == 4
    follow(page, "#changelist-filter >> text=401")
    assert "status_code__exact=401" in page.url
    assert page.locator("#result_list tbody tr").count() == 3
    assert page.locator("#result_list").inner_text().count("upstream_auth_failed") == 3

    page.goto(f"{live_server.url}/admin/audit/alert/")
    assert "upstream_auth" in page.locator("#result_list").inner_text()
    page.check("input.action-select")
    page.select_option("select[name=action]", "acknowledge")
    follow(page, "button[name=index]")
    assert "Acknowledged 1 alert(s)." in page.locator("ul.messagelist").inner_text()

    incident.refresh_from_db()
    assert incident.acknowledged_by == "admin"
    assert blocked == []
    # Under Playwright's greenlets this ORM call got a connection of its own; close it, or it
    # keeps the test database from being dropped at the end of the run.
    connection.close()


def _a_day_of_statistics(now) -> None:
    """Per-minute statistics for the day before the incident: a daily curve of successes, a
    sprinkle of 400/429/5xx, and an hour of 401s in the afternoon."""
    draw = random.Random(9)
    end = now.replace(second=0, microsecond=0) - timedelta(minutes=5)
    rows = []
    for back in range(1, 24 * 60):
        minute = end - timedelta(minutes=back)
        load = 20 + 15 * math.sin(2 * math.pi * (minute.hour * 60 + minute.minute) / 1440)
        buckets = [("success", 200, "", int(load + draw.random() * 5))]
        if draw.random() < 0.08:
            buckets.append(("upstream_error", draw.choice([400, 429, 500, 503]), "", 1))
        if 14 * 60 <= back < 15 * 60:
            buckets.append(("upstream_error", 401, "invalid_api_key", draw.randint(2, 6)))
        rows += [
            AttemptMinuteStat(minute=minute, workflow_id="wf_browser", outcome=outcome,
                              status_code=status, error_code=code, attempts=n, users=n)
            for outcome, status, code, n in buckets
        ]  # fmt: skip
    AttemptMinuteStat.objects.bulk_create(rows)


@pytest.mark.django_db(transaction=True)
def test_the_dashboard_draws_its_charts(browser_page, live_server, admin_user, incident):
    """The front page under the CSP, with data, in both themes. SCREENSHOT_DIR=docs/screenshots
    saves what it looked like (README)."""
    now = timezone.now()
    _a_day_of_statistics(now)
    for latency_ms, count in ((180, 18), (240, 6), (650, 2)):
        record_attempts(count, at=now - timedelta(minutes=3), workflow="wf_browser", status=200,
                        outcome="success", latency_ms=latency_ms)  # fmt: skip
    attempt_stats_aggregate()  # these attempts' and the incident's
    page = browser_page
    blocked = admin_login(page, live_server)

    assert page.title() == "Dashboard | ChatKit session broker"
    series = page.locator("svg#chart-series")
    assert series.locator("rect.chart-ok").count() > 90  # of the 96 quarter-hours
    assert series.locator("rect.chart-failed").count() > 0
    # Drawn, not just present: the columns have a size on screen and the theme's colours.
    assert series.bounding_box()["width"] > 600
    ok_fill = series.locator("rect.chart-ok").first.evaluate("e => getComputedStyle(e).fill")
    assert ok_fill == "rgb(46, 125, 50)"
    assert page.locator("#figure-success-rate").inner_text().endswith("%")
    assert page.locator("#figure-latency").inner_text() == "p50 180 ms · p95 548 ms"
    assert page.locator("#ops-alerts + table button[value=acknowledge]").count() == 1
    shots = os.environ.get("SCREENSHOT_DIR")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=f"{shots}/dashboard.png", full_page=True)

    page.emulate_media(color_scheme="dark")
    ok_fill = series.locator("rect.chart-ok").first.evaluate("e => getComputedStyle(e).fill")
    text_fill = series.locator("text").first.evaluate("e => getComputedStyle(e).fill")
    assert (ok_fill, text_fill) == ("rgb(102, 187, 106)", "rgb(238, 238, 238)")
    if shots:
        page.screenshot(path=f"{shots}/dashboard-dark.png", full_page=True)

    follow(page, "#ops-alerts + table button[value=acknowledge]")
    assert "Acknowledged 1 alert(s)." in page.locator("ul.messagelist").inner_text()
    assert blocked == []
    connection.close()


def log_in(page, live_server, username: str) -> list[str]:
    blocked = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security" in m.text else None)
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", "a long walk password")
    follow(page, "input[type=submit]")
    return blocked


def staff_member(django_user_model, username: str, *, groups=(), permissions=()):
    user = django_user_model.objects.create_user(
        username=username, password="a long walk password", is_staff=True
    )
    user.groups.add(*groups)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="audit", codename__in=permissions)
    )
    return user


@pytest.mark.django_db(transaction=True)
def test_an_ops_member_walks_from_the_dashboard_to_a_row_acts_and_exports(
    browser_page, live_server, django_user_model, incident, ops_group
):
    """Issue 9's walk, as a member of the ops group (not a superuser)."""
    attempt_stats_aggregate()
    staff_member(django_user_model, "oncall", groups=[ops_group])
    page = browser_page
    blocked = log_in(page, live_server, "oncall")

    # The dashboard drew its charts from the statistics.
    assert page.locator("svg#chart-series rect.chart-ok").count() > 0
    assert page.locator("svg#chart-series rect.chart-failed").count() > 0

    # The audit list, filtered to the 401s, and one of them opened.
    page.goto(f"{live_server.url}/admin/audit/sessionattempt/")
    follow(page, "#changelist-filter >> text=401")
    assert page.locator("#result_list tbody tr").count() == 3
    shots = os.environ.get("SCREENSHOT_DIR")
    if shots:
        page.screenshot(path=f"{shots}/audit-list.png", full_page=True)
    with page.expect_download() as exported:
        page.click("text=Export CSV")
    with open(exported.value.path(), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["status_code"] for row in rows] == ["401", "401", "401"]

    follow(page, "#result_list tbody tr th a >> nth=0")
    detail = page.locator("#content").inner_text()
    assert "upstream_auth_failed" in detail and "brk_" in detail
    follow(page, "#content a[href*='/admin/audit/alert/']")  # the alert it belongs to
    assert f"/admin/audit/alert/{incident.pk}/" in page.url
    if shots:
        page.screenshot(path=f"{shots}/alert.png", full_page=True)

    # Acknowledge the alert, then silence its rule, from the alert list.
    page.goto(f"{live_server.url}/admin/audit/alert/")
    for action, message in (
        ("acknowledge", "Acknowledged 1 alert(s)."),
        ("silence_rule_1h", "Silenced upstream_auth for 1 h."),
    ):
        page.check("input.action-select")
        page.select_option("select[name=action]", action)
        follow(page, "button[name=index]")
        assert message in page.locator("ul.messagelist").inner_text()
    incident.refresh_from_db()
    assert incident.acknowledged_by == "oncall"
    assert AlertSilence.objects.get().created_by == "oncall"
    assert LogEntry.objects.filter(user__username="oncall").exists()  # the export, logged
    assert blocked == []
    connection.close()


@pytest.mark.django_db(transaction=True)
def test_a_view_only_operator_sees_no_action_anywhere(
    browser_page, live_server, django_user_model, incident
):
    staff_member(
        django_user_model,
        "viewer",
        permissions=["view_alert", "view_alertsilence", "view_sessionattempt"],
    )
    page = browser_page
    log_in(page, live_server, "viewer")
    assert page.locator("#ops-alerts + table button").count() == 0
    page.goto(f"{live_server.url}/admin/audit/alert/")
    assert "upstream_auth" in page.locator("#result_list").inner_text()
    assert page.locator("select[name=action]").count() == 0
    assert page.locator("input.action-select").count() == 0
    page.goto(f"{live_server.url}/admin/audit/alertsilence/")
    assert page.locator("a.addlink").count() == 0
    connection.close()
