"""`manage.py error_report`: print the error report for any period, on demand."""

import json
from datetime import UTC, datetime, timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from audit.reports import error_report_build, error_report_render_text

DEFAULT_SPAN = timedelta(hours=24)


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


class Command(BaseCommand):
    help = (
        "Print the error report (attempts, success rate, errors by upstream status, error code, "
        "outcome and workflow, the most frequent upstream error messages, latency p50/p95, "
        "alerts fired, and the change against the previous period of the same length) for any "
        "period. Default: the last 24 hours. Times are ISO 8601 and UTC unless they carry an "
        "offset; they are rounded down to the minute. Nothing is stored or emailed: the "
        "scheduled report does that."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--since",
            metavar="ISO",
            help="Start of the period, inclusive (default: 24 hours before --until).",
        )
        parser.add_argument(
            "--until", metavar="ISO", help="End of the period, exclusive (default: now)."
        )
        parser.add_argument(
            "--format",
            choices=["text", "json"],
            default="text",
            help="text (as emailed, the default) or json (every figure, for scripts).",
        )

    def handle(self, *args, since: str | None, until: str | None, format: str, **options):
        until_at = parse_moment("--until", until) or timezone.now()
        since_at = parse_moment("--since", since) or until_at - DEFAULT_SPAN
        if since_at >= until_at:
            raise CommandError("--since must be earlier than --until.")
        data = error_report_build(since=since_at, until=until_at)
        if format == "json":
            self.stdout.write(json.dumps(data, indent=2))
        else:
            self.stdout.write(error_report_render_text(data), ending="")
