"""The error report: one period of session attempts, summarised for an operator.

Counts come from the per-minute statistics, so a report can be rebuilt after the raw rows are
pruned; the most frequent messages and the latency percentiles need the raw rows and are empty
for periods older than the retention.
"""

import logging
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.core import mail
from django.db import connection, transaction
from django.db.models import Q, Sum
from django.urls import reverse
from django.utils import timezone

from audit.models import Alert, AttemptMinuteStat, ErrorReport, SessionAttempt
from audit.stats import minutes_pending

logger = logging.getLogger(__name__)

PERIODS = {"hourly": timedelta(hours=1), "daily": timedelta(days=1), "weekly": timedelta(weeks=1)}
TOP_MESSAGES = 10
MAX_ALERTS_LISTED = 50
# How long the minute sweep keeps retrying a report's email before giving up.
EMAIL_RETRY_FOR = timedelta(hours=24)
SUCCESS = SessionAttempt.Outcome.SUCCESS
ALERT_FIELDS = ("id", "rule", "severity", "status_code", "workflow_id", "count", "state")


MINUTES_PENDING_NOTE = (
    "Incomplete: {:,} minute(s) of this period are not in the statistics yet (the aggregation "
    "task is behind, or was not running); their attempts are missing from the counts above."
)


def error_report_period(*, period: str, end: datetime) -> tuple[datetime, datetime]:
    """The last complete hourly/daily/weekly period ending at or before end, aligned in UTC."""
    until = end.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if period != "hourly":
        until = until.replace(hour=0)
    if period == "weekly":
        until -= timedelta(days=until.weekday())  # back to Monday 00:00
    return until - PERIODS[period], until


def error_report_build(*, since: datetime, until: datetime) -> dict:
    """The report's figures for [since, until), JSON-serialisable.

    Both ends are truncated to the minute, the resolution of the statistics, so that counts and
    raw-row figures describe exactly the same attempts. No usernames and nothing secret: upstream
    messages were redacted when they were recorded.
    """
    since, until = _minute(since), _minute(until)
    stats = AttemptMinuteStat.objects.filter(minute__gte=since, minute__lt=until)
    errors = stats.exclude(outcome=SUCCESS)
    current = _totals(since, until)
    previous = _totals(since - (until - since), since)
    alerts = Alert.objects.filter(first_seen__gte=since, first_seen__lt=until).order_by(
        "first_seen", "id"
    )
    return {
        **current,
        "by_status_code": _breakdown(errors, "status_code"),
        "by_error_code": _breakdown(errors.exclude(error_code=""), "error_code"),
        "by_outcome": _breakdown(stats, "outcome"),
        "by_workflow": [
            {"workflow_id": row["workflow_id"], "attempts": row["total"], "errors": row["failed"]}
            for row in stats.values("workflow_id")
            .annotate(
                total=Sum("attempts"), failed=Sum("attempts", filter=~Q(outcome=SUCCESS), default=0)
            )
            .order_by("-total", "workflow_id")
        ],
        "top_error_messages": _top_messages(since, until),
        "latency_ms": latency_percentiles(since, until),
        "minutes_not_aggregated": minutes_pending(since=since, until=until),
        "alerts_fired": alerts.count(),
        "alerts": [
            {**alert, "first_seen": alert["first_seen"].isoformat()}
            for alert in alerts.values(*ALERT_FIELDS, "first_seen")[:MAX_ALERTS_LISTED]
        ],
        "previous": previous,
        "change": {
            key: _change(current[key], previous[key])
            for key in ("attempts", "errors", "success_rate")
        },
    }


def _minute(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def _totals(since: datetime, until: datetime) -> dict:
    totals = AttemptMinuteStat.objects.filter(minute__gte=since, minute__lt=until).aggregate(
        total=Sum("attempts", default=0),
        succeeded=Sum("attempts", filter=Q(outcome=SUCCESS), default=0),
    )
    attempts, successes = totals["total"], totals["succeeded"]
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "attempts": attempts,
        "successes": successes,
        "errors": attempts - successes,
        "success_rate": round(successes / attempts, 4) if attempts else None,
    }


def _breakdown(stats, key: str) -> list[dict]:
    return list(stats.values(key).annotate(attempts=Sum("attempts")).order_by("-attempts", key))


def _change(current, previous) -> dict:
    """Absolute and relative change; relative is None when there is nothing to compare with."""
    if current is None or previous is None:
        return {"absolute": None, "relative": None}
    absolute = round(current - previous, 4)
    return {"absolute": absolute, "relative": round(absolute / previous, 4) if previous else None}


def _top_messages(since: datetime, until: datetime) -> list[dict]:
    rows = (
        SessionAttempt.objects.filter(created_at__gte=since, created_at__lt=until)
        .exclude(outcome=SUCCESS)
        .exclude(error_message="")
        .values("error_message")
        .annotate(count=Sum("requests"))
        .order_by("-count", "error_message")[:TOP_MESSAGES]
    )
    return [{"message": row["error_message"], "count": row["count"]} for row in rows]


