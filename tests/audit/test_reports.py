import json
import smtplib
import socket
from datetime import UTC, datetime, timedelta
from io import StringIO
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.core.mail.backends import locmem
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.models import Alert, ErrorReport
from audit.reports import (
    EMAIL_RETRY_FOR,
    email_retry_delay,
    error_report_build,
    error_report_create_and_send,
    error_report_email,
    error_report_period,
    error_report_render_text,
    error_reports_email_due,
)
from audit.services import session_attempt_record
from audit.stats import attempt_stats_aggregate

pytestmark = pytest.mark.django_db

DAY = datetime(2026, 3, 3, tzinfo=UTC)  # a Tuesday
NEXT_DAY = DAY + timedelta(days=1)
WF_A, WF_B = "wf_alpha", "wf_beta"


def record(at: datetime, outcome: str = "success", **fields):
    values = {"user_ref": "u1", "workflow_id": WF_A, "status_code": 200, "latency_ms": 100}
    if outcome != "success":
        values["status_code"] = None
    return session_attempt_record(
        outcome=outcome, anonymous=False, started_at=at, **{**values, **fields}
    )


def alert(first_seen: datetime, **fields) -> Alert:
    values = {
        "rule": "upstream_auth",
        "fingerprint": "fp-auth",
        "severity": "critical",
        "status_code": 401,
        "workflow_id": WF_A,
        "first_seen": first_seen,
        "last_seen": first_seen + timedelta(minutes=2),
        "count": 3,
        "threshold": 3,
        "window_seconds": 300,
    }
    return Alert.objects.create(**{**values, **fields})


@pytest.fixture
def known_day():
    """10 attempts on DAY (6 successes) and 5 the day before (4 successes)."""
    for i, latency in enumerate([100, 200, 300, 400, 500, 600]):
        record(DAY + timedelta(hours=i), user_ref=f"u{i % 3}", latency_ms=latency)
    for minute in (1, 2):
        record(
            DAY + timedelta(hours=9, minutes=minute),
            "upstream_error",
            status_code=401,
            error_code="invalid_api_key",
            error_message="Incorrect API key provided",
            latency_ms=50,
        )
    record(
        DAY + timedelta(hours=10),
        "upstream_error",
        status_code=404,
        error_code="workflow_not_found",
        error_message="Workflow not found",
        workflow_id=WF_B,
        latency_ms=80,
    )
    record(
        DAY + timedelta(hours=23, minutes=59),
        "timeout",
        error_message="Upstream timed out",
        latency_ms=None,
    )
    record(NEXT_DAY, "timeout")  # the next period: not counted
    for i in range(4):
        record(DAY - timedelta(hours=i + 1))
    record(DAY - timedelta(hours=6), "upstream_error", status_code=500, error_message="Oops")
    alert(DAY + timedelta(hours=9, minutes=2))
    alert(DAY - timedelta(hours=2), fingerprint="fp-old", state="resolved")
    attempt_stats_aggregate()  # what the minute task has done by the time a report is built


def test_figures_for_a_known_day(known_day):
    data = error_report_build(since=DAY, until=NEXT_DAY)

    assert (data["since"], data["until"]) == (DAY.isoformat(), NEXT_DAY.isoformat())
    assert (data["attempts"], data["successes"], data["errors"]) == (10, 6, 4)
    assert data["success_rate"] == 0.6
    assert data["by_status_code"] == [
        {"status_code": 401, "attempts": 2},
        {"status_code": 0, "attempts": 1},
        {"status_code": 404, "attempts": 1},
    ]
    assert data["by_error_code"] == [
        {"error_code": "invalid_api_key", "attempts": 2},
        {"error_code": "workflow_not_found", "attempts": 1},
    ]
    assert data["by_outcome"] == [
        {"outcome": "success", "attempts": 6},
        {"outcome": "upstream_error", "attempts": 3},
        {"outcome": "timeout", "attempts": 1},
    ]
    assert data["by_workflow"] == [
        {"workflow_id": WF_A, "attempts": 9, "errors": 3},
        {"workflow_id": WF_B, "attempts": 1, "errors": 1},
    ]
    assert data["top_error_messages"] == [
        {"message": "Incorrect API key provided", "count": 2},
        {"message": "Upstream timed out", "count": 1},
        {"message": "Workflow not found", "count": 1},
    ]
    # 9 timed attempts: 50 50 80 100 200 300 400 500 600 (percentile_cont interpolation).
    assert data["latency_ms"] == {"samples": 9, "p50": 200.0, "p95": 560.0}
    assert data["alerts_fired"] == 1
    assert [(a["rule"], a["severity"], a["status_code"], a["state"]) for a in data["alerts"]] == [
        ("upstream_auth", "critical", 401, "firing")
    ]
    json.dumps(data)  # serialisable as stored and printed


