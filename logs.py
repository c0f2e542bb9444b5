"""What a log line says besides its message: the request it belongs to, and the JSON format.

Beside redaction.py and for the same reason: the web processes, the Celery worker and
gunicorn.conf.py all use it, so it imports neither Django nor the apps.

One id follows a session request: the opaque `brk_…` id of its audit row (the one the browser
is shown with an error). The request binds it before its first log line; the Celery tasks it
publishes carry it in a message header, and the worker binds it again while they run
(celery_app.py). LOG_FORMAT=json writes it into every line as `request_id`.
"""

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime

# Per thread (a gunicorn thread serves one request at a time) and per Celery task. Web requests
# clear it as they start (broker.middleware.LogContextMiddleware), so a request that is not a
# session request never carries the id of the one its thread served before.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# What the session API answers for an upstream failure (or an open circuit, or the audit
# database down). The failure is already logged by us, with its cause, and audited; Django's
# "Bad Gateway: /api/chatkit/session/" line at ERROR would only double every one of them.
_ANSWERED_STATUSES = frozenset({502, 503, 504})


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with a fixed set of keys.

    Fixed on purpose: fields a caller passes with `extra=` are not redacted by
    redaction.RedactSecretsFilter, which cleans the message, the traceback and the stack only,
    so none reach the line but `sample_request_ids` (opaque ids, never secrets).
    """

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        if bound := request_id.get():
            line["request_id"] = bound
        if samples := getattr(record, "sample_request_ids", None):
            line["sample_request_ids"] = list(samples)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


class DropAnsweredUpstreamFailures(logging.Filter):
    """Drops django.request's line for a 502/503/504 that the session API answered.

    A request is the session API's when it bound a request id; every other 5xx line stays, and
    so does every 500 (a bug of ours), which is nobody else's line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name == "django.request"
            and getattr(record, "status_code", None) in _ANSWERED_STATUSES
            and request_id.get() is not None
        )
