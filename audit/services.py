import functools
import secrets
from datetime import datetime

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, models, transaction
from django.utils import timezone

from audit import writer
from audit.alerting.coalesce import alerts_evaluation_request
from audit.models import Heartbeat, PendingMinute, SessionAttempt
from redaction import clean_text

ERROR_MESSAGE_LIMIT = 2048
# Writers of one minute spread over this many PendingMinute rows (by database connection), so
# they do not all queue on one row lock.
PENDING_SLOTS = 16
_COLUMNS = [field for field in SessionAttempt._meta.concrete_fields if not field.primary_key]

# Audit rows and their minutes' PendingMinute marks in one statement, hence one round trip and
# one transaction of its own (autocommit): no BEGIN, no COMMIT, no savepoint. The mark is an
# upsert that bumps `writes`, never DO NOTHING: audit/models.py PendingMinute says why. Ids come
# from the sequence in VALUES order, so ORDER BY id lists them in the order the rows were given.
# A throttled refusal whose caller already has a row this minute counts itself in that row
# instead (and marks that row's minute). Sent with its values already bound (see _ROW), so a
# literal percent sign is written once.
_INSERT_POSTGRESQL = """
    WITH attempt AS (
        INSERT INTO audit_sessionattempt ({columns}) VALUES {{rows}} {conflict}
        RETURNING id, created_at, request_id
    ), pending AS (
        INSERT INTO audit_pendingminute (minute, slot, writes)
        SELECT date_trunc('minute', created_at, 'UTC'), pg_backend_pid() % {slots}, COUNT(*)
        FROM attempt GROUP BY 1
        ON CONFLICT (minute, slot)
        DO UPDATE SET writes = audit_pendingminute.writes + EXCLUDED.writes
    )
    SELECT {returned} FROM attempt ORDER BY id
"""


_COUNT_REFUSAL = """
    ON CONFLICT (refusal_key) WHERE NOT (refusal_key = '')
    DO UPDATE SET requests = audit_sessionattempt.requests + 1
"""

# One row's placeholders. Django has psycopg bind values on the client, and psycopg parses a
# statement's placeholders in Python, caching the result only for statements of up to 50
# parameters: a batch of three rows (69) was parsed afresh each time, about 85 µs a row. Each
# row is bound on its own through this one cached template instead, and the statement goes
# with its rows already in it: the same text psycopg would have sent.
_ROW = "(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"


# The functions from here to _writer_connect run on PostgreSQL only. Mutation runs use SQLite,
# so they are not mutated (# pragma: no mutate block); CI runs their tests on PostgreSQL.


@functools.cache
def _insert_template(*, refusal: bool = False) -> str:
    # pragma: no mutate block
    return _INSERT_POSTGRESQL.format(
        columns=", ".join(connection.ops.quote_name(field.column) for field in _COLUMNS),
        conflict=_COUNT_REFUSAL if refusal else "",
        # A refusal counted on an earlier row answers with that row's request id.
        returned="id, request_id" if refusal else "id",
        slots=PENDING_SLOTS,
    )


def _insert(cursor, attempts: list[SessionAttempt], *, refusal: bool) -> list[tuple]:
    # pragma: no mutate block
    rows = ", ".join(cursor.mogrify(_ROW, _params(attempt, cursor.db)) for attempt in attempts)
    cursor.execute(_insert_template(refusal=refusal).format(rows=rows))
    return cursor.fetchall()


def attempts_insert(attempts: list[SessionAttempt], using=connection) -> list[int]:
    """Insert rows (and mark their minutes) in one statement on PostgreSQL; their ids, in order."""
    # pragma: no mutate block
    with using.cursor() as cursor:
        return [attempt_id for (attempt_id,) in _insert(cursor, attempts, refusal=False)]


def _refusal_insert(attempt: SessionAttempt) -> None:
    """One refusal row, or a count on the row of its caller's earlier refusal this minute."""
    # pragma: no mutate block
    with connection.cursor() as cursor:
        [(attempt.pk, attempt.request_id)] = _insert(cursor, [attempt], refusal=True)


def _params(attempt: SessionAttempt, database) -> list:
    # pragma: no mutate block
    # `database` is the connection itself, not django.db.connection: every attribute looked up
    # through that proxy costs a thread-local lookup, about a third of this function's time.
    return [field.get_db_prep_save(getattr(attempt, field.attname), database) for field in _COLUMNS]


def _writer_connect():
    """The group-commit writer's connection: outside the pool (a leader must never wait for
    it), its statements cut off after writer.WAIT_SECONDS, shared by the leaders' threads."""
    # pragma: no mutate block
    wrapper = connections.create_connection(DEFAULT_DB_ALIAS)
    options = dict(wrapper.settings_dict["OPTIONS"])
    options.pop("pool", None)
    # After the settings' own limit, so it wins.
    limit = f"-c statement_timeout={int(writer.WAIT_SECONDS * 1000)}"
    options["options"] = f"{options.get('options', '')} {limit}".strip()
    wrapper.settings_dict = {**wrapper.settings_dict, "OPTIONS": options}
    wrapper.inc_thread_sharing()  # used by one leader at a time, on any thread
    wrapper.ensure_connection()
    return wrapper


