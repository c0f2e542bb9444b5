"""Contract fuzzing: schemathesis drives the live app, in-process over its WSGI handler, from the
schema the app serves, with the emulator as the upstream.

Every generated request must get a response the schema documents (status, body, headers), and,
the emulator being healthy, never a 5xx. Bounded and deterministic: the same cases every run.

CSRF: the cases are sent as signed-out browsers, which need no token (Django's session
authentication enforces CSRF for signed-in users only); a second run sends them as a signed-in
user with the csrftoken cookie and its X-CSRFToken header, as the chat page does. A signed-in
request without the token is documented (403 csrf_failed) and tested in test_csrf.py.
"""

import json

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from django.middleware.csrf import CSRF_SECRET_LENGTH
from django.test import Client
from django.utils.crypto import get_random_string
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, positive_data_acceptance
from schemathesis.config import SchemathesisConfig

from sessions_api.openapi import error_classes
from tests.constants import OTHER_WORKFLOW_ID, WORKFLOW_ID

CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": 10,
        "generation": {
            # Valid bodies, and invalid ones (wrong types, too long, not JSON, other methods).
            "mode": "all",
            "max-examples": 40,
            "deterministic": True,
            # No example database: a run does not depend on what earlier runs found.
            "database": "none",
        },
        # An invalid body may also be refused for its size (413, documented), when the fuzzer
        # makes it larger than CHATKIT_MAX_BODY_BYTES.
        "checks": {
            "negative_data_rejection": {"expected-statuses": [400, 405, 413, 415]},
        },
    }
)
ALLOWED_WORKFLOWS = {WORKFLOW_ID, OTHER_WORKFLOW_ID}
RETRY_AFTER_SENT = {
    (error.status_code, error.code) for error in error_classes() if error.sends_retry_after
}

schema = schemathesis.openapi.from_wsgi(
    "/api/schema/?format=json", get_wsgi_application(), config=CONFIG
)


@pytest.fixture
def broker(upstream, settings, in_test_transaction):
    settings.CHATKIT_ALLOWED_WORKFLOWS = [OTHER_WORKFLOW_ID]
    return upstream


@pytest.fixture
def signed_in(user) -> dict:
    """The cookies and header of a signed-in browser that sends its CSRF token. Made without a
    request: the test client would reconnect the handler's connection closing (see above)."""
    client = Client()
    client.force_login(user)
    token = get_random_string(CSRF_SECRET_LENGTH)
    return {
        "cookies": {"sessionid": client.cookies["sessionid"].value, "csrftoken": token},
        "headers": {"X-CSRFToken": token},
    }


def check(case, response) -> None:
    assert response.status_code < 500, response.text
    body = case.body if isinstance(case.body, dict) else None
    if not case.meta.generation.mode.is_positive or body is None:
        return
    # Schemathesis's own "valid data is accepted" check cannot know which workflow ids the
    # server is configured for; this is that check, knowing them. A NUL character, which
    # Django's CharField refuses (400 invalid_request), is valid JSON the schema cannot exclude.
    workflow_id = body.get("workflow_id", WORKFLOW_ID)
    if workflow_id in ALLOWED_WORKFLOWS and "\\u0000" not in json.dumps(body):
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400, response.text


# Each run sends the same bounded set of cases; the database and the emulator are set up once for
# all of them, on purpose (each case is an independent request; their audit rows are all kept).
FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


@schema.parametrize()
@FUZZ
@pytest.mark.django_db
def test_anonymous_answers_are_documented_and_none_is_a_5xx(case, broker):
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
    check(case, response)
    if response.status_code == 200 and case.method == "POST":
        assert "chatkit_anon=" in str(response.headers["set-cookie"])  # named as a browser


@schema.parametrize()
@FUZZ
@pytest.mark.django_db
def test_signed_in_answers_are_documented_and_none_is_a_5xx(case, broker, signed_in):
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance], **signed_in)
    check(case, response)
    if response.status_code == 200 and case.method == "POST":
        assert "set-cookie" not in response.headers  # served as the user, not as a browser


# What a failing upstream answers, in turn: refusals, a rate limit too long to wait for, errors,
# garbage, a dropped connection, and successes between them. The breaker opens after two
# failures in a row, and lets a call through again soon after.
UPSTREAM_FAULTS = ["401", "404", "400", "429:30", "500", "hangup", "garbage", "ok"]


@pytest.fixture
def failing_upstream(broker, settings):
    settings.CHATKIT_MAX_RETRIES = 0  # each fault answers one request, without backoff waits
    settings.CHATKIT_BREAKER_FAILURES = 2
    settings.CHATKIT_BREAKER_COOLDOWN_SECONDS = 0.5
    broker.state.push_faults(UPSTREAM_FAULTS * 60)
    return broker


@schema.parametrize()
@FUZZ
@pytest.mark.django_db
def test_a_failing_upstream_gets_only_documented_5xx(case, failing_upstream):
    response = case.call_and_validate(
        excluded_checks=[positive_data_acceptance, not_a_server_error]
    )
    # The body conforms (checked above), so its code is one the schema lists for its status;
    # the point here is that a 5xx always names the upstream, never a bug of ours.
    if response.status_code >= 500:
        assert response.json()["error"]["code"].startswith("upstream_"), response.text
    if response.status_code >= 400:
        # The header the schema promises for some errors is really sent with them.
        error = (response.status_code, response.json()["error"]["code"])
        assert ("retry-after" in response.headers) == (error in RETRY_AFTER_SENT), error
