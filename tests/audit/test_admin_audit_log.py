"""The audit list as it must behave at millions of rows: fixed filters, index ranges, capped
paging with a keyset beyond, exact search, a detail page with its links, and a CSV export."""

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit.admin import SessionAttemptAdmin
from audit.alerting.engine import alerts_evaluate
from audit.models import Alert, SessionAttempt
from audit.paginator import CappedPaginator
from audit.services import session_attempt_record
from tests.factories import record_attempts

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:audit_sessionattempt_changelist"
EXPORT = "admin:audit_sessionattempt_export"


def success(at: datetime, **extra) -> SessionAttempt:
    fields = {
        "outcome": "success",
        "status_code": 200,
        "workflow_id": "wf_main",
        "user_ref": "u_ada",
        "anonymous": False,
        "session_id": f"cksess_{at.timestamp():.0f}",
        "upstream_request_id": f"req_ok_{at.timestamp():.0f}",
        "latency_ms": 120,
        "started_at": at,
    }
    return session_attempt_record(**{**fields, **extra})


@pytest.fixture
def traffic(settings) -> dict[str, list[SessionAttempt]]:
    """An ordinary day: mostly successes, some 401s and 429s, a timeout, a refused request."""
    settings.ALERT_WEBHOOK_URL = ""
    now = timezone.now()
    rows = {
        "recent_ok": [success(now - timedelta(minutes=m)) for m in (1, 2, 3)],
        "old_ok": [success(now - timedelta(days=3, minutes=m)) for m in (1, 2)],
        "auth": record_attempts(3, at=now - timedelta(minutes=30), workflow="wf_main"),
        "throttled": record_attempts(2, at=now - timedelta(days=2), workflow="wf_main", status=429),
        "timeout": record_attempts(
            1, at=now - timedelta(minutes=20), workflow="wf_main", status=None, outcome="timeout"
        ),
        "refused": [
            session_attempt_record(
                outcome="rejected",
                api_error_code="workflow_not_allowed",
                workflow_id="(refused)",
                error_message='=HYPERLINK("http://evil.example")',
                user_ref="anon_x",
                anonymous=True,
                started_at=now - timedelta(minutes=5),
            )
        ],
    }
    return rows


def listed(client, query: str = "") -> set[int]:
    response = client.get(reverse(CHANGELIST) + query)
    assert response.status_code == 200, response
    return {row.pk for row in response.context["cl"].result_list}


def pks(*groups) -> set[int]:
    return {row.pk for group in groups for row in group}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?created_at__last=1h", ["recent_ok", "auth", "timeout", "refused"]),
        (
            "?created_at__last=7d",
            ["recent_ok", "old_ok", "auth", "throttled", "timeout", "refused"],
        ),
        ("?status_code__exact=401", ["auth"]),
        ("?status_code__exact=200&created_at__last=24h", ["recent_ok"]),
        ("?status_code__isnull=True", ["timeout", "refused"]),
        ("?outcome__exact=success", ["recent_ok", "old_ok"]),
        ("?outcome__exact=rejected", ["refused"]),
        # What the alert notifications link to (audit/alerting/notify.py).
        ("?status_code__exact=429&workflow_id=wf_main", ["throttled"]),
    ],
)
def test_filters_give_the_right_rows(admin_client, traffic, query, expected):
    assert listed(admin_client, query) == pks(*(traffic[name] for name in expected))