# The process's group-commit writer (audit/writer.py), used when AUDIT_GROUP_COMMIT is on.
_writer = writer.GroupWriter(attempts_insert, _writer_connect)


def session_attempt_record(
    *,
    outcome: str,
    user_ref: str,
    anonymous: bool,
    user=None,
    kind: str = SessionAttempt.Kind.INITIAL,
    workflow_id: str = "",
    started_at: datetime | None = None,
    status_code: int | None = None,
    api_error_code: str = "",
    error_type: str | None = "",
    error_code: str | None = "",
    error_param: str | None = "",
    error_message: str | None = "",
    upstream_request_id: str | None = "",
    session_id: str = "",
    expires_at: datetime | None = None,
    attempts: int = 0,
    latency_ms: int | None = None,
    client_ip: str | None = None,
    refusal_key: str = "",
    request_id: str | None = None,
) -> SessionAttempt:
    """Write one audit row, committed before this returns, in a transaction of its own.

    Refuses to run inside someone else's transaction, whose rollback would silently erase the
    record of a failed attempt. Text longer than its column is cut to fit: the row is the
    record, and a 151-character username must not cost it. With a refusal_key (a throttled
    caller in one minute), the row of an earlier refusal with that key counts this one instead,
    and the attempt returned stands for that row. `request_id` is the row's opaque id when the
    caller chose it up front (request_id_new), so that its log lines could carry it.
    """
    logged_in = user is not None and user.is_authenticated
    attempt = SessionAttempt(
        outcome=outcome,
        kind=kind,
        user=user if logged_in else None,
        username=user.get_username() if logged_in else "",
        user_ref=user_ref,
        anonymous=anonymous,
        workflow_id=workflow_id,
        status_code=status_code,
        api_error_code=api_error_code,
        # Everything the upstream wrote is cleaned alike: one line, no key-shaped strings.
        error_type=_cleaned(error_type),
        error_code=_cleaned(error_code),
        error_param=_cleaned(error_param),
        error_message=_cleaned(error_message),
        upstream_request_id=_cleaned(upstream_request_id),
        session_id=session_id,
        expires_at=expires_at,
        attempts=attempts,
        latency_ms=latency_ms,
        client_ip=client_ip if settings.CHATKIT_AUDIT_CLIENT_IP else None,
        refusal_key=refusal_key,
        request_id=request_id or request_id_new(),
    )
    if started_at is not None:
        attempt.created_at = started_at
    for field in _COLUMNS:
        if isinstance(field, models.CharField):
            setattr(attempt, field.attname, getattr(attempt, field.attname)[: field.max_length])
    _refuse_outer_transaction()
    _attempt_insert(attempt)
    if outcome != SessionAttempt.Outcome.SUCCESS:
        alerts_evaluation_request()
    return attempt


def request_id_new() -> str:
    """An audit row's opaque id, which the browser is shown: random, not the row's key."""
    return f"brk_{secrets.token_hex(12)}"


def _cleaned(text: str | None) -> str:
    if not text:  # a success has no error text: no need to run the patterns over ""
        return ""
    return clean_text(text, limit=ERROR_MESSAGE_LIMIT, secrets=[settings.OPENAI_API_KEY])


def _refuse_outer_transaction() -> None:
    # What atomic(durable=True) checks, without opening a transaction of our own, which would
    # cost a BEGIN and a COMMIT round trip. Django marks the blocks of its TestCase so.
    blocks = connection.atomic_blocks
    if blocks and not blocks[-1]._from_testcase:
        raise RuntimeError("An audit row must not be written inside another transaction.")


def _attempt_insert(attempt: SessionAttempt) -> None:
    # Not mutated: mutation runs use SQLite; CI runs these tests on PostgreSQL.
    if connection.vendor == "postgresql":  # pragma: no mutate block
        if attempt.refusal_key:
            # Alone: two refusals of one caller in one statement would conflict with each other.
            _refusal_insert(attempt)
        elif settings.AUDIT_GROUP_COMMIT:
            _writer.write(attempt)
        else:
            [attempt.pk] = attempts_insert([attempt])
        return
    # SQLite has no INSERT in WITH; its transaction holds the database's one write lock, so
    # the statements cannot interleave with an aggregation run, nor two refusals of one caller.
    with transaction.atomic():
        counted = SessionAttempt.objects.filter(refusal_key=attempt.refusal_key)
        fields = ("pk", "created_at", "request_id")
        if attempt.refusal_key and (earlier := counted.values_list(*fields).first()):
            attempt.pk, attempt.created_at, attempt.request_id = earlier
            counted.update(requests=models.F("requests") + 1)
        else:
            attempt.save(force_insert=True)
        minute = attempt.created_at.replace(second=0, microsecond=0)
        marked = PendingMinute.objects.filter(minute=minute).update(writes=models.F("writes") + 1)
        if not marked:
            PendingMinute.objects.create(minute=minute)


def heartbeat_record(*, name: str) -> None:
    Heartbeat.objects.update_or_create(name=name, defaults={"beat_at": timezone.now()})