def latency_percentiles(since: datetime, until: datetime, *, latest: int | None = None) -> dict:
    """p50 and p95 of upstream latency, interpolated like PostgreSQL's percentile_cont.

    latest caps the work for a page that must answer quickly: only the newest `latest` timed
    attempts of the period count, read backwards along the created_at index.
    """
    timed = SessionAttempt.objects.filter(
        created_at__gte=since, created_at__lt=until, latency_ms__isnull=False
    )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # LIMIT NULL is no limit.
            cursor.execute(
                "SELECT COUNT(*), percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP"
                " (ORDER BY latency_ms) FROM (SELECT latency_ms FROM audit_sessionattempt"
                " WHERE created_at >= %s AND created_at < %s AND latency_ms IS NOT NULL"
                " ORDER BY created_at DESC LIMIT %s) AS timed",
                [since, until, latest],
            )
            samples, values = cursor.fetchone()
        p50, p95 = values or (None, None)
    else:
        if latest is not None:
            timed = SessionAttempt.objects.filter(
                pk__in=timed.order_by("-created_at").values("pk")[:latest]
            )
        # No percentile function in SQLite: read only the one or two ordered values around each
        # rank (LIMIT/OFFSET), never the whole period.
        samples = timed.count()
        p50, p95 = (_nth_interpolated(timed, samples, q) for q in (0.5, 0.95))
    return {
        "samples": samples,
        "p50": None if p50 is None else round(p50, 1),
        "p95": None if p95 is None else round(p95, 1),
    }


def _nth_interpolated(timed, samples: int, fraction: float) -> float | None:
    if not samples:
        return None
    rank = fraction * (samples - 1)
    low = int(rank)
    values = list(timed.order_by("latency_ms").values_list("latency_ms", flat=True)[low : low + 2])
    upper = values[1] if len(values) > 1 else values[0]
    return values[0] + (rank - low) * (upper - values[0])


def _percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.2f}%"


def _delta(change: dict, *, points: bool = False) -> str:
    if change["absolute"] is None:
        return "no previous figure"
    if points:
        return f"{change['absolute'] * 100:+.2f} points on the previous period"
    relative = "" if change["relative"] is None else f", {change['relative'] * 100:+.1f}%"
    return f"{change['absolute']:+,}{relative} on the previous period"


def _table(title: str, rows: list[tuple[str, str]]) -> list[str]:
    lines = ["", title]
    if not rows:
        return [*lines, "  (none)"]
    width = max(len(label) for label, _ in rows)
    return [*lines, *(f"  {label:<{width}}  {value}" for label, value in rows)]


def error_report_render_text(data: dict, *, admin_url: str = "") -> str:
    """The report as plain text, as emailed."""
    since = datetime.fromisoformat(data["since"])
    until = datetime.fromisoformat(data["until"])
    latency = data["latency_ms"]
    change = data["change"]
    lines = [
        "ChatKit session broker: error report",
        f"Period: {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC",
        "",
        f"Attempts:     {data['attempts']:,} ({_delta(change['attempts'])})",
        f"Success rate: {_percent(data['success_rate'])} "
        f"({_delta(change['success_rate'], points=True)})",
        f"Errors:       {data['errors']:,} ({_delta(change['errors'])})",
        "Upstream latency: "
        + (
            f"p50 {latency['p50']:,} ms, p95 {latency['p95']:,} ms "
            f"({latency['samples']:,} timed attempts)"
            if latency["samples"]
            else "no timed attempts (or raw rows already pruned)"
        ),
    ]
    lines += _table(
        "Errors by upstream status (0: no answer)",
        [(str(row["status_code"]), f"{row['attempts']:,}") for row in data["by_status_code"]],
    )
    lines += _table(
        "Errors by upstream error code",
        [(row["error_code"], f"{row['attempts']:,}") for row in data["by_error_code"]],
    )
    lines += _table(
        "Attempts by outcome",
        [(row["outcome"], f"{row['attempts']:,}") for row in data["by_outcome"]],
    )
    lines += _table(
        "Attempts by workflow",
        [
            (
                row["workflow_id"] or "(none)",
                f"{row['attempts']:,} ({row['errors']:,} error{'' if row['errors'] == 1 else 's'})",
            )
            for row in data["by_workflow"]
        ],
    )
    lines += _table(
        "Most frequent upstream error messages",
        [(f"{row['count']:,}x", row["message"]) for row in data["top_error_messages"]],
    )
    lines += _table(
        f"Alerts fired: {data['alerts_fired']:,}",
        [
            (
                f"{alert['severity']} {alert['rule']}",
                f"status {alert['status_code'] or '-'}, workflow {alert['workflow_id'] or '-'}, "
                f"{alert['count']:,} attempts, {alert['state']}, first seen "
                f"{datetime.fromisoformat(alert['first_seen']):%Y-%m-%d %H:%M} UTC",
            )
            for alert in data["alerts"]
        ],
    )
    if data.get("minutes_not_aggregated"):
        lines += ["", MINUTES_PENDING_NOTE.format(data["minutes_not_aggregated"])]
    if admin_url:
        lines += ["", f"In the admin: {admin_url}"]
    return "\n".join(lines) + "\n"


