"""An admin paginator that never makes a page wait on counting a huge table."""

import json

from django.core.paginator import Paginator
from django.db import OperationalError, connections, transaction
from django.utils.functional import cached_property

# Below this many rows an exact count is cheap enough on any database.
EXACT_COUNT_BELOW = 100_000
COUNT_TIMEOUT_MS = 300


class EstimatedCountPaginator(Paginator):
    """Exact counts for small results; on PostgreSQL, estimates for large ones.

    An unfiltered changelist uses the table statistics (pg_class.reltuples); a filtered one gets
    an exact count if it finishes within COUNT_TIMEOUT_MS, else the planner's row estimate.
    """

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        connection = connections[queryset.db]
        if connection.vendor != "postgresql":
            return super().count
        if not queryset.query.where:
            estimate = self._table_estimate(connection, queryset.model._meta.db_table)
            return estimate if estimate >= EXACT_COUNT_BELOW else super().count
        try:
            with transaction.atomic(using=queryset.db), connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL statement_timeout = {COUNT_TIMEOUT_MS}")
                return self._filtered_count(queryset)
        except OperationalError:
            return self._planner_estimate(connection, queryset)

    def _filtered_count(self, queryset) -> int:
        return queryset.count()

    @staticmethod
    def _table_estimate(connection, table: str) -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = %s", [table])
            row = cursor.fetchone()
        return max(row[0], 0) if row else 0

    @staticmethod
    def _planner_estimate(connection, queryset) -> int:
        sql, params = queryset.values("pk").query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
            plan = cursor.fetchone()[0]
        plan = json.loads(plan) if isinstance(plan, str) else plan
        return int(plan[0]["Plan"]["Plan Rows"])


class CappedPaginator(EstimatedCountPaginator):
    """At most MAX_PAGES pages, and a filtered count that stops at the rows those pages hold.

    Page 9,000 is an OFFSET that reads and discards 900,000 rows; past the cap an operator
    narrows the date range or follows the keyset link ("older") instead. A filtered count then
    never needs to go beyond the cap either: counting 10,001 rows is bounded work, counting
    every success of 90 days is not.
    """

    MAX_PAGES = 100

    def _filtered_count(self, queryset) -> int:
        return queryset[: self.row_cap + 1].count()

    @property
    def row_cap(self) -> int:
        return self.MAX_PAGES * self.per_page

    @cached_property
    def num_pages(self) -> int:
        # Paginator's own figure (cached under the same name, then replaced by this one).
        return min(super().num_pages, self.MAX_PAGES)

    @property
    def capped(self) -> bool:
        """More rows match than the pages show (or the count is an estimate of more)."""
        return self.count > self.row_cap

    @property
    def count_label(self) -> str:
        if self.capped and self.object_list.query.where:
            return f"more than {self.row_cap:,}"
        estimated = connections[self.object_list.db].vendor == "postgresql"
        if estimated and self.count >= EXACT_COUNT_BELOW:  # the table statistics' figure
            return f"about {self.count:,}"
        return f"{self.count:,}"
