"""Deleting old audit rows in bounded batches, without touching the statistics."""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Min
from django.utils import timezone

from audit.models import PendingMinute, SessionAttempt
from audit.stats import aggregation_lock, attempt_stats_aggregate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneResult:
    cutoff: datetime
    """Rows created before this moment (UTC) were due."""
    deleted: int
    """Rows deleted; for a dry run, rows that would be deleted."""
    batches: int
    """Batch transactions that deleted something."""
    dry_run: bool
    kept: int = 0
    """Due rows left for the next run because a minute before them still awaits aggregation."""


def audit_prune(
    *, older_than_days: int, batch_size: int = 5000, dry_run: bool = False, now=None
) -> PruneResult:
    """Delete SessionAttempt rows older than older_than_days, batch_size rows per transaction.

    Short transactions keep locks, WAL and replication lag small while the service keeps
    writing; running it again deletes only what became due since. AttemptMinuteStat is never
    touched, so statistics outlive the raw rows.

    Pending minutes are folded first. If some minute older than the cutoff is still pending
    after that (a row arrived meanwhile), rows from that minute on are kept for the next run:
    the minute will be recomputed from the audit table, and recomputing it after deleting part
    of it would silently shrink the statistics. Each batch takes the aggregation lock, so no
    aggregation run interleaves with it.

    A dry run counts every due row (a real run aggregates before deleting) and writes nothing.
    """
    if older_than_days < 1:
        raise ValueError("older_than_days must be at least 1")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    try:
        cutoff = (now or timezone.now()) - timedelta(days=older_than_days)
    except OverflowError:
        raise ValueError(
            f"older_than_days {older_than_days} reaches back before the year 1"
        ) from None
    due = SessionAttempt.objects.filter(created_at__lt=cutoff)
    if dry_run:
        return PruneResult(cutoff=cutoff, deleted=due.count(), batches=0, dry_run=True)

    attempt_stats_aggregate()
    deleted = batches = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            aggregation_lock(cursor)
            pending = PendingMinute.objects.aggregate(oldest=Min("minute"))["oldest"]
            limit = min(cutoff, pending) if pending else cutoff
            # The oldest due ids, straight from the created_at index; LIMIT bounds the batch.
            batch = (
                SessionAttempt.objects.filter(created_at__lt=limit)
                .order_by("created_at")
                .values("id")[:batch_size]
            )
            sql, params = batch.query.sql_with_params()
            # Raw DELETE by id: QuerySet.delete() would load every row to run its cascade
            # collector, and nothing refers to an audit row.
            # `sql` is Django's compilation of the queryset above, its values bound as params.
            cursor.execute(f"DELETE FROM audit_sessionattempt WHERE id IN ({sql})", params)  # noqa: S608
            count = cursor.rowcount
        if count:
            deleted += count
            batches += 1
        if count < batch_size:
            break
    kept = due.count()
    logger.info(
        "Pruned %d audit rows created before %s in %d batches (%d kept: awaiting aggregation).",
        deleted,
        cutoff.isoformat(),
        batches,
        kept,
    )
    return PruneResult(cutoff=cutoff, deleted=deleted, batches=batches, dry_run=False, kept=kept)
