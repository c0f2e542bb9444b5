import re
from datetime import UTC, datetime

import pytest
from django.db import transaction

from audit import services
from audit.models import PendingMinute, SessionAttempt
from audit.services import session_attempt_record
from tests.constants import CANARY_KEY

pytestmark = pytest.mark.django_db


def record(**fields) -> SessionAttempt:
    return session_attempt_record(
        **{"outcome": "upstream_error", "user_ref": "anon_x", "anonymous": True, **fields}
    )


def test_error_message_is_one_line_truncated_and_redacted(settings):
    settings.OPENAI_API_KEY = CANARY_KEY
    message = f"line one\r\nline two with {CANARY_KEY} and sk-proj-abcdefghijklmnop " + "x" * 5000

    attempt = record(error_message=message)

    assert "\n" not in attempt.error_message and "\r" not in attempt.error_message
    assert len(attempt.error_message) <= 2048
    assert CANARY_KEY not in attempt.error_message
    assert "sk-proj-abcdefghijklmnop" not in attempt.error_message
    assert attempt.error_message.startswith("line one  line two with [REDACTED]")


def test_a_success_keeps_its_text_columns_empty():
    # The common row: no upstream error, and no upstream request id for a refusal.
    attempt = record(outcome="success", status_code=200, error_type=None, upstream_request_id=None)

    attempt.refresh_from_db()
    text = ("error_type", "error_code", "error_param", "error_message", "upstream_request_id")
    assert {column: getattr(attempt, column) for column in text} == dict.fromkeys(text, "")


def test_client_ip_is_kept_only_when_enabled(settings):
    settings.CHATKIT_AUDIT_CLIENT_IP = False
    assert record(client_ip="203.0.113.9").client_ip is None
    settings.CHATKIT_AUDIT_CLIENT_IP = True
    assert record(client_ip="203.0.113.9").client_ip == "203.0.113.9"


def test_record_refuses_to_join_someone_elses_transaction():
    # A row written inside an outer transaction would vanish with its rollback.
    message = r"^An audit row must not be written inside another transaction\.$"
    with pytest.raises(RuntimeError, match=message), transaction.atomic():
        record()


def test_user_snapshot(django_user_model):
    user = django_user_model.objects.create_user(username="ops")
    attempt = record(user=user, anonymous=False, user_ref="u_1")
    user.delete()
    attempt.refresh_from_db()
    assert (attempt.user, attempt.username) == (None, "ops")


def test_a_row_given_only_what_it_must_have():
    # What a caller leaves out is empty, not made up: an anonymous caller has no username, and a
    # row has an opaque request id of its own, never one shared with another row.
    attempt = record()
    attempt.refresh_from_db()

    unset = ("workflow_id", "api_error_code", "error_type", "error_code", "error_param")
    unset += ("error_message", "upstream_request_id", "session_id", "username")
    assert {column: getattr(attempt, column) for column in unset} == dict.fromkeys(unset, "")
    assert (attempt.attempts, attempt.kind) == (0, SessionAttempt.Kind.INITIAL)
    assert re.fullmatch(r"brk_[0-9a-f]{24}", attempt.request_id)
    assert record().request_id != attempt.request_id


def test_each_row_marks_its_minute_for_the_statistics():
    started = datetime(2026, 12, 7, 12, 34, 56, 789000, tzinfo=UTC)
    record(started_at=started)
    record(started_at=started.replace(second=5))

    minute = started.replace(second=0, microsecond=0)
    assert [(mark.minute, mark.writes) for mark in PendingMinute.objects.all()] == [(minute, 2)]


def test_only_a_failure_asks_for_an_alert_evaluation(monkeypatch):
    asked = []
    monkeypatch.setattr(services, "alerts_evaluation_request", lambda: asked.append(True))

    record(outcome="success", status_code=200)
    assert asked == []
    record(outcome="upstream_error", status_code=401)
    assert asked == [True]