def test_change_against_the_previous_period(known_day):
    data = error_report_build(since=DAY, until=NEXT_DAY)

    previous = data["previous"]
    assert (previous["attempts"], previous["errors"], previous["success_rate"]) == (5, 1, 0.8)
    assert previous["since"] == (DAY - timedelta(days=1)).isoformat()
    assert data["change"] == {
        "attempts": {"absolute": 5, "relative": 1.0},
        "errors": {"absolute": 3, "relative": 3.0},
        "success_rate": {"absolute": -0.2, "relative": -0.25},
    }


def test_empty_period_and_no_previous():
    data = error_report_build(since=DAY, until=NEXT_DAY)

    assert (data["attempts"], data["success_rate"]) == (0, None)
    assert data["latency_ms"] == {"samples": 0, "p50": None, "p95": None}
    assert data["change"]["attempts"] == {"absolute": 0, "relative": None}
    assert data["change"]["success_rate"] == {"absolute": None, "relative": None}
    assert "Success rate: n/a" in error_report_render_text(data)


def test_text_rendering(known_day):
    text = error_report_render_text(
        error_report_build(since=DAY, until=NEXT_DAY), admin_url="https://ops.example/x"
    )

    assert "Period: 2026-03-03 00:00 to 2026-03-04 00:00 UTC" in text
    assert "Attempts:     10 (+5, +100.0% on the previous period)" in text
    assert "Success rate: 60.00% (-20.00 points on the previous period)" in text
    assert "Errors:       4 (+3, +300.0% on the previous period)" in text
    assert "p50 200.0 ms, p95 560.0 ms (9 timed attempts)" in text
    assert "  401  2" in text
    assert "  invalid_api_key     2" in text
    assert "  2x  Incorrect API key provided" in text
    assert f"  {WF_A}  9 (3 errors)" in text
    assert "Alerts fired: 1" in text
    assert "critical upstream_auth  status 401, workflow wf_alpha, 3 attempts, firing" in text
    assert text.endswith("In the admin: https://ops.example/x\n")
    assert "ada" not in text  # the logged-in username never appears, only refs at most


KNOWN_DAY_TEXT = """\
ChatKit session broker: error report
Period: 2026-03-03 00:00 to 2026-03-04 00:00 UTC

Attempts:     11 (+6, +120.0% on the previous period)
Success rate: 54.55% (-25.45 points on the previous period)
Errors:       5 (+4, +400.0% on the previous period)
Upstream latency: p50 200.0 ms, p95 560.0 ms (9 timed attempts)

Errors by upstream status (0: no answer)
  0    2
  401  2
  404  1

Errors by upstream error code
  invalid_api_key     2
  workflow_not_found  1

Attempts by outcome
  success         6
  upstream_error  3
  rejected        1
  timeout         1

Attempts by workflow
  wf_alpha  10 (4 errors)
  wf_beta   1 (1 error)

Most frequent upstream error messages
  2x  Incorrect API key provided
  1x  Upstream timed out
  1x  Workflow not found

Alerts fired: 2
  warning upstream_unavailable  status -, workflow -, 12 attempts, resolved, first seen \
2026-03-03 01:00 UTC
  critical upstream_auth        status 401, workflow wf_alpha, 3 attempts, firing, first seen \
2026-03-03 09:02 UTC
"""


