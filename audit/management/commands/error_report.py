"""`manage.py error_report`: print the error report for any period, on demand."""

import json
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError

from audit.management.periods import period_parse
from audit.reports import error_report_build, error_report_render_text

DEFAULT_SPAN = timedelta(hours=24)


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
        since_at, until_at = period_parse(since, until, span=DEFAULT_SPAN)
        try:
            data = error_report_build(since=since_at, until=until_at)
        except OverflowError:
            raise CommandError(
                f"--since {since_at:%Y-%m-%d} is out of range: the report compares the period "
                "with the one before it, which would start before the year 1."
            ) from None
        if format == "json":
            self.stdout.write(json.dumps(data, indent=2))
        else:
            self.stdout.write(error_report_render_text(data), ending="")
