"""The admin's front page: the dashboard an operator reads first."""

import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from audit.models import Alert, ErrorReport
from audit.stats import attempt_stats_aggregate
from tests.factories import record_attempts

pytestmark = pytest.mark.django_db

INDEX = reverse("admin:index")
KEY_MESSAGE = "Incorrect API key provided: sk-[REDACTED]"
SERVER_MESSAGE = "The server had an error while processing your request."


@pytest.fixture
def traffic():
    """An ordinary day: mostly successes, some 401s and 5xx in the last hour, a few 400s and
    timeouts earlier today, a bad patch three days ago, and 401s from before the week."""
    now = timezone.now()
    hour_ago, hours_ago, days_ago = (now - timedelta(minutes=30), now - timedelta(hours=3),
                                     now - timedelta(days=3))  # fmt: skip
    record_attempts(40, at=hour_ago, workflow="wf_a", status=200, outcome="success", latency_ms=100)
    record_attempts(5, at=hour_ago, workflow="wf_a", status=401, latency_ms=50)
    record_attempts(
        5, at=hour_ago + timedelta(minutes=2), workflow="wf_a", status=500, error_code="",
        error_message=SERVER_MESSAGE, latency_ms=900,
    )  # fmt: skip
    record_attempts(30, at=hours_ago, workflow="wf_b", status=200, outcome="success")
    record_attempts(4, at=hours_ago, workflow="wf_b", status=400, error_code="invalid_value")
    record_attempts(2, at=hours_ago, workflow="wf_b", status=None, outcome="timeout")
    record_attempts(20, at=days_ago, workflow="wf_a", status=200, outcome="success")
    record_attempts(3, at=days_ago, workflow="wf_a", status=503, error_code="")
    record_attempts(10, at=now - timedelta(days=10), workflow="wf_a", status=401)
    attempt_stats_aggregate()


def figures(response) -> dict[str, str]:
    page = response.content.decode()
    return dict(re.findall(r'<dd id="figure-([a-z-]+)">([^<]*)</dd>', page))


@pytest.mark.parametrize(
    ("window", "attempts", "errors", "rate"),
    [("1h", "50", "10", "80.00%"), ("24h", "86", "16", "81.40%"), ("7d", "109", "19", "82.57%")],
)
def test_counts_and_success_rate_per_window(admin_client, traffic, window, attempts, errors, rate):
    shown = figures(admin_client.get(INDEX, {"window": window}))
    assert (shown["attempts"], shown["errors"], shown["success-rate"]) == (attempts, errors, rate)


def test_the_default_window_is_a_day_and_latency_comes_from_the_audit_rows(admin_client, traffic):
    response = admin_client.get(INDEX)
    assert figures(response)["attempts"] == "86"
    # 5 × 50 ms, 40 × 100 ms, 5 × 900 ms (the hour before's attempts carry no latency).
    assert figures(response)["latency"] == "p50 100 ms · p95 900 ms"


def test_top_errors_with_their_message_and_a_link_to_exactly_those_attempts(admin_client, traffic):
    response = admin_client.get(INDEX, {"window": "24h"})
    rows = response.context["top_errors"]
    assert [(row["status"], row["error_code"], row["attempts"]) for row in rows] == [
        ("401", "invalid_api_key", 5),
        ("500", "", 5),
        ("400", "invalid_value", 4),
        ("none", "", 2),
    ]
    assert [row["sample"] for row in rows[:2]] == [KEY_MESSAGE, SERVER_MESSAGE]
    page = response.content.decode()
    assert KEY_MESSAGE in page and SERVER_MESSAGE in page

    query = parse_qs(urlsplit(rows[0]["url"]).query)
    assert query["outcome__exact"] == ["upstream_error"]
    assert query["status_code__exact"] == ["401"]
    assert query["created_at__gte"] == [response.context["since"].isoformat()]
    assert rows[0]["url"].replace("&", "&amp;") in page
    # Followed, each link lists exactly the attempts it counts: not the 401s of ten days ago,
    # not the 500s beside them.
    for row in rows:
        listed = admin_client.get(row["url"])
        assert listed.status_code == 200
        assert listed.context["cl"].result_count == row["attempts"], row["url"]


def test_charts_are_svg_with_accessible_text_and_numbers(admin_client, traffic):
    page = admin_client.get(INDEX, {"window": "1h"}).content.decode()
    assert page.count('<svg class="chart"') == 3
    assert (
        '<title id="chart-series-title">Attempts and errors, last hour, per minute</title>' in page
    )
    assert "Success: 40; Upstream error answer: 10." in page  # the outcome chart's desc
    assert "200: 40; 401: 5; 500: 5." in page  # the status chart's desc
    assert page.count('class="chart-failed"') >= 2 + 2  # error columns + the error bars
    # The time series as a table too: 60 minutes.
    assert len(admin_client.get(INDEX, {"window": "1h"}).context["traffic"]["series"]) == 60


