"""`manage.py prune_audit`: delete old audit rows in small batches; statistics are kept."""

from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from audit.retention import audit_prune


class Command(BaseCommand):
    help = (
        "Delete session attempt audit rows older than N days, a few thousand rows per "
        "transaction so the service keeps running normally meanwhile. The per-minute statistics "
        "(and the error reports built from them) are kept. New rows are folded into the "
        "statistics first; rows whose minute still awaits that are left for the next run. "
        "Safe to run again at any time: it only deletes what is due. The scheduled task does "
        "the same every night with AUDIT_RETENTION_DAYS."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than-days",
            type=int,
            default=settings.AUDIT_RETENTION_DAYS,
            metavar="N",
            help=(
                "Delete rows created more than N days ago (at least 1; default "
                f"AUDIT_RETENTION_DAYS, now {settings.AUDIT_RETENTION_DAYS})."
            ),
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Only count the rows that would be deleted; change nothing.",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=5000,
            metavar="ROWS",
            help="Rows deleted per transaction (default 5000). Smaller means shorter locks.",
        )

    def handle(self, *args, older_than_days: int, dry_run: bool, batch_size: int, **options):
        if older_than_days < 1:
            raise CommandError("--older-than-days must be at least 1.")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        try:
            timezone.now() - timedelta(days=older_than_days)
        except OverflowError:
            raise CommandError(
                f"--older-than-days {older_than_days} reaches back before the year 1."
            ) from None
        result = audit_prune(
            older_than_days=older_than_days, batch_size=batch_size, dry_run=dry_run
        )
        cutoff = f"{result.cutoff:%Y-%m-%d %H:%M:%S} UTC"
        if result.dry_run:
            self.stdout.write(
                f"Dry run: would delete {result.deleted:,} audit rows created before {cutoff}. "
                "Nothing was changed."
            )
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"Deleted {result.deleted:,} audit rows created before {cutoff} "
                f"in {result.batches:,} batches of at most {batch_size:,}."
            )
        )
        if result.kept:
            self.stdout.write(
                f"Kept {result.kept:,} older rows whose minute still awaits aggregation; "
                "the next run deletes them."
            )
