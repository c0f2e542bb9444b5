import pytest
from django.db import transaction

from audit.models import SessionAttempt
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
    with pytest.raises(RuntimeError), transaction.atomic():
        record()


def test_user_snapshot(django_user_model):
    user = django_user_model.objects.create_user(username="ops")
    attempt = record(user=user, anonymous=False, user_ref="u_1")
    user.delete()
    attempt.refresh_from_db()
    assert (attempt.user, attempt.username) == (None, "ops")