def test_whole_text_of_a_known_day(known_day):
    # Raised before the fixture's alert but stored after it; no status, no workflow.
    alert(
        DAY + timedelta(hours=1),
        fingerprint="fp-down",
        rule="upstream_unavailable",
        severity="warning",
        status_code=None,
        workflow_id="",
        count=12,
        state="resolved",
    )
    alert(NEXT_DAY, fingerprint="fp-next")  # the next period
    record(DAY + timedelta(hours=11), "rejected", error_message="", latency_ms=None)
    record(NEXT_DAY, "timeout", error_message="Upstream timed out")  # the next period

    attempt_stats_aggregate()
    data = error_report_build(since=DAY, until=NEXT_DAY)

    assert error_report_render_text(data) == KNOWN_DAY_TEXT
    linked = error_report_render_text(data, admin_url="https://broker.example/admin/x")
    assert linked == f"{KNOWN_DAY_TEXT}\nIn the admin: https://broker.example/admin/x\n"


EMPTY_DAY_TEXT = """\
ChatKit session broker: error report
Period: 2026-03-03 00:00 to 2026-03-04 00:00 UTC

Attempts:     0 (+0 on the previous period)
Success rate: n/a (no previous figure)
Errors:       0 (+0 on the previous period)
Upstream latency: no timed attempts (or raw rows already pruned)

Errors by upstream status (0: no answer)
  (none)

Errors by upstream error code
  (none)

Attempts by outcome
  (none)

Attempts by workflow
  (none)

Most frequent upstream error messages
  (none)

Alerts fired: 0
  (none)
"""


def test_whole_text_of_an_empty_day_without_an_admin_link():
    text = error_report_render_text(error_report_build(since=DAY, until=NEXT_DAY))
    assert text == EMPTY_DAY_TEXT


def test_success_rate_after_an_empty_period_has_no_previous_figure():
    healthy_day()
    text = error_report_render_text(error_report_build(since=DAY, until=NEXT_DAY))
    assert "Success rate: 100.00% (no previous figure)\n" in text
    assert "Attempts:     9 (+9 on the previous period)\n" in text


def test_rates_and_changes_are_rounded_to_four_decimals():
    for minute in range(7):
        record(DAY - timedelta(hours=12, minutes=minute))
    record(DAY + timedelta(hours=1))
    record(DAY + timedelta(hours=2))
    record(DAY + timedelta(hours=3), "upstream_error", status_code=500, error_message="Oops")

    attempt_stats_aggregate()
    data = error_report_build(since=DAY, until=NEXT_DAY)

    assert (data["attempts"], data["success_rate"], data["previous"]["success_rate"]) == (
        3,
        0.6667,
        1.0,
    )
    assert data["change"]["attempts"] == {"absolute": -4, "relative": -0.5714}
    assert data["change"]["success_rate"] == {"absolute": -0.3333, "relative": -0.3333}
    assert data["change"]["errors"] == {"absolute": 1, "relative": None}
    text = error_report_render_text(data)
    assert "Attempts:     3 (-4, -57.1% on the previous period)\n" in text
    assert "Success rate: 66.67% (-33.33 points on the previous period)\n" in text


@pytest.mark.parametrize(
    ("latencies", "p50", "p95"),
    [([250], 250.0, 250.0), ([100, 101], 100.5, 101.0), ([100, 200, 300, 400], 250.0, 385.0)],
)
def test_latency_percentiles_are_interpolated_to_a_tenth(latencies, p50, p95):
    for i, latency in enumerate(latencies):
        record(DAY + timedelta(minutes=i), latency_ms=latency)
    record(DAY + timedelta(minutes=30), "network_error", latency_ms=None)  # no upstream answer

    latency = error_report_build(since=DAY, until=NEXT_DAY)["latency_ms"]

    # [100, 101]: p95 is 100.95, shown as 101.0.
    assert latency == {"samples": len(latencies), "p50": p50, "p95": p95}


def test_most_frequent_messages_first_then_alphabetical_at_most_ten():
    for _ in range(3):
        record(DAY + timedelta(hours=1), "upstream_error", error_message="Workflow not found")
    record(DAY + timedelta(hours=2), "upstream_error", error_message="Incorrect API key provided")
    record(DAY + timedelta(hours=2), "upstream_error", error_message="Modèle introuvable: wf_ü")
    for i in range(10):
        record(DAY + timedelta(hours=3), "timeout", error_message=f"Upstream timed out ({i})")
    record(DAY + timedelta(hours=4), "not_configured", error_message="")  # no message: not listed
    record(DAY + timedelta(hours=4), "upstream_error", error_message="Workflow not found")

    top = error_report_build(since=DAY, until=NEXT_DAY)["top_error_messages"]

    assert top[:4] == [
        {"message": "Workflow not found", "count": 4},
        {"message": "Incorrect API key provided", "count": 1},
        {"message": "Modèle introuvable: wf_ü", "count": 1},
        {"message": "Upstream timed out (0)", "count": 1},
    ]
    assert [row["message"] for row in top[4:]] == [f"Upstream timed out ({i})" for i in range(1, 7)]