def error_report_create_and_send(*, period_end: datetime | None = None) -> ErrorReport:
    """Build, store and email the report of the last complete ERROR_REPORT_PERIOD.

    The report (figures and text) is built completely before anything is stored, so a failure
    while building leaves an earlier copy of the same period as it was. Idempotent: the report
    is keyed by its period, and the email goes out only while emailed_at is empty, under a row
    lock, so two tasks running at once still send one email.
    """
    since, until = error_report_period(
        period=settings.ERROR_REPORT_PERIOD, end=period_end or timezone.now()
    )
    data = error_report_build(since=since, until=until)
    text = error_report_render_text(data, admin_url=error_report_admin_url(since))
    report, _ = ErrorReport.objects.update_or_create(
        period_start=since, period_end=until, defaults={"data": data, "text": text}
    )
    if settings.ALERT_EMAIL_TO and report.emailed_at is None:
        # Due now; if this process dies before the email goes out, the minute sweep sends it.
        ErrorReport.objects.filter(pk=report.pk, email_retry_at__isnull=True).update(
            email_retry_at=timezone.now()
        )
        error_report_email(report_id=report.pk)
        report.refresh_from_db()
    return report


def error_report_admin_url(period_start: datetime) -> str:
    """The admin list narrowed to this period's report: a link that exists before the row."""
    base = settings.ALERT_ADMIN_BASE_URL.rstrip("/")
    query = urlencode({"period_start": period_start.isoformat()})
    return f"{base}{reverse('admin:audit_errorreport_changelist')}?{query}"


def error_report_email(*, report_id: int) -> bool:
    """Email a stored report unless it was already sent; True if this call sent it.

    The row lock makes two callers (the scheduled task and the sweep, say) send one email. A
    failure is recorded on the row with the time of the next try, which the minute sweep honours:
    1, 2, 4 … minutes apart, at most an hour, for EMAIL_RETRY_FOR after the report was built.
    """
    with transaction.atomic():
        report = ErrorReport.objects.select_for_update().get(pk=report_id)
        if report.emailed_at is not None:
            return False
        report.email_attempts += 1
        try:
            _send(report)
        except Exception as exc:  # noqa: BLE001 - SMTP, DNS, socket: all retried alike
            report.email_error = f"{type(exc).__name__}: {exc}"[:2000]
            report.email_retry_at = timezone.now() + email_retry_delay(report.email_attempts)
            logger.warning(
                "Could not email error report %s (try %d): %s; next try at %s.",
                report.pk,
                report.email_attempts,
                report.email_error,
                report.email_retry_at.isoformat(),
            )
        else:
            report.emailed_at = timezone.now()
            report.email_retry_at = None
            report.email_error = ""
            logger.info(
                "Emailed error report %s to %d addresses.", report.pk, len(settings.ALERT_EMAIL_TO)
            )
        report.save(update_fields=["emailed_at", "email_attempts", "email_retry_at", "email_error"])
    return report.emailed_at is not None


def email_retry_delay(attempts: int) -> timedelta:
    """After the nth failed try: 1, 2, 4, 8 … minutes, capped at an hour."""
    return timedelta(minutes=min(2 ** (attempts - 1), 60))


def error_reports_email_due() -> int:
    """Send reports whose email is due (first try lost, or a retry); returns how many went out."""
    if not settings.ALERT_EMAIL_TO:
        return 0
    now = timezone.now()
    due = ErrorReport.objects.filter(
        emailed_at__isnull=True, email_retry_at__lte=now, created_at__gte=now - EMAIL_RETRY_FOR
    ).values_list("pk", flat=True)
    return sum(error_report_email(report_id=pk) for pk in list(due))


def _send(report: ErrorReport) -> None:
    data = report.data
    subject = (
        f"ChatKit broker error report {report.period_start:%Y-%m-%d %H:%M} UTC: "
        f"{data['errors']:,} errors, success rate {_percent(data['success_rate'])}"
    )
    # An explicit timeout: Django's SMTP backend waits forever by default.
    connection_ = mail.get_connection(timeout=settings.EMAIL_TIMEOUT or 30)
    mail.send_mail(
        subject,
        report.text,
        settings.DEFAULT_FROM_EMAIL,
        settings.ALERT_EMAIL_TO,
        connection=connection_,
    )
