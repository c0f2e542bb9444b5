"""The run-wide canary sweep (issue 8): whatever a test does, the canary key and every client
secret the emulator minted must never reach a place an operator, a log shipper or a browser
other than the one that asked can read.

Recorders watch, for the whole run:
- every log line any logger emitted (web, worker threads, emulator);
- every response Django rendered (API errors, error pages, admin pages), except that a minted
  secret may appear where it belongs: the `client_secret` of a JSON answer;
- every Celery message published (task arguments);
- every parameter of every statement that wrote to the database (audit rows, alert
  notification payloads, error reports).

Subprocess servers (gunicorn, a worker process) log to their own files, which their tests read.
"""

import json
import logging
import re

from celery import signals
from django.core.handlers.base import BaseHandler
from django.db.backends.utils import CursorWrapper

from tests.constants import CANARY_KEY

MINTED_SECRETS: set[str] = set()


class _EveryLogLine(logging.Handler):
    """Keeps every log line of the run, at every level, whatever the tests do to the loggers."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


LOG_LINES = _EveryLogLine()
RESPONSES: list[str] = []
PUBLISHED: list[str] = []
WRITES: list[str] = []


def _response_text(response) -> str:
    if response.streaming:
        return ""  # a stream is the test's to read; reading it here would consume it
    text = response.content.decode(errors="replace")
    try:
        body = json.loads(text)
    except ValueError:
        return text
    if isinstance(body, dict):
        body.pop("client_secret", None)  # the one place a minted secret belongs
    return json.dumps(body)


_get_response = BaseHandler.get_response


def _recording_get_response(self, request):
    response = _get_response(self, request)
    RESPONSES.append(f"{request.method} {request.path} {response.status_code} ")
    RESPONSES[-1] += _response_text(response)
    return response


_execute, _executemany = CursorWrapper.execute, CursorWrapper.executemany


def _recording_execute(self, sql, params=None):
    if params and not str(sql).lstrip().upper().startswith("SELECT"):
        WRITES.append(str(params))
    return _execute(self, sql, params)


def _recording_executemany(self, sql, param_list):
    param_list = list(param_list)
    WRITES.append(str(param_list))
    return _executemany(self, sql, param_list)


def _record_publish(body=None, headers=None, **kwargs) -> None:
    PUBLISHED.append(json.dumps([body, headers], default=str))


def install() -> None:
    """Start recording, once, before the first test."""
    BaseHandler.get_response = _recording_get_response
    CursorWrapper.execute = _recording_execute
    CursorWrapper.executemany = _recording_executemany
    signals.before_task_publish.connect(_record_publish, weak=False)


# The shape of the emulator's client secrets: every candidate in a text is looked up in the set
# of minted ones, which is quicker than searching the text for each of thousands of secrets.
_SECRET_SHAPE = re.compile(r"ek_[0-9a-f]{48}")


def leaks() -> dict[str, int]:
    """Per place, how many distinct canaries it holds."""
    places = {
        "log lines": LOG_LINES.lines,
        "responses": RESPONSES,
        "task messages": PUBLISHED,
        "database writes": WRITES,
    }
    found = {}
    for place, items in places.items():
        text = "\n".join(items)
        leaked = set(_SECRET_SHAPE.findall(text)) & MINTED_SECRETS
        if CANARY_KEY in text:
            leaked.add(CANARY_KEY)
        if leaked:
            found[place] = len(leaked)
    return found