def test_workflows_with_as_many_attempts_are_listed_by_id():
    record(DAY + timedelta(hours=1), workflow_id="wf_b")
    record(DAY + timedelta(hours=2), "timeout", workflow_id="wf_a")
    record(DAY + timedelta(hours=3), workflow_id="wf_c")
    record(DAY + timedelta(hours=3), workflow_id="wf_c")

    attempt_stats_aggregate()
    by_workflow = error_report_build(since=DAY, until=NEXT_DAY)["by_workflow"]

    assert by_workflow == [
        {"workflow_id": "wf_c", "attempts": 2, "errors": 0},
        {"workflow_id": "wf_a", "attempts": 1, "errors": 1},
        {"workflow_id": "wf_b", "attempts": 1, "errors": 0},
    ]


def test_report_ends_are_whole_minutes_in_utc_whatever_the_time_zone(settings):
    settings.TIME_ZONE = "Europe/Berlin"
    berlin = ZoneInfo("Europe/Berlin")
    since = datetime(2026, 3, 3, 10, 0, 30, 500_000, tzinfo=UTC)
    until = datetime(2026, 3, 3, 11, 0, 45, tzinfo=UTC)
    record(since - timedelta(seconds=20), "timeout", error_message="In the first minute")
    record(since.replace(minute=59, second=59), "timeout", error_message="In the last minute")
    # Before `until` itself, but inside its minute, which belongs to the next period.
    record(until - timedelta(seconds=5), "timeout", error_message="After the period")

    attempt_stats_aggregate()
    data = error_report_build(since=since.astimezone(berlin), until=until.astimezone(berlin))

    assert (data["since"], data["until"]) == (
        "2026-03-03T10:00:00+00:00",
        "2026-03-03T11:00:00+00:00",
    )
    # The counts and the raw-row figures describe the same attempts.
    assert data["attempts"] == 2
    assert [row["message"] for row in data["top_error_messages"]] == [
        "In the first minute",
        "In the last minute",
    ]


@pytest.mark.parametrize(
    ("period", "start", "end"),
    [
        ("hourly", datetime(2026, 3, 4, 9, tzinfo=UTC), datetime(2026, 3, 4, 10, tzinfo=UTC)),
        ("daily", datetime(2026, 3, 3, tzinfo=UTC), datetime(2026, 3, 4, tzinfo=UTC)),
        ("weekly", datetime(2026, 2, 23, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)),
    ],
)
def test_period_is_aligned_in_utc_whatever_the_time_zone(settings, period, start, end):
    settings.TIME_ZONE = "Asia/Kolkata"  # UTC+05:30: local hours start at half past UTC hours
    moment = datetime(2026, 3, 4, 10, 59, 59, 999_999, tzinfo=UTC)
    assert error_report_period(period=period, end=moment.astimezone(ZoneInfo("Asia/Kolkata"))) == (
        start,
        end,
    )


@pytest.mark.parametrize(
    ("period", "start", "end"),
    [
        ("hourly", datetime(2026, 3, 4, 9, tzinfo=UTC), datetime(2026, 3, 4, 10, tzinfo=UTC)),
        ("daily", datetime(2026, 3, 3, tzinfo=UTC), datetime(2026, 3, 4, tzinfo=UTC)),
        ("weekly", datetime(2026, 2, 23, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)),
    ],
)
def test_period_is_the_last_complete_one(period, start, end):
    assert error_report_period(period=period, end=datetime(2026, 3, 4, 10, 5, tzinfo=UTC)) == (
        start,
        end,
    )
    # Exactly at a boundary, the period that just ended.
    assert error_report_period(period=period, end=end) == (start, end)


