import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from sessions_api.checks import chatkit_settings_check
from tests.constants import CANARY_KEY, WORKFLOW_ID


@pytest.fixture
def configured(settings):
    settings.OPENAI_API_KEY = CANARY_KEY
    settings.OPENAI_WORKFLOW_ID = WORKFLOW_ID
    return settings


def ids(messages) -> set[str]:
    return {message.id for message in messages}


def test_a_configured_broker_passes(configured):
    assert chatkit_settings_check() == []


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("OPENAI_API_KEY", "", "sessions_api.W001"),
        ("OPENAI_WORKFLOW_ID", "", "sessions_api.W002"),
        ("OPENAI_WORKFLOW_ID", "68ee92d551ac8190", "sessions_api.E003"),
        ("CHATKIT_ALLOWED_WORKFLOWS", ["wf_ok", "workflow-2"], "sessions_api.E003"),
        ("OPENAI_BASE_URL", "ftp://api.openai.com/v1", "sessions_api.E004"),
        ("OPENAI_BASE_URL", "api.openai.com/v1", "sessions_api.E004"),
        ("CHATKIT_USER_ID_MODE", "email", "sessions_api.E005"),
        ("CHATKIT_EXPIRES_AFTER_SECONDS", 3600, "sessions_api.E006"),
        ("CHATKIT_THROTTLE_USER", "thirty", "sessions_api.E008"),
        ("CHATKIT_THROTTLE_ANON", "30/fortnight", "sessions_api.E008"),
        ("CHATKIT_THROTTLE_ADDRESS", "600", "sessions_api.E008"),
        ("CHATKIT_THROTTLE_ANON_BUDGET", "/min", "sessions_api.E008"),
        ("CHATKIT_USER_ID_SECRET", "", "sessions_api.W003"),
    ],
)
def test_each_misconfiguration_is_reported(configured, setting, value, expected):
    setattr(configured, setting, value)
    messages = chatkit_settings_check()
    assert ids(messages) == {expected}
    assert all(message.hint or message.msg for message in messages)


@pytest.mark.parametrize("mode", ["username", "pk"])
def test_no_user_id_secret_is_needed_without_the_hmac(configured, mode):
    configured.CHATKIT_USER_ID_SECRET = ""
    configured.CHATKIT_USER_ID_MODE = mode
    assert chatkit_settings_check() == []


def test_atomic_requests_is_an_error(configured, monkeypatch):
    monkeypatch.setitem(configured.DATABASES["default"], "ATOMIC_REQUESTS", True)
    assert ids(chatkit_settings_check()) == {"sessions_api.E007"}


def test_errors_stop_manage_py_check(configured):
    configured.OPENAI_BASE_URL = "not a url"
    with pytest.raises(SystemCheckError, match="sessions_api.E004"):
        call_command("check")
