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
                return queryset.count()
        except OperationalError:
            return self._planner_estimate(connection, queryset)

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