def test_create_and_send_is_idempotent_and_emails_once(
    known_day, settings, mailoutbox, admin_client
):
    settings.ERROR_REPORT_PERIOD = "daily"
    settings.ALERT_EMAIL_TO = ["ops@example.com", "oncall@example.com"]
    settings.ALERT_ADMIN_BASE_URL = "https://broker.example/"

    first = error_report_create_and_send(period_end=NEXT_DAY + timedelta(minutes=15))
    second = error_report_create_and_send(period_end=NEXT_DAY + timedelta(hours=3))

    assert first.pk == second.pk and ErrorReport.objects.count() == 1
    report = ErrorReport.objects.get()
    assert (report.period_start, report.period_end) == (DAY, NEXT_DAY)
    assert report.emailed_at is not None and report.data["attempts"] == 10
    assert len(mailoutbox) == 1
    message = mailoutbox[0]
    assert message.to == ["ops@example.com", "oncall@example.com"]
    assert "4 errors" in message.subject
    assert message.body == report.text
    link = "https://broker.example/admin/audit/errorreport/?period_start=2026-03-03T00%3A00%3A00%2B00%3A00"
    assert message.body.endswith(f"In the admin: {link}\n")
    # The link lists exactly this report.
    page = admin_client.get(link.removeprefix("https://broker.example"))
    assert page.status_code == 200
    assert list(page.context["cl"].result_list) == [report]


def test_no_recipients_no_email_until_configured(known_day, settings, mailoutbox):
    settings.ERROR_REPORT_PERIOD = "daily"
    settings.ALERT_EMAIL_TO = []
    report = error_report_create_and_send(period_end=NEXT_DAY)
    assert report.emailed_at is None and not mailoutbox

    settings.ALERT_EMAIL_TO = ["ops@example.com"]
    error_report_create_and_send(period_end=NEXT_DAY)
    assert len(mailoutbox) == 1


def test_command_prints_text_and_json(known_day, mailoutbox):
    span = ["--since", "2026-03-03", "--until", "2026-03-04T00:00:00Z"]
    text = StringIO()
    call_command("error_report", *span, stdout=text)
    assert "Attempts:     10 (+5" in text.getvalue()

    out = StringIO()
    call_command("error_report", *span, "--format", "json", stdout=out)
    data = json.loads(out.getvalue())
    assert (data["attempts"], data["since"]) == (10, DAY.isoformat())

    assert not ErrorReport.objects.exists() and not mailoutbox  # on demand: printed only


def test_command_defaults_to_the_last_24_hours():
    record(datetime.now(UTC) - timedelta(hours=1))
    out = StringIO()
    attempt_stats_aggregate()
    call_command("error_report", "--format", "json", stdout=out)
    data = json.loads(out.getvalue())
    since, until = (datetime.fromisoformat(data[key]) for key in ("since", "until"))
    assert until - since == timedelta(hours=24)
    assert data["attempts"] == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--since", "yesterday"], "--since 'yesterday' is not an ISO 8601"),
        (["--until", "2026-13-01"], "--until '2026-13-01' is not an ISO 8601"),
        (["--since", "2026-03-04", "--until", "2026-03-03"], "earlier than --until"),
    ],
)
def test_command_rejects_bad_dates(arguments, message):
    with pytest.raises(CommandError, match=message):
        call_command("error_report", *arguments)


def healthy_day() -> None:
    """An ordinary day: every attempt succeeded, on two workflows, one of them with a blank id."""
    for hour in range(0, 24, 3):
        record(DAY + timedelta(hours=hour, minutes=7), user_ref=f"anon_{hour}")
    record(DAY + timedelta(hours=12), workflow_id="", user_ref="")
    attempt_stats_aggregate()


def test_a_healthy_day_reports_zero_errors_per_workflow():
    healthy_day()

    data = error_report_build(since=DAY, until=NEXT_DAY)

    assert (data["attempts"], data["errors"], data["success_rate"]) == (9, 0, 1.0)
    assert data["by_workflow"] == [
        {"workflow_id": WF_A, "attempts": 8, "errors": 0},
        {"workflow_id": "", "attempts": 1, "errors": 0},
    ]
    assert data["by_status_code"] == data["by_error_code"] == data["top_error_messages"] == []
    text = error_report_render_text(data)
    assert f"  {WF_A}  8 (0 errors)" in text
    assert "  (none)    1 (0 errors)" in text
    assert "Errors:       0 (no previous figure)" not in text  # the previous day had 0 attempts
    assert "Errors:       0 (+0 on the previous period)" in text


