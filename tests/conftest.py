import os

import pytest
from rest_framework.test import APIClient

from sessions_api.emulator import serve_in_thread
from tests.constants import CANARY_KEY, OTHER_WORKFLOW_ID, WORKFLOW_ID


def require_service(name: str, variable: str) -> str:
    """The URL of a real service; skips locally when it is not configured, fails in CI."""
    url = os.environ.get(variable, "")
    if not url:
        message = f"{name} is needed: set {variable}"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI must provide every service)")
        pytest.skip(f"{message} to run this test")
    return url


@pytest.fixture(scope="session")
def emulator():
    running = serve_in_thread(api_keys=[CANARY_KEY], workflows=[WORKFLOW_ID, OTHER_WORKFLOW_ID])
    yield running
    running.stop()


@pytest.fixture
def upstream(emulator, settings):
    """The emulator, reset, with the broker configured to use it and short timeouts."""
    emulator.state.reset()
    settings.OPENAI_API_KEY = CANARY_KEY
    settings.OPENAI_WORKFLOW_ID = WORKFLOW_ID
    settings.OPENAI_BASE_URL = emulator.base_url
    settings.CHATKIT_CONNECT_TIMEOUT = 0.5
    settings.CHATKIT_READ_TIMEOUT = 1.0
    settings.CHATKIT_TOTAL_TIMEOUT = 2.0
    return emulator


@pytest.fixture
def api_client() -> APIClient:
    return APIClient(enforce_csrf_checks=True)


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user(
        username="ada", email="ada@example.com", password="correct horse battery staple"
    )


@pytest.fixture
def logged_in_client(user) -> APIClient:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    return client
