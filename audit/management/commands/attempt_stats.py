"""`manage.py attempt_stats`: the per-minute statistics as a minute, hourly or daily series."""

import json
from datetime import timedelta

from django.core.management.base import BaseCommand

from audit.management.periods import period_parse
from audit.reports import MINUTES_PENDING_NOTE
from audit.stats import minutes_pending, stats_series

COLUMNS = ("bucket", "workflow_id", "outcome", "status_code", "error_code", "attempts")


class Command(BaseCommand):
    help = (
        "Print attempt counts per minute, hour or day and per workflow, outcome, upstream status "
        "and upstream error code, from the statistics (which outlive pruned audit rows). "
        "Default: the last 24 hours, by hour. Distinct users cannot be added across minutes, so "
        "hour and day rows show the peak distinct users in any one minute. Times are ISO 8601 and "
        "UTC unless they carry an offset; they are rounded down to the minute."
    )

    def add_arguments(self, parser):
        parser.add_argument("--since", metavar="ISO", help="Start, inclusive (default: 24 h ago).")
        parser.add_argument("--until", metavar="ISO", help="End, exclusive (default: now).")
        parser.add_argument("--granularity", choices=["minute", "hour", "day"], default="hour")
        parser.add_argument("--status-code", type=int, help="Only this upstream status (0: none).")
        parser.add_argument("--workflow", help="Only this workflow id.")
        parser.add_argument("--format", choices=["text", "json"], default="text")

    def handle(self, *args, **options):
        since, until = period_parse(options["since"], options["until"], span=timedelta(hours=24))
        filters = {}
        if options["status_code"] is not None:
            filters["status_code"] = options["status_code"]
        if options["workflow"]:
            filters["workflow_id"] = options["workflow"]
        pending = minutes_pending(since=since, until=until)
        if pending:
            self.stderr.write(MINUTES_PENDING_NOTE.format(pending))
        rows = stats_series(since=since, until=until, granularity=options["granularity"], **filters)
        if options["format"] == "json":
            self.stdout.write(json.dumps(rows, indent=2, default=str))
            return
        self.stdout.write("  ".join(f"{name:<16}" for name in (*COLUMNS, "peak users/min")))
        for row in rows:
            cells = [row["bucket"].strftime("%Y-%m-%d %H:%M"), *(row[c] for c in COLUMNS[1:])]
            cells.append(row["peak_users_per_minute"])
            self.stdout.write("  ".join(f"{str(cell) or '-':<16}" for cell in cells))
        if not rows:
            self.stdout.write("No attempts in this period.")