def test_command_on_a_healthy_day_prints_text_and_json():
    healthy_day()
    span = ["--since", "2026-03-03", "--until", "2026-03-04"]

    text = StringIO()
    call_command("error_report", *span, stdout=text)
    out = StringIO()
    call_command("error_report", *span, "--format", "json", stdout=out)

    assert "Success rate: 100.00%" in text.getvalue()
    assert [row["errors"] for row in json.loads(out.getvalue())["by_workflow"]] == [0, 0]


def test_scheduled_report_on_a_healthy_day_is_stored_and_emailed(settings, mailoutbox):
    settings.ERROR_REPORT_PERIOD = "daily"
    settings.ALERT_EMAIL_TO = ["ops@example.com"]
    healthy_day()

    report = error_report_create_and_send(period_end=NEXT_DAY + timedelta(minutes=15))

    assert report.data["errors"] == 0 and "Success rate: 100.00%" in report.text
    assert [message.body for message in mailoutbox] == [report.text]
    assert ErrorReport.objects.get().emailed_at is not None


def test_a_failing_rebuild_keeps_the_stored_report(known_day, settings, monkeypatch):
    settings.ERROR_REPORT_PERIOD = "daily"
    stored = error_report_create_and_send(period_end=NEXT_DAY)

    def broken(*args, **kwargs):
        raise RuntimeError("rendering failed")

    monkeypatch.setattr("audit.reports.error_report_render_text", broken)
    with pytest.raises(RuntimeError):
        error_report_create_and_send(period_end=NEXT_DAY)

    assert ErrorReport.objects.get().text == stored.text != ""


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def smtp_down(settings):
    """A real SMTP backend pointed at a port where nothing listens."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", closed_port()
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = 2
    settings.ERROR_REPORT_PERIOD = "daily"
    settings.ALERT_EMAIL_TO = ["ops@example.com"]


def smtp_back(settings) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def report_whose_email_failed(settings) -> datetime:
    """A healthy day's report, built while SMTP was down, which is back now; when it was built."""
    healthy_day()
    built = NEXT_DAY + timedelta(minutes=15)
    with time_machine.travel(built, tick=False):
        error_report_create_and_send(period_end=built)
    smtp_back(settings)
    return built


def test_a_failed_email_is_retried_by_the_sweep_with_backoff(smtp_down, settings, mailoutbox):
    healthy_day()
    built = NEXT_DAY + timedelta(minutes=15)
    with time_machine.travel(built, tick=False):
        report = error_report_create_and_send(period_end=built)

    assert report.emailed_at is None and report.email_attempts == 1
    assert report.email_error.startswith("ConnectionRefusedError")
    assert report.email_retry_at == built + timedelta(minutes=1)

    # Still failing a minute later: the next try waits twice as long.
    with time_machine.travel(built + timedelta(minutes=1), tick=False):
        assert error_reports_email_due() == 0
    report.refresh_from_db()
    assert report.email_attempts == 2
    assert report.email_retry_at == built + timedelta(minutes=3)

    smtp_back(settings)
    with time_machine.travel(built + timedelta(minutes=2, seconds=59), tick=False):
        assert error_reports_email_due() == 0  # not due yet
    assert not mailoutbox
    with time_machine.travel(built + timedelta(minutes=3), tick=False):
        assert error_reports_email_due() == 1
        assert error_reports_email_due() == 0  # sent once
    report.refresh_from_db()
    assert report.emailed_at == built + timedelta(minutes=3)
    assert (report.email_retry_at, report.email_error, report.email_attempts) == (None, "", 3)
    assert [message.body for message in mailoutbox] == [report.text]


@pytest.mark.parametrize(
    ("failures", "delay"), [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (8, 60), (20, 60)]
)
def test_email_retry_delay_doubles_up_to_an_hour(failures, delay):
    assert email_retry_delay(failures) == timedelta(minutes=delay)


def test_the_sweep_gives_up_a_day_after_the_report(smtp_down, settings, mailoutbox):
    built = report_whose_email_failed(settings)

    with time_machine.travel(built + EMAIL_RETRY_FOR + timedelta(seconds=1), tick=False):
        assert error_reports_email_due() == 0
    with time_machine.travel(built + EMAIL_RETRY_FOR, tick=False):
        assert error_reports_email_due() == 1
    assert len(mailoutbox) == 1


