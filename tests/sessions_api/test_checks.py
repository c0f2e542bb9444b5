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
        ("OPENAI_BASE_URL", "http://api.openai.com/v1", "sessions_api.E009"),
        ("OPENAI_BASE_URL", "http://10.0.0.5:8765/v1", "sessions_api.E009"),
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


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8765/v1", "http://localhost:8765/v1", "http://[::1]:8765/v1"]
)
def test_plain_http_is_fine_for_an_emulator_on_this_machine(configured, url):
    configured.OPENAI_BASE_URL = url
    assert chatkit_settings_check() == []


def test_plain_http_to_the_compose_emulator_only_when_allowed_on_purpose(configured):
    configured.OPENAI_BASE_URL = "http://emulator:8765/v1"
    assert ids(chatkit_settings_check()) == {"sessions_api.E009"}
    configured.CHATKIT_ALLOW_HTTP_UPSTREAM = True
    assert chatkit_settings_check() == []


@pytest.mark.parametrize(
    ("debug", "allowed", "refused"),
    [(False, False, True), (False, True, False), (True, False, False)],
)
def test_sqlite_without_debug_is_refused_unless_on_purpose(
    configured, monkeypatch, debug, allowed, refused
):
    monkeypatch.setitem(configured.DATABASES["default"], "ENGINE", "django.db.backends.sqlite3")
    configured.DEBUG, configured.ALLOW_SQLITE = debug, allowed
    assert ids(chatkit_settings_check()) == ({"sessions_api.E010"} if refused else set())


def test_atomic_requests_is_an_error(configured, monkeypatch):
    monkeypatch.setitem(configured.DATABASES["default"], "ATOMIC_REQUESTS", True)
    assert ids(chatkit_settings_check()) == {"sessions_api.E007"}


def test_errors_stop_manage_py_check(configured):
    configured.OPENAI_BASE_URL = "not a url"
    with pytest.raises(SystemCheckError, match="sessions_api.E004"):
        call_command("check")
