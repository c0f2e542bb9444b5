"""The --since/--until options shared by the reporting commands."""

from datetime import UTC, datetime, timedelta

from django.core.management.base import CommandError
from django.utils import timezone


def parse_moment(option: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(
            f"{option} {value!r} is not an ISO 8601 date or date and time, "
            "e.g. 2026-01-31 or 2026-01-31T14:00:00Z."
        ) from None
    # A date or time without an offset means UTC, the time zone of every stored timestamp.
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)


def period_parse(
    since: str | None, until: str | None, *, span: timedelta
) -> tuple[datetime, datetime]:
    """[since, until) from the options, rounded down to the minute like the statistics.

    Defaults: until the end of the current minute (so the latest attempts count), since `span`
    before until. A period that rounds to nothing (both ends inside one minute) is refused
    rather than reported as empty.
    """
    next_minute = timezone.now().replace(second=0, microsecond=0) + timedelta(minutes=1)
    until_at = parse_moment("--until", until) or next_minute
    since_at = parse_moment("--since", since)
    if since_at is None:
        try:
            since_at = until_at - span
        except OverflowError:
            raise CommandError(
                f"--until {until} is out of range: the default period starts {span} earlier, "
                "before the year 1. Give --since too."
            ) from None
    if since_at >= until_at:
        raise CommandError("--since must be earlier than --until.")
    since_at, until_at = (
        moment.replace(second=0, microsecond=0) for moment in (since_at, until_at)
    )
    if since_at == until_at:
        raise CommandError(
            "The period lies inside one minute, and figures are kept per minute: give a period "
            "that spans at least one whole minute (both ends are rounded down to the minute)."
        )
    return since_at, until_at