def test_an_empty_install_renders_without_figures(admin_client):
    response = admin_client.get(INDEX, {"window": "7d"})
    assert response.status_code == 200
    page = response.content.decode()
    assert figures(response) == {
        "attempts": "0",
        "errors": "0",
        "success-rate": "no data",
        "latency": "no timed attempts",
    }
    assert "No data: no attempts were recorded in this window" in page
    assert "No errors in this window." in page
    assert "No alert is firing." in page
    assert "No error report yet" in page
    assert '<svg class="chart"' not in page


def test_branded_and_internals_listed_last(admin_client):
    page = admin_client.get(INDEX).content.decode()
    assert "<title>Dashboard | ChatKit session broker</title>" in page
    assert "ChatKit session broker</a></div>" in page or "ChatKit session broker</a>" in page
    assert "Django administration" not in page
    assert page.index("Audit log") < page.index("Internals: Celery Results")
    assert page.index("Audit log") < page.index("Internals: Axes")
    assert reverse("admin:django_celery_results_taskresult_add") not in page


def test_only_our_own_static_files_and_no_inline_script(admin_client, traffic):
    response = admin_client.get(INDEX)
    page = response.content.decode()
    sources = re.findall(r'<(?:script|link|img)\b[^>]*\b(?:src|href)="([^"]+)"', page)
    assert sources and all(source.startswith("/static/") for source in sources), sources
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page), "inline script"
    assert all(src.startswith("/static/") for src in re.findall(r'\bsrc="([^"]*)"', page))
    assert "script-src 'self'" in response["Content-Security-Policy"]


@pytest.fixture
def alerts(db):
    now = timezone.now()
    common = {"severity": "critical", "status_code": 401, "workflow_id": "wf_a", "count": 5}
    common |= {"threshold": 3, "window_seconds": 300, "first_seen": now, "last_seen": now}
    return [
        Alert.objects.create(rule="upstream_auth", fingerprint=f"{i}" * 32, **common)
        for i in range(3)
    ] + [Alert.objects.create(rule="old", fingerprint="x" * 32, state="resolved", **common)]


def staff_client(client, django_user_model, *codenames):
    user = django_user_model.objects.create_user(username="-".join(codenames), is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return client


VIEW_ONLY = ("view_alert", "view_attemptminutestat", "view_sessionattempt", "view_errorreport")


def test_a_view_only_user_sees_the_alerts_without_buttons(client, django_user_model, alerts):
    page = staff_client(client, django_user_model, *VIEW_ONLY).get(INDEX).content.decode()
    linked = re.findall(r'href="/admin/audit/alert/(\d+)/change/"', page)
    assert sorted(map(int, linked)) == [alert.pk for alert in alerts[:3]]  # the firing ones
    assert 'name="action"' not in page and "<form" not in page.split('id="ops-alerts"')[1]


def test_a_user_with_the_permissions_gets_working_buttons(client, django_user_model, alerts):
    client = staff_client(
        client, django_user_model, *VIEW_ONLY, "acknowledge_alert", "add_alertsilence"
    )
    page = client.get(INDEX).content.decode()
    assert page.count('value="acknowledge"') == 3 and page.count('value="silence_rule_1h"') == 3
    # What a button posts is what the alert list's action expects.
    form = re.search(
        r'<form method="post" action="([^"]+)"[^>]*>.*?name="_selected_action" value="(\d+)"',
        page,
        re.S,
    )
    response = client.post(
        form[1], {"_selected_action": form[2], "action": "acknowledge"}, follow=True
    )
    assert "Acknowledged 1 alert(s)." in response.content.decode()
    acknowledged = Alert.objects.get(pk=form[2])
    assert acknowledged.acknowledged_at is not None
    # Once acknowledged, that alert says so instead of offering the button again.
    page = client.get(INDEX).content.decode()
    assert page.count('value="acknowledge"') == 2
    assert f"acknowledged by {acknowledged.acknowledged_by}" in page


def test_a_user_without_the_statistics_permission_sees_no_figures(client, django_user_model):
    page = staff_client(client, django_user_model, "view_alert").get(INDEX).content.decode()
    assert 'id="figure-attempts"' not in page
    assert "Firing alerts" in page and "Last error report" not in page


def test_the_last_error_report_is_linked(admin_client):
    start = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(days=2)
    for days, attempts in ((0, 100), (1, 250)):
        ErrorReport.objects.create(
            period_start=start + timedelta(days=days),
            period_end=start + timedelta(days=days + 1),
            data={"attempts": attempts, "errors": 10, "success_rate": 1 - 10 / attempts},
            text="…",
        )
    newest = ErrorReport.objects.get(data__attempts=250)
    page = admin_client.get(INDEX).content.decode()
    assert reverse("admin:audit_errorreport_change", args=[newest.pk]) in page
    assert "250 attempts, 10 errors, success rate 96.00%" in page


def test_query_count_is_bounded_whatever_the_data(
    admin_client, traffic, alerts, django_assert_max_num_queries
):
    # Session and user, the traffic figures and series, one sample per top error (at most
    # 5), latency (1 on PostgreSQL, 3 on SQLite), alerts, report.
    for window in ("1h", "24h", "7d"):
        with django_assert_max_num_queries(14):
            assert admin_client.get(INDEX, {"window": window}).status_code == 200
