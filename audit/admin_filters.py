"""List filters for tables of millions of rows: fixed choices and index ranges, never DISTINCT.

Django's defaults ask the table what to offer: `date_hierarchy` runs SELECT DISTINCT
DATE_TRUNC(...) and a filter on a field without choices SELECT DISTINCT over the column, both
whole-table scans on every page view. These filters offer a fixed list instead and filter with
conditions the indexes answer.
"""

from datetime import UTC, datetime, time, timedelta

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

# The upstream answers an operator asks about: what the error mapping tells apart
# (README, "The API"), and success.
UPSTREAM_STATUSES = (200, 400, 401, 403, 404, 409, 422, 429, 500, 502, 503, 504)

PRESETS = {
    "1h": ("Last hour", timedelta(hours=1)),
    "24h": ("Last 24 hours", timedelta(hours=24)),
    "7d": ("Last 7 days", timedelta(days=7)),
    "30d": ("Last 30 days", timedelta(days=30)),
}


def _last(params: dict, key: str) -> str | None:
    values = params.get(key)
    return values[-1] if values else None


def moment_parse(text: str, *, name: str) -> datetime:
    """An ISO date or date-time; naive ones are UTC (the admin shows UTC)."""
    try:
        moment = parse_datetime(text)
        if moment is None and (day := parse_date(text)) is not None:
            moment = datetime.combine(day, time.min)
    except ValueError:
        moment = None
    if moment is None:
        raise IncorrectLookupParameters(f"{name}: not a date or time: {text!r}")
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)


class DateRangeFilter(admin.FieldListFilter):
    """Presets relative to now (last hour … 30 days) and a custom from/to, all UTC.

    Everything becomes `field >= start AND field < end`, a range scan of the field's index.
    The custom bounds are the `__gte` / `__lt` parameters the alert notifications' links
    already carry.
    """

    template = "admin/audit/date_range_filter.html"

    def __init__(self, field, request, params, model, model_admin, field_path):
        self.kwarg_last = f"{field_path}__last"
        self.kwarg_since = f"{field_path}__gte"
        self.kwarg_until = f"{field_path}__lt"
        self.last = _last(params, self.kwarg_last)
        self.since = _last(params, self.kwarg_since)
        self.until = _last(params, self.kwarg_until)
        super().__init__(field, request, params, model, model_admin, field_path)
        self.title = f"{self.title} (UTC)"

    def expected_parameters(self) -> list[str]:
        return [self.kwarg_last, self.kwarg_since, self.kwarg_until]

    def bounds(self) -> tuple[datetime | None, datetime | None]:
        since = until = None
        if self.last is not None:
            if self.last not in PRESETS:
                raise IncorrectLookupParameters(f"{self.kwarg_last}: one of {list(PRESETS)}")
            since = timezone.now() - PRESETS[self.last][1]
        if self.since:
            since = max(filter(None, [since, moment_parse(self.since, name=self.kwarg_since)]))
        if self.until:
            until = moment_parse(self.until, name=self.kwarg_until)
        return since, until

    def queryset(self, request, queryset):
        since, until = self.bounds()
        if since is not None:
            queryset = queryset.filter(**{self.kwarg_since: since})
        if until is not None:
            queryset = queryset.filter(**{self.kwarg_until: until})
        return queryset

    def choices(self, changelist):
        own = self.expected_parameters()
        yield {
            "selected": not (self.last or self.since or self.until),
            "query_string": changelist.get_query_string(remove=own),
            "display": "Any time",
        }
        for value, (title, _) in PRESETS.items():
            yield {
                "selected": self.last == value and not (self.since or self.until),
                "query_string": changelist.get_query_string({self.kwarg_last: value}, own),
                "display": title,
            }
        # For the custom range form: the other parameters travel as hidden fields.
        self.form_hidden = [
            (key, value) for key, value in changelist.params.items() if key not in (*own, "p")
        ]

    def form_value(self, text: str | None) -> str:
        """A bound as <input type="datetime-local"> shows it: minutes, UTC."""
        if not text:
            return ""
        try:
            return moment_parse(text, name="").astimezone(UTC).strftime("%Y-%m-%dT%H:%M")
        except IncorrectLookupParameters:
            return ""

    def since_value(self) -> str:
        return self.form_value(self.since)

    def until_value(self) -> str:
        return self.form_value(self.until)


class AttemptDateFilter(DateRangeFilter):
    """The date range, plus keyset paging: `before_id` lists the rows after that one.

    The list is ordered newest first by (created_at, id), so "older than row N" is
    created_at <= N's AND (created_at < N's OR id < N): a range on the created_at index,
    however deep, where page numbers would be an OFFSET over millions of rows.
    """

    kwarg_before = "before_id"

    def __init__(self, field, request, params, model, model_admin, field_path):
        self.before_id = _last(params, self.kwarg_before)
        super().__init__(field, request, params, model, model_admin, field_path)

    def expected_parameters(self) -> list[str]:
        return [*super().expected_parameters(), self.kwarg_before]

    def queryset(self, request, queryset):
        queryset = super().queryset(request, queryset)
        if self.before_id is None:
            return queryset
        if not self.before_id.isdigit():
            raise IncorrectLookupParameters(f"{self.kwarg_before}: a row id")
        pk = int(self.before_id)
        moment = self.field.model.objects.filter(pk=pk).values_list("created_at", flat=True)
        moment = moment.first()
        if moment is None:  # pruned: so is everything older
            return queryset.none()
        older = queryset.filter(created_at__lte=moment)
        return older.exclude(created_at=moment, pk__gte=pk)

    def choices(self, changelist):
        yield from super().choices(changelist)
        if self.before_id is not None:
            yield {
                "selected": True,
                "query_string": changelist.get_query_string(remove=[self.kwarg_before]),
                "display": f"Older than attempt {self.before_id} (clear)",
            }


class StatusCodeFilter(admin.FieldListFilter):
    """Upstream status from a fixed list, plus "none" (no answer): no SELECT DISTINCT.

    The parameter is `<field>__exact`, as Django's own choice filters and the alert
    notifications' links use; a status outside the list still filters when typed in the URL.
    """

    # A column without an answer holds NULL (audit rows) or 0 (statistics).
    none_value: int | None = None

    def __init__(self, field, request, params, model, model_admin, field_path):
        self.kwarg_exact = f"{field_path}__exact"
        self.kwarg_isnull = f"{field_path}__isnull"
        self.exact = params.get(self.kwarg_exact) or []
        self.isnull = _last(params, self.kwarg_isnull)
        super().__init__(field, request, params, model, model_admin, field_path)

    def expected_parameters(self) -> list[str]:
        return [self.kwarg_exact, self.kwarg_isnull]

    def choices(self, changelist):
        own = self.expected_parameters()
        yield {
            "selected": not self.exact and self.isnull is None,
            "query_string": changelist.get_query_string(remove=own),
            "display": "All",
        }
        for code in UPSTREAM_STATUSES:
            yield {
                "selected": str(code) in self.exact,
                "query_string": changelist.get_query_string({self.kwarg_exact: code}, own),
                "display": str(code),
            }
        if self.none_value is None:
            none = {"selected": self.isnull is not None, "params": {self.kwarg_isnull: "True"}}
        else:
            none = {
                "selected": str(self.none_value) in self.exact,
                "params": {self.kwarg_exact: self.none_value},
            }
        yield {
            "selected": none["selected"],
            "query_string": changelist.get_query_string(none["params"], own),
            "display": "none (no answer)",
        }


class StatStatusCodeFilter(StatusCodeFilter):
    none_value = 0
