"""One request id through the logs (logs.py): the web request's lines, the Celery tasks it set
off, and the alert it contributed to; the JSON format; Django's duplicate "Bad Gateway" line.
tests/test_metrics_gunicorn.py reads the same from a real gunicorn's log file."""

import io
import json
import logging

import pytest
from django.conf import settings as django_settings
from rest_framework.test import APIClient

from audit.models import SessionAttempt
from logs import DropAnsweredUpstreamFailures, JsonFormatter, request_id
from redaction import RedactSecretsFilter
from sessions_api import services
from tests.conftest import wait_for

URL = "/api/chatkit/session/"


@pytest.fixture
def json_lines():
    """Every record, as the console handler writes it with LOG_FORMAT=json: the same filters, in
    the same order, and the JSON format. Yields the list of lines written so far, parsed."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(DropAnsweredUpstreamFailures())
    handler.addFilter(RedactSecretsFilter([django_settings.OPENAI_API_KEY]))
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    lines: list[dict] = []

    def read() -> list[dict]:
        lines[:] = [json.loads(line) for line in stream.getvalue().splitlines()]
        return lines

    try:
        yield read
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def test_the_console_handler_has_the_filters_in_both_formats():
    console = django_settings.LOGGING["handlers"]["console"]
    assert console["filters"] == ["answered", "redact"]
    assert set(django_settings.LOGGING["formatters"]) == {"plain", "json"}


def test_a_json_line_has_fixed_keys_and_redacted_text():
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactSecretsFilter([]))
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    token = request_id.set("brk_0123")
    try:
        try:
            raise ValueError("bad key sk-" + "z" * 30)
        except ValueError:
            logger.error(
                "line one\nline two with sk-%s", "y" * 30, exc_info=True,
                extra={"user": "ada", "sample_request_ids": ["brk_a"]},
            )  # fmt: skip
    finally:
        request_id.reset(token)
        logger.removeHandler(handler)
    [text] = handler.stream.getvalue().splitlines()  # one line, whatever the message holds
    line = json.loads(text)
    assert line["message"] == "line one\nline two with sk-[REDACTED]"
    assert line["request_id"] == "brk_0123"
    assert line["sample_request_ids"] == ["brk_a"]
    assert "sk-[REDACTED]" in line["exception"] and "zzzzz" not in line["exception"]
    assert "user" not in line  # extra= fields skip redaction, so none is written
    assert (line["level"], line["logger"]) == ("ERROR", "tests.logs")


@pytest.mark.django_db
def test_a_failed_request_logs_under_its_id_without_django_s_duplicate(upstream, json_lines):
    upstream.state.push_faults([{"status": 503}] * 3)
    response = APIClient().post(URL, {}, format="json")
    assert response.status_code == 502
    given = response.json()["error"]["request_id"]

    lines = json_lines()
    assert SessionAttempt.objects.get().request_id == given
    warnings = [line for line in lines if line["logger"] == "sessions_api.client"]
    assert len(warnings) == 3 and all(line["request_id"] == given for line in warnings)
    assert not [line for line in lines if line["logger"] == "django.request"]


@pytest.mark.django_db
def test_a_bug_of_ours_keeps_django_s_error_line(upstream, json_lines, monkeypatch):
    def broken(timestamp):
        raise RuntimeError("a bug in building the row")

    monkeypatch.setattr(services, "_expiry", broken)
    response = APIClient().post(URL, {}, format="json")
    assert response.status_code == 500

    given = response.json()["error"]["request_id"]
    [django_line] = [line for line in json_lines() if line["logger"] == "django.request"]
    assert django_line["level"] == "ERROR" and django_line["request_id"] == given


@pytest.mark.django_db
def test_other_pages_do_not_inherit_a_session_request_s_id(upstream, json_lines, client):
    upstream.state.push_faults([{"status": 401}])
    APIClient().post(URL, {}, format="json")
    logging.getLogger("tests.logs").info("between requests")  # still the request's thread
    client.get("/healthz")
    logging.getLogger("tests.logs").info("after a health check")
    lines = json_lines()
    assert "request_id" in lines[-2]
    assert "request_id" not in lines[-1]


@pytest.mark.django_db(transaction=True)
def test_the_id_follows_into_the_worker_and_the_alert(redis_worker, upstream, settings, json_lines):
    settings.ALERT_WEBHOOK_URL, settings.ALERT_EMAIL_TO, settings.ALERT_RULES = "", [], {}
    settings.OPENAI_API_KEY = "sk-not-the-emulators-key-" + "x" * 20  # a real 401 from it
    client = APIClient()
    given = {client.post(URL).json()["error"]["request_id"] for _ in range(3)}

    def alert_lines():
        return [line for line in json_lines() if line["message"].startswith("ALERT ")]

    assert wait_for(alert_lines)
    [alert] = alert_lines()
    # Logged by deliver_notification, queued by the evaluate_alerts that one of the failed
    # requests queued: the worker ran both under that request's id.
    assert alert["request_id"] in given
    assert set(alert["sample_request_ids"]) == given