def test_the_sweep_sends_a_report_whose_first_try_never_happened(settings, mailoutbox):
    """The worker died between storing the report and emailing it."""
    settings.ERROR_REPORT_PERIOD = "daily"
    settings.ALERT_EMAIL_TO = ["ops@example.com"]
    healthy_day()
    with mock.patch("audit.reports.error_report_email"):
        report = error_report_create_and_send(period_end=NEXT_DAY)
    assert not mailoutbox and report.email_retry_at is not None

    assert error_reports_email_due() == 1
    assert len(mailoutbox) == 1


def test_the_sweep_leaves_reports_alone_without_recipients(settings, mailoutbox):
    settings.ERROR_REPORT_PERIOD = "daily"
    settings.ALERT_EMAIL_TO = []
    healthy_day()
    report = error_report_create_and_send(period_end=NEXT_DAY)
    assert report.email_retry_at is None

    settings.ALERT_EMAIL_TO = ["ops@example.com"]
    assert error_reports_email_due() == 0  # never due: it was built with nobody to send it to
    assert not mailoutbox


timeouts: list = []


class TimeoutRecordingBackend(locmem.EmailBackend):
    """The test outbox, noting the timeout each connection was opened with."""

    def __init__(self, *, timeout=None, **kwargs):
        super().__init__(**kwargs)
        timeouts.append(timeout)


class RefusingBackend(locmem.EmailBackend):
    """An SMTP server that refuses the message with a very long explanation."""

    def send_messages(self, messages):
        raise smtplib.SMTPDataError(554, "Message refused: " + "policy " * 500)


@pytest.mark.parametrize(("configured", "used"), [(7, 7), (None, 30), (0, 30)])
def test_report_email_has_a_timeout_even_without_email_timeout(
    settings, mailoutbox, configured, used
):
    settings.EMAIL_BACKEND = f"{__name__}.TimeoutRecordingBackend"
    settings.EMAIL_TIMEOUT = configured
    settings.ERROR_REPORT_PERIOD = "daily"
    settings.ALERT_EMAIL_TO = ["ops@example.com"]
    timeouts.clear()
    healthy_day()

    error_report_create_and_send(period_end=NEXT_DAY)

    assert timeouts == [used]
    assert len(mailoutbox) == 1


def test_email_subject_gives_the_period_errors_and_success_rate(known_day, settings, mailoutbox):
    settings.ERROR_REPORT_PERIOD = "daily"
    settings.ALERT_EMAIL_TO = ["ops@example.com"]
    settings.DEFAULT_FROM_EMAIL = "broker@example.com"

    error_report_create_and_send(period_end=NEXT_DAY)

    [message] = mailoutbox
    assert message.subject == (
        "ChatKit broker error report 2026-03-03 00:00 UTC: 4 errors, success rate 60.00%"
    )
    assert message.from_email == "broker@example.com"


def test_emailing_a_sent_report_again_sends_nothing(settings, mailoutbox):
    settings.ERROR_REPORT_PERIOD = "daily"
    settings.ALERT_EMAIL_TO = ["ops@example.com"]
    report = error_report_create_and_send(period_end=NEXT_DAY)
    assert len(mailoutbox) == 1

    assert error_report_email(report_id=report.pk) is False
    assert len(mailoutbox) == 1
    assert ErrorReport.objects.get().email_attempts == 1


def test_a_long_smtp_refusal_is_stored_cut_to_2000_characters(settings, mailoutbox):
    settings.EMAIL_BACKEND = f"{__name__}.RefusingBackend"
    settings.ERROR_REPORT_PERIOD = "daily"
    settings.ALERT_EMAIL_TO = ["ops@example.com"]

    report = error_report_create_and_send(period_end=NEXT_DAY)

    assert report.emailed_at is None and report.email_attempts == 1
    assert report.email_error.startswith("SMTPDataError: (554, 'Message refused: policy policy")
    assert len(report.email_error) == 2000