def test_custom_date_range_takes_iso_times_and_dates(admin_client, traffic):
    day = traffic["old_ok"][0].created_at
    since = (day - timedelta(minutes=10)).isoformat()
    until = (day + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S")  # naive: UTC
    query = "?" + f"created_at__gte={since}&created_at__lt={until}".replace("+", "%2B")
    assert listed(admin_client, query) == pks(traffic["old_ok"])
    tomorrow = (timezone.now() + timedelta(days=1)).date().isoformat()
    assert listed(admin_client, f"?created_at__gte={tomorrow}") == set()


@pytest.mark.parametrize("query", ["?created_at__gte=yesterday", "?created_at__last=2w"])
def test_a_malformed_date_is_refused_not_ignored(admin_client, traffic, query):
    response = admin_client.get(reverse(CHANGELIST) + query)
    assert response.status_code == 302 and response.url.endswith("?e=1")


def test_filters_offer_fixed_choices(admin_client, traffic):
    page = admin_client.get(reverse(CHANGELIST)).content.decode()
    # 409 and 504 appear though no row has them: the list is fixed, not read from the table.
    for choice in ("Last hour", "Last 7 days", "409", "504", "none (no answer)", "Circuit open"):
        assert choice in page.replace("Not called: the upstream circuit was open", "Circuit open")
    assert 'name="created_at__gte"' in page and 'type="datetime-local"' in page


def changelist_queries(client, query: str = "") -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(reverse(CHANGELIST) + query).status_code == 200
    return [entry["sql"].upper() for entry in captured]


@pytest.mark.parametrize(
    "query", ["", "?status_code__exact=401", "?created_at__last=24h&outcome__exact=success"]
)
def test_list_page_runs_few_queries_and_none_scans_for_choices(
    admin_client, traffic, django_assert_max_num_queries, query
):
    with django_assert_max_num_queries(8):
        statements = changelist_queries(admin_client, query)
    for sql in statements:
        assert "DISTINCT" not in sql
        assert "DATE_TRUNC" not in sql and "DJANGO_DATETIME_TRUNC" not in sql


def test_only_the_time_can_be_sorted(admin_client, traffic):
    page = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert page.count('class="sortable') == 1 and "column-created_at" in page


@pytest.mark.parametrize("order", ["3", "-8", "3.-9.2"])  # upstream status, user ref, …
def test_a_sort_typed_into_the_url_on_an_unindexed_column_is_ignored(admin_client, traffic, order):
    listing = admin_client.get(reverse(CHANGELIST) + f"?o={order}").context["cl"]
    default = admin_client.get(reverse(CHANGELIST)).context["cl"]
    assert listing.get_ordering_field_columns() == default.get_ordering_field_columns()
    assert (
        str(listing.queryset.query).split("ORDER BY")[1]
        == str(default.queryset.query).split("ORDER BY")[1]
    )
    sorted_by_time = admin_client.get(reverse(CHANGELIST) + "?o=1").context["cl"]
    assert "created_at" in str(sorted_by_time.queryset.query).split("ORDER BY")[1]


@pytest.fixture
def small_pages(monkeypatch):
    """Pages of 2 rows and at most 3 pages, so the cap shows with a handful of rows."""
    monkeypatch.setattr(SessionAttemptAdmin, "list_per_page", 2)
    monkeypatch.setattr(CappedPaginator, "MAX_PAGES", 3)


def test_pages_stop_at_the_cap_and_say_so(admin_client, traffic, small_pages):
    response = admin_client.get(reverse(CHANGELIST) + "?p=3")
    assert response.status_code == 200
    cl = response.context["cl"]
    assert cl.paginator.num_pages == 3 and len(cl.result_list) == 2
    page = response.content.decode()
    assert "pages stop at 3" in page
    assert "Older attempts" in page


def test_a_page_past_the_cap_redirects_with_a_message_and_keeps_the_filters(
    admin_client, traffic, small_pages
):
    url = reverse(CHANGELIST) + "?status_code__exact=200&p=9000"
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(url)
    assert response.status_code == 302
    assert response.url == reverse(CHANGELIST) + "?status_code__exact=200"
    assert not any("OFFSET" in entry["sql"].upper() for entry in captured)
    page = admin_client.get(response.url).content.decode()
    assert "Only the first 3 pages are shown" in page


def test_the_older_link_walks_every_row_once_even_with_equal_times(
    admin_client, traffic, small_pages
):
    same_moment = timezone.now() - timedelta(hours=5)
    tied = [success(same_moment, user_ref=f"u_tie{i}") for i in range(3)]
    everything = set(SessionAttempt.objects.values_list("pk", flat=True))
    seen: list[int] = []
    url = reverse(CHANGELIST)
    while url:
        response = admin_client.get(url)
        seen += [row.pk for row in response.context["cl"].result_list]
        older = response.context["older_url"]
        url = reverse(CHANGELIST) + older if older else None
    assert sorted(seen) == sorted(everything) and len(seen) == len(everything)
    assert pks(tied) <= set(seen)


def test_a_page_past_the_cap_without_filters_redirects_to_the_bare_list(admin_client, traffic):
    response = admin_client.get(reverse(CHANGELIST) + "?p=101")
    assert response.status_code == 302 and response.url == reverse(CHANGELIST)


def test_the_older_link_of_a_pruned_row_lists_nothing(admin_client, traffic):
    assert listed(admin_client, "?before_id=999999") == set()


@pytest.mark.parametrize("term", ["request_id", "upstream_request_id", "session_id"])
def test_search_finds_a_row_by_each_identifier(admin_client, traffic, term):
    row = traffic["recent_ok"][1]
    value = getattr(row, term)
    assert listed(admin_client, f"?q={value}") == {row.pk}
    # Whole identifiers only: a part finds nothing (a substring search would scan the table).
    assert listed(admin_client, f"?q={value[:-3]}") == set()


def test_search_by_user_ref_and_by_current_username(admin_client, traffic):
    ada = User.objects.create_user("ada.lovelace")
    mine = success(timezone.now() - timedelta(minutes=9), user=ada, user_ref="u_hmac_ada")
    assert listed(admin_client, "?q=u_hmac_ada") == {mine.pk}
    assert listed(admin_client, "?q=ada.lovelace") == {mine.pk}
    assert listed(admin_client, "?q=anon_x") == pks(traffic["refused"])


def test_search_runs_no_case_folding_query(admin_client, traffic):
    statements = changelist_queries(admin_client, f"?q={traffic['auth'][0].request_id}")
    assert not any("UPPER(" in sql or "LIKE" in sql for sql in statements)


@pytest.fixture
def incident(traffic) -> Alert:
    alerts_evaluate(now=traffic["auth"][-1].created_at + timedelta(seconds=1))
    return Alert.objects.get(rule="upstream_auth")


def test_detail_page_shows_the_attempt_and_links_to_the_user_and_the_alert(
    admin_client, traffic, incident, django_assert_max_num_queries
):
    attempt = traffic["auth"][1]
    url = reverse("admin:audit_sessionattempt_change", args=[attempt.pk])
    with django_assert_max_num_queries(10):
        with CaptureQueriesContext(connection) as captured:
            page = admin_client.get(url).content.decode()
    assert not any("DISTINCT" in entry["sql"].upper() for entry in captured)
    for shown in (attempt.request_id, "upstream_auth_failed", "Incorrect API key provided"):
        assert shown in page
    assert "Upstream (OpenAI)" in page and "Caller" in page
    assert f"{reverse(CHANGELIST)}?user_ref={attempt.user_ref}" in page
    assert reverse("admin:audit_alert_change", args=[incident.pk]) in page
    assert b'name="_save"' not in page.encode()


def test_detail_page_of_a_success_links_to_no_alert(admin_client, traffic, incident):
    attempt = traffic["recent_ok"][0]
    page = admin_client.get(reverse("admin:audit_sessionattempt_change", args=[attempt.pk]))
    text = page.content.decode()
    assert "no alert incident counted this attempt" in text
    assert reverse("admin:audit_alert_change", args=[incident.pk]) not in text
    assert f"?user_ref={attempt.user_ref}" in text


def exported(response) -> list[dict]:
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


def test_export_streams_the_filtered_rows_and_is_logged(admin_client, admin_user, traffic):
    response = admin_client.get(reverse(EXPORT) + "?status_code__exact=401&created_at__last=24h")
    rows = exported(response)
    assert [int(row["id"]) for row in rows] == [a.pk for a in reversed(traffic["auth"])]
    assert {row["api_error_code"] for row in rows} == {"upstream_auth_failed"}
    assert "refusal_key" not in rows[0]
    entry = LogEntry.objects.get()
    assert entry.user_id == admin_user.pk and entry.object_repr == "CSV export"
    assert entry.change_message.startswith("Exported 3 session attempts as CSV;")
    assert "status_code__exact=401" in entry.change_message
    assert entry.get_admin_url() is None  # no object: "Recent actions" shows it unlinked


def test_export_stops_at_the_limit_newest_first(admin_client, traffic, settings):
    settings.AUDIT_EXPORT_MAX_ROWS = 4
    rows = exported(admin_client.get(reverse(EXPORT)))
    newest = SessionAttempt.objects.order_by("-created_at", "-id")[:4]
    assert [int(row["id"]) for row in rows] == [a.pk for a in newest]
    assert "Exported 4 session attempts as CSV (the limit); filters: none" in (
        LogEntry.objects.get().change_message
    )


def test_export_defuses_spreadsheet_formulas(admin_client, traffic):
    rows = exported(admin_client.get(reverse(EXPORT) + "?outcome__exact=rejected"))
    assert rows[0]["error_message"] == '\'=HYPERLINK("http://evil.example")'


def test_the_list_links_to_the_export_of_the_same_filters(admin_client, traffic):
    page = admin_client.get(reverse(CHANGELIST) + "?status_code__exact=401").content.decode()
    assert f'href="{reverse(EXPORT)}?status_code__exact=401"' in page


def test_a_malformed_filter_in_an_export_is_a_400(admin_client, traffic):
    response = admin_client.get(reverse(EXPORT) + "?created_at__gte=<b>soon</b>")
    assert response.status_code == 400 and response["Content-Type"].startswith("text/plain")
    assert not LogEntry.objects.exists()


@pytest.fixture
def staff(client):
    def login(*permissions: str) -> User:
        user = User.objects.create_user("operator", password="x", is_staff=True)
        user.user_permissions.set(Permission.objects.filter(codename__in=permissions))
        client.force_login(user)
        return user

    return login


def test_export_is_refused_without_view_permission(client, staff, traffic):
    staff("view_alert")
    response = client.get(reverse(EXPORT))
    assert response.status_code == 403
    assert not LogEntry.objects.exists()


def test_a_view_only_operator_may_export_but_still_not_change(client, staff, traffic):
    staff("view_sessionattempt")
    assert len(exported(client.get(reverse(EXPORT)))) == sum(len(g) for g in traffic.values())
    assert client.get(reverse("admin:audit_sessionattempt_add")).status_code == 403
    attempt = traffic["auth"][0]
    client.post(
        reverse("admin:audit_sessionattempt_change", args=[attempt.pk]), {"outcome": "success"}
    )
    attempt.refresh_from_db()
    assert attempt.outcome == "upstream_error"


def test_statistics_list_has_fixed_filters_too(admin_client, traffic):
    from audit.stats import attempt_stats_aggregate

    attempt_stats_aggregate()
    url = reverse("admin:audit_attemptminutestat_changelist")
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(url + "?status_code__exact=0&minute__last=24h")
    assert response.status_code == 200
    assert {row.outcome for row in response.context["cl"].result_list} == {"timeout", "rejected"}
    assert not any("DISTINCT" in entry["sql"].upper() for entry in captured)


def test_an_alert_of_another_workflow_is_not_linked(admin_client, traffic, incident):
    other = record_attempts(
        3, at=timezone.now() - timedelta(minutes=30), workflow="wf_other", status=401
    )
    alerts_evaluate(now=other[-1].created_at + timedelta(seconds=1))
    theirs = Alert.objects.get(workflow_id="wf_other")
    page = admin_client.get(
        reverse("admin:audit_sessionattempt_change", args=[traffic["auth"][0].pk])
    ).content.decode()
    assert reverse("admin:audit_alert_change", args=[theirs.pk]) not in page
    page = admin_client.get(
        reverse("admin:audit_sessionattempt_change", args=[other[0].pk])
    ).content.decode()
    assert reverse("admin:audit_alert_change", args=[theirs.pk]) in page


def test_the_form_shows_a_bound_in_utc_minutes(admin_client, traffic):
    # The form shows a bound in UTC minutes, whatever offset the link carried.
    moment = datetime(2026, 11, 28, 13, 30, tzinfo=UTC).astimezone(timezone.get_fixed_timezone(120))
    query = "?created_at__gte=" + moment.isoformat().replace("+", "%2B")
    page = admin_client.get(reverse(CHANGELIST) + query).content.decode()
    assert 'value="2026-11-28T13:30"' in page
