"""The upstream circuit breaker: on its own with a clock of our own, then in the service."""

import logging
import threading

import pytest

from audit.models import SessionAttempt
from sessions_api.breaker import CircuitBreaker, Refusal

LOGGER = "sessions_api.breaker"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock) -> CircuitBreaker:
    return CircuitBreaker(failures=3, cooldown=10, clock=clock)


def messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LOGGER]


def test_it_opens_after_the_threshold_of_failures_in_a_row(breaker, clock, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for _ in range(2):
        breaker.failed()
        assert breaker.refusal() is None
    breaker.failed()

    assert breaker.refusal() == Refusal(failures=3, seconds_left=10)
    clock.now += 4
    assert breaker.refusal() == Refusal(failures=3, seconds_left=6)
    assert messages(caplog) == ["Upstream circuit open for 10 s after 3 failed calls in a row."]


def test_a_success_in_between_starts_the_count_over(breaker):
    breaker.failed()
    breaker.failed()
    breaker.succeeded()
    breaker.failed()
    breaker.failed()
    assert breaker.refusal() is None
    breaker.failed()
    assert breaker.refusal() is not None


def test_after_the_cooldown_one_probe_goes_through_and_its_success_closes(breaker, clock, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for _ in range(3):
        breaker.failed()
    clock.now += 10

    assert breaker.refusal() is None  # the probe
    assert breaker.refusal() == Refusal(failures=3, seconds_left=0)  # the others wait for it
    breaker.succeeded()

    assert breaker.refusal() is None and breaker.refusal() is None
    assert messages(caplog)[1:] == [
        "Upstream circuit half-open: one call goes through as a probe.",
        "Upstream circuit closed: the probe succeeded.",
    ]


def test_a_failed_probe_opens_it_for_another_cooldown(breaker, clock, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for _ in range(3):
        breaker.failed()
    clock.now += 10
    assert breaker.refusal() is None
    breaker.failed()

    assert breaker.refusal() == Refusal(failures=4, seconds_left=10)
    assert messages(caplog)[-1] == (
        "Upstream circuit open for 10 s after 4 failed calls in a row (the probe failed)."
    )


def test_failures_while_open_do_not_extend_it(breaker, clock):
    for _ in range(3):
        breaker.failed()
    clock.now += 5
    breaker.failed()  # a call that was already in flight when it opened
    assert breaker.refusal() == Refusal(failures=4, seconds_left=5)


def test_a_success_when_closed_logs_nothing(breaker, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    breaker.succeeded()
    assert messages(caplog) == []


def test_only_one_of_many_threads_is_the_probe(breaker, clock):
    for _ in range(3):
        breaker.failed()
    clock.now += 10
    start = threading.Barrier(16)
    allowed = []

    def ask():
        start.wait()
        allowed.append(breaker.refusal() is None)

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(allowed) == [False] * 15 + [True]


# --- in the service, against the emulator ----------------------------------------------------

URL = "/api/chatkit/session/"


@pytest.fixture
def storm(upstream, settings):
    """Three failed calls open it; no retries, so that each call is one request."""
    settings.CHATKIT_BREAKER_FAILURES = 3
    settings.CHATKIT_BREAKER_COOLDOWN_SECONDS = 30
    settings.CHATKIT_MAX_RETRIES = 0
    return upstream


@pytest.mark.django_db
def test_a_5xx_storm_opens_it_and_then_we_answer_at_once_without_calling(api_client, storm):
    storm.state.push_faults([{"status": 500}] * 3)
    assert [api_client.post(URL).status_code for _ in range(3)] == [502] * 3

    refused = api_client.post(URL)

    assert refused.status_code == 503
    assert 29 <= int(refused["Retry-After"]) <= 30
    error = refused.json()["error"]
    assert error["code"] == "upstream_unavailable"
    assert len(storm.state.received()) == 3  # no fourth call
    row = SessionAttempt.objects.get(request_id=error["request_id"])
    assert (row.outcome, row.api_error_code, row.status_code, row.attempts) == (
        "circuit_open",
        "upstream_unavailable",
        None,
        0,
    )
    assert row.error_message.startswith("Not called: 3 upstream calls in a row failed;")


@pytest.mark.django_db
def test_an_open_circuit_with_under_a_second_left_says_retry_after_1(api_client, storm, settings):
    settings.CHATKIT_BREAKER_COOLDOWN_SECONDS = 0.9  # under a second, with room for the calls
    storm.state.push_faults([{"status": 500}] * 3)
    assert [api_client.post(URL).status_code for _ in range(3)] == [502] * 3
    refused = api_client.post(URL)
    assert (refused.status_code, refused["Retry-After"]) == (503, "1")


@pytest.mark.django_db
def test_an_unreachable_upstream_opens_it_too(api_client, storm, settings):
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # nothing listens: refused at once
    assert [api_client.post(URL).status_code for _ in range(4)] == [502, 502, 502, 503]
    assert SessionAttempt.objects.order_by("-id")[0].outcome == "circuit_open"


@pytest.mark.django_db
def test_4xx_answers_never_open_it(api_client, storm):
    storm.state.push_faults([{"status": 401}] * 3 + [{"status": 500}] * 2)
    statuses = [api_client.post(URL).status_code for _ in range(6)]
    # Three refusals of our key, two 5xx after them: not three 5xx in a row.
    assert statuses == [502] * 5 + [200]
    assert len(storm.state.received()) == 6


@pytest.mark.django_db
def test_the_probe_after_the_cooldown_closes_it(api_client, storm, settings):
    settings.CHATKIT_BREAKER_COOLDOWN_SECONDS = 0.2
    storm.state.push_faults([{"status": 503}] * 3)
    assert [api_client.post(URL).status_code for _ in range(4)] == [502, 502, 502, 503]

    threading.Event().wait(0.25)
    assert [api_client.post(URL).status_code for _ in range(2)] == [200, 200]
    assert len(storm.state.received()) == 5


@pytest.mark.django_db
def test_a_probe_that_ends_in_a_bug_of_ours_still_ends_the_probe(
    api_client, storm, settings, monkeypatch
):
    settings.CHATKIT_BREAKER_COOLDOWN_SECONDS = 0.2
    storm.state.push_faults([{"status": 500}] * 3)
    assert [api_client.post(URL).status_code for _ in range(3)] == [502] * 3
    threading.Event().wait(0.25)
    with monkeypatch.context() as patched:
        patched.setattr("sessions_api.client.ChatKitClient.create_session", _a_bug)
        assert api_client.post(URL).status_code == 500  # the probe
    threading.Event().wait(0.25)
    assert api_client.post(URL).status_code == 200  # a new probe, not refused for ever


def _a_bug(*args, **kwargs):
    raise RuntimeError("a bug in the client")
