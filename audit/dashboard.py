"""The figures of the admin's front page, read from the per-minute statistics.

Every query here is bounded whatever the size of the audit table: the traffic figures sum
AttemptMinuteStat rows of one window (at most 7 days of minutes, found by the minute-first
unique index), and the audit table is read only along its created_at index: one minute per
sample message, and at most LATENCY_SAMPLE rows for the latency percentiles.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import F, Max, Q, Sum
from django.db.models.functions import TruncHour

from audit.models import Alert, AttemptMinuteStat, ErrorReport, SessionAttempt
from audit.reports import latency_percentiles

SUCCESS = SessionAttempt.Outcome.SUCCESS
TOP_ERRORS = 5
FIRING_ALERTS_SHOWN = 20
# Percentiles of the newest 100,000 timed attempts are as good as of all of them for an
# operator, and keep the 7-day window's query at a fixed cost (docs/benchmarks.md).
LATENCY_SAMPLE = 100_000


@dataclass(frozen=True)
class Window:
    key: str
    label: str
    span: timedelta
    bucket: timedelta

    def bounds(self, now: datetime) -> tuple[datetime, datetime]:
        """[since, until): ends after the bucket holding now, so buckets align to the clock."""
        bucket_seconds = int(self.bucket.total_seconds())
        epoch = int(now.timestamp())
        until = now + timedelta(seconds=bucket_seconds - epoch % bucket_seconds)
        until = until.replace(microsecond=0)
        return until - self.span, until


WINDOWS = {
    window.key: window
    for window in (
        Window("1h", "Last hour", timedelta(hours=1), timedelta(minutes=1)),
        Window("24h", "Last 24 hours", timedelta(hours=24), timedelta(minutes=15)),
        Window("7d", "Last 7 days", timedelta(days=7), timedelta(hours=1)),
    )
}
DEFAULT_WINDOW = WINDOWS["24h"]


@dataclass(frozen=True)
class Bucket:
    start: datetime
    successes: int
    errors: int


@dataclass(frozen=True)
class ErrorGroup:
    outcome: str
    status_code: int  # 0: no upstream answer
    error_code: str
    attempts: int
    last_minute: datetime


def traffic(*, since: datetime, until: datetime, bucket: timedelta) -> dict:
    """Totals, breakdowns, a time series and the most frequent errors of [since, until)."""
    stats = AttemptMinuteStat.objects.filter(minute__gte=since, minute__lt=until).order_by()
    groups = list(
        stats.values("outcome", "status_code", "error_code").annotate(
            total=Sum("attempts"), last_minute=Max("minute")
        )
    )
    by_outcome: dict[str, int] = {}
    by_status: dict[int, int] = {}
    for group in groups:
        by_outcome[group["outcome"]] = by_outcome.get(group["outcome"], 0) + group["total"]
        by_status[group["status_code"]] = by_status.get(group["status_code"], 0) + group["total"]
    attempts = sum(by_outcome.values())
    successes = by_outcome.get(SUCCESS, 0)
    errors = sorted(
        (
            ErrorGroup(
                g["outcome"], g["status_code"], g["error_code"], g["total"], g["last_minute"]
            )
            for g in groups
            if g["outcome"] != SUCCESS
        ),
        key=lambda e: (-e.attempts, e.outcome, e.status_code, e.error_code),
    )
    return {
        "attempts": attempts,
        "successes": successes,
        "errors": attempts - successes,
        "success_rate": successes / attempts if attempts else None,
        "by_outcome": sorted(by_outcome.items(), key=lambda item: (-item[1], item[0])),
        "by_status": sorted(by_status.items(), key=lambda item: (-item[1], item[0])),
        "top_errors": errors[:TOP_ERRORS],
        "series": _series(stats, since=since, until=until, bucket=bucket),
    }


def _series(stats, *, since: datetime, until: datetime, bucket: timedelta) -> list[Bucket]:
    # Hourly buckets are summed by the database (168 rows for a week, not 10,080); finer ones
    # from per-minute sums, at most a day of them.
    column = TruncHour("minute") if bucket >= timedelta(hours=1) else F("minute")
    rows = (
        stats.annotate(at=column)
        .values("at")
        .annotate(
            ok=Sum("attempts", filter=Q(outcome=SUCCESS), default=0),
            failed=Sum("attempts", filter=~Q(outcome=SUCCESS), default=0),
        )
    )
    count = int((until - since) / bucket)
    successes, errors = [0] * count, [0] * count
    for row in rows:
        index = int((row["at"] - since) / bucket)
        if 0 <= index < count:
            successes[index] += row["ok"]
            errors[index] += row["failed"]
    return [Bucket(since + i * bucket, successes[i], errors[i]) for i in range(count)]


def error_sample(error: ErrorGroup) -> str:
    """The upstream message of the newest attempt of this kind: one indexed minute of rows."""
    status = (
        {"status_code__isnull": True}
        if error.status_code == 0
        else {"status_code": error.status_code}
    )
    row = (
        SessionAttempt.objects.filter(
            created_at__gte=error.last_minute,
            created_at__lt=error.last_minute + timedelta(minutes=1),
            outcome=error.outcome,
            error_code=error.error_code,
            **status,
        )
        .exclude(error_message="")
        .order_by("-created_at")
        .values_list("error_message", flat=True)
        .first()
    )
    return row or ""


def latency(*, since: datetime, until: datetime) -> dict:
    return {**latency_percentiles(since, until, latest=LATENCY_SAMPLE), "cap": LATENCY_SAMPLE}


def firing_alerts() -> list[Alert]:
    """Critical first, then the most recently active; one more than shown, to say "more"."""
    return list(
        Alert.objects.filter(state=Alert.State.FIRING).order_by("severity", "-last_seen", "-id")[
            : FIRING_ALERTS_SHOWN + 1
        ]
    )


def last_error_report() -> ErrorReport | None:
    return ErrorReport.objects.order_by("-period_start").defer("text").first()
