"""CSV export of a filtered audit list: streamed, bounded, and itself recorded in the admin log."""

import csv
import io
from collections.abc import Iterator

from django.conf import settings
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.http import StreamingHttpResponse
from django.utils import timezone

from audit.models import SessionAttempt

# Every recorded column but refusal_key, a keyed hash that only the throttle can use. None of
# them holds a secret: the audit row never stores the key or a client secret.
EXPORT_FIELDS = [
    field.attname for field in SessionAttempt._meta.concrete_fields if field.name != "refusal_key"
]
# Rows fetched per round trip from the server-side cursor, and written per chunk of the stream.
CHUNK_ROWS = 1000
# A spreadsheet runs a cell that starts with one of these as a formula; error messages and
# workflow names carry text a caller chose.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value) -> object:
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def attempts_csv_response(request, queryset, *, filters: str) -> StreamingHttpResponse:
    """The newest AUDIT_EXPORT_MAX_ROWS rows of `queryset`, in its order, as a CSV stream."""
    limit = settings.AUDIT_EXPORT_MAX_ROWS
    rows = queryset.values_list(*EXPORT_FIELDS)[:limit]
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response = StreamingHttpResponse(
        _lines(rows, request=request, filters=filters, limit=limit),
        content_type="text/csv; charset=utf-8",
    )
    response["Content-Disposition"] = f'attachment; filename="session-attempts-{stamp}.csv"'
    response["Cache-Control"] = "no-store"
    return response


def _lines(rows, *, request, filters: str, limit: int) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_FIELDS)
    sent = 0
    try:
        # iterator(): a server-side cursor on PostgreSQL, so memory stays one chunk deep.
        for row in rows.iterator(chunk_size=CHUNK_ROWS):
            writer.writerow([cell(value) for value in row])
            sent += 1
            if sent % CHUNK_ROWS == 1:  # the first row goes out at once, then whole chunks
                yield _drained(buffer)
        yield _drained(buffer)
    finally:
        # Also when the download is abandoned: Django closes this generator then.
        _export_log(request, sent=sent, limit=limit, filters=filters)


def _drained(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


def _export_log(request, *, sent: int, limit: int, filters: str) -> None:
    # Django's admin log knows additions, changes and deletions; an export is recorded as a
    # "change" entry of the model with no object, and its message says what it was.
    capped = " (the limit)" if sent >= limit else ""
    LogEntry.objects.create(
        user_id=request.user.pk,
        content_type=ContentType.objects.get_for_model(SessionAttempt),
        object_id=None,
        object_repr="CSV export",
        action_flag=CHANGE,
        change_message=f"Exported {sent} session attempts as CSV{capped}; "
        f"filters: {filters or 'none'}",
    )