def test_a_report_built_without_recipients_is_not_sent_with_a_later_one(settings, mailoutbox):
    settings.ERROR_REPORT_PERIOD = "daily"
    settings.ALERT_EMAIL_TO = []
    unsent = error_report_create_and_send(period_end=DAY)

    settings.ALERT_EMAIL_TO = ["ops@example.com"]
    sent = error_report_create_and_send(period_end=NEXT_DAY)

    unsent.refresh_from_db()
    assert (unsent.emailed_at, unsent.email_retry_at) == (None, None)
    assert sent.emailed_at is not None
    assert error_reports_email_due() == 0
    assert [message.body for message in mailoutbox] == [sent.text]


def test_a_rerun_dying_before_the_email_keeps_the_backoff(smtp_down, settings, mailoutbox):
    built = report_whose_email_failed(settings)
    report = ErrorReport.objects.get()
    assert report.email_retry_at == built + timedelta(minutes=1)

    with (
        time_machine.travel(built + timedelta(seconds=10), tick=False),
        mock.patch("audit.reports.error_report_email"),
    ):
        error_report_create_and_send(period_end=built)
    report.refresh_from_db()

    assert report.email_retry_at == built + timedelta(minutes=1)
    with time_machine.travel(built + timedelta(seconds=10), tick=False):
        assert error_reports_email_due() == 0
    assert not mailoutbox


def test_the_sweep_sends_nothing_once_recipients_are_removed(smtp_down, settings, mailoutbox):
    built = report_whose_email_failed(settings)
    settings.ALERT_EMAIL_TO = []

    with time_machine.travel(built + timedelta(minutes=5), tick=False):
        assert error_reports_email_due() == 0

    assert not mailoutbox
    assert ErrorReport.objects.get().email_attempts == 1


@pytest.mark.parametrize(
    ("command", "arguments", "message"),
    [
        ("error_report", ["--since", "0001-01-01"], "out of range"),
        ("error_report", ["--until", "0001-01-01T12:00"], "out of range"),
        ("attempt_stats", ["--until", "0001-01-01"], "out of range"),
        ("attempt_stats", ["--since", "0001-01-01", "--until", "0001-01-02"], None),
    ],
)
def test_commands_refuse_moments_out_of_range(command, arguments, message):
    if message is None:
        call_command(command, *arguments, stdout=StringIO())  # far back, but representable
        return
    with pytest.raises(CommandError, match=message):
        call_command(command, *arguments, stdout=StringIO())


@pytest.mark.parametrize("command", ["error_report", "attempt_stats"])
def test_commands_refuse_a_period_inside_one_minute(command):
    span = ["--since", "2026-03-03T14:00:10", "--until", "2026-03-03T14:00:50"]
    with pytest.raises(CommandError, match="at least one whole minute"):
        call_command(command, *span, stdout=StringIO())


def test_attempt_stats_rounds_to_the_minute_like_the_report():
    record(DAY + timedelta(hours=14, seconds=40))
    out = StringIO()
    span = ["--since", "2026-03-03T14:00:30", "--until", "2026-03-03T14:01:10"]
    attempt_stats_aggregate()
    call_command("attempt_stats", *span, "--granularity", "minute", "--format", "json", stdout=out)
    assert [row["attempts"] for row in json.loads(out.getvalue())] == [1]


def test_reports_and_commands_only_read_and_say_what_is_not_aggregated_yet(known_day):
    record(DAY + timedelta(hours=12, minutes=30), "timeout")  # the minute task has not run since
    span = ["--since", DAY.isoformat(), "--until", NEXT_DAY.isoformat()]
    text, stats_notes = StringIO(), StringIO()

    with CaptureQueriesContext(connection) as queries:
        data = error_report_build(since=DAY, until=NEXT_DAY)
        call_command("error_report", *span, stdout=text)
        call_command("attempt_stats", *span, stdout=StringIO(), stderr=stats_notes)

    reads = ("SELECT", "SAVEPOINT", "RELEASE SAVEPOINT")
    assert [q["sql"] for q in queries if not q["sql"].lstrip().startswith(reads)] == []
    assert (data["attempts"], data["minutes_not_aggregated"]) == (10, 1)
    note = "Incomplete: 1 minute(s) of this period are not in the statistics yet"
    assert note in text.getvalue() and note in stats_notes.getvalue()
    assert note not in error_report_render_text(error_report_build(since=DAY, until=DAY))
