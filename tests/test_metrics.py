"""GET /metrics after real requests against the emulator: the values, the access rules, and
labels that stay bounded whatever callers send. tests/test_metrics_gunicorn.py shows the sums
across gunicorn workers."""

import secrets
import socket
import time

import pytest
from django.core.cache import cache
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from audit.models import Alert, AlertNotification
from broker.checks import metrics_access_check
from celery_app import publish_safely
from tests.conftest import broker_at
from tests.constants import OTHER_WORKFLOW_ID, WORKFLOW_ID

pytestmark = pytest.mark.django_db
URL = "/api/chatkit/session/"
ATTEMPTS = "chatkit_session_attempts_total"
TOKEN = "t" * 40


def scrape(client: Client | None = None, **headers) -> dict:
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.status_code
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def fresh_throttle():
    cache.clear()  # no counter of an earlier test's address
    yield
    cache.clear()


def test_a_day_of_traffic_is_counted_by_outcome_status_and_workflow(
    upstream, settings, fresh_throttle
):
    settings.CHATKIT_ALLOWED_WORKFLOWS = [OTHER_WORKFLOW_ID]
    settings.CHATKIT_BREAKER_FAILURES = 2
    # The browser's first request is counted by its address, the rest by its cookie.
    settings.CHATKIT_THROTTLE_ANON = "6/min"
    client = APIClient()
    before = scrape()

    def post(status: int, body: dict | None = None) -> None:
        response = client.post(URL, body or {}, format="json")
        assert response.status_code == status, response.content

    post(200)
    post(200, {"workflow_id": OTHER_WORKFLOW_ID})
    upstream.state.push_faults([{"status": 401}])
    post(502)
    upstream.state.push_faults([{"hang": True}])
    post(504)  # the breaker's first failure in a row
    upstream.state.push_faults([{"status": 500}] * 3)
    post(502)  # retried twice, then the second failure in a row: the circuit opens
    post(503)  # answered at once, without calling
    post(503)  # the browser's sixth request this minute
    post(429)  # its seventh: throttled
    after = scrape()

    def attempts(outcome: str, status: str, workflow: str = WORKFLOW_ID) -> float:
        return delta(before, after, ATTEMPTS, outcome=outcome, status=status, workflow=workflow)

    assert attempts("success", "200") == 1
    assert attempts("success", "200", OTHER_WORKFLOW_ID) == 1
    assert attempts("upstream_error", "401") == 1
    assert attempts("timeout", "none") == 1
    assert attempts("upstream_error", "500") == 1
    assert attempts("circuit_open", "none") == 2
    assert attempts("rejected", "none", "none") == 1  # refused before its body was read
    assert delta(before, after, "chatkit_throttle_refusals_total", scope="browser") == 1
    assert delta(before, after, "chatkit_upstream_retries_total") == 2
    latency = "chatkit_upstream_latency_seconds_count"
    assert delta(before, after, latency, outcome="success") == 2
    assert delta(before, after, latency, outcome="upstream_error") == 2
    assert delta(before, after, latency, outcome="timeout") == 1
    assert delta(before, after, latency, outcome="circuit_open") == 0  # never called
    # The hang took the whole read timeout (1 s): it is in the buckets above it only.
    assert delta(before, after, "chatkit_upstream_latency_seconds_bucket", outcome="timeout",
                 le="0.75") == 0  # fmt: skip
    assert value(after, "chatkit_upstream_circuit_state") == 2
    assert delta(before, after, "chatkit_upstream_circuit_opened_total") == 1


def test_labels_stay_bounded_whatever_workflow_ids_callers_send(upstream, settings):
    client = APIClient()
    client.post(URL, {}, format="json")
    before = scrape()
    junk = [f"wf_{secrets.token_hex(8)}" for _ in range(50)]
    for workflow_id in junk:
        assert client.post(URL, {"workflow_id": workflow_id}, format="json").status_code == 400

    response = Client().get("/metrics")
    after = scrape()
    grown = {
        dict(labels)["workflow"]
        for name, labels in after
        if name == ATTEMPTS and after[name, labels] != before.get((name, labels))
    }
    assert grown == {"other"}
    assert delta(before, after, ATTEMPTS, outcome="rejected", status="none", workflow="other") == 50
    assert not any(workflow_id in response.content.decode() for workflow_id in junk)
    series = [key for key in after if key[0] == ATTEMPTS]
    assert len(series) - len([key for key in before if key[0] == ATTEMPTS]) <= 1


def test_alerts_and_notifications_are_read_from_the_database(
    settings, django_assert_max_num_queries
):
    now = timezone.now()
    fields = {"severity": "critical", "first_seen": now, "last_seen": now, "count": 3,
              "threshold": 3, "window_seconds": 300}  # fmt: skip
    firing = Alert.objects.create(rule="upstream_auth", fingerprint="a", **fields)
    Alert.objects.create(rule="upstream_auth", fingerprint="a", state="resolved", **fields)
    Alert.objects.create(rule="upstream_auth", fingerprint="b", state="resolved", **fields)
    for channel, status in [("log", "sent"), ("webhook", "pending"), ("email", "failed")]:
        AlertNotification.objects.create(
            alert=firing, event="firing", sequence=0, channel=channel, status=status, payload={}
        )

    # The database check, the alerts, the notifications.
    with django_assert_max_num_queries(3):
        samples = scrape()

    assert value(samples, "chatkit_alerts", rule="upstream_auth", state="firing") == 1
    assert value(samples, "chatkit_alerts", rule="upstream_auth", state="resolved") == 2
    # Every rule is there, quiet ones at 0.
    assert ("chatkit_alerts", (("rule", "anonymous_budget"), ("state", "firing"))) in samples
    unsent = "chatkit_alert_notifications_unsent"
    assert value(samples, unsent, channel="webhook", status="pending") == 1
    assert value(samples, unsent, channel="email", status="failed") == 1
    assert value(samples, unsent, channel="log", status="pending") == 0
    assert value(samples, "broker_dependency_up", dependency="database") == 1
    assert value(samples, "broker_dependency_up", dependency="redis") == 1


def test_redis_down_shows_as_a_dependency_and_as_enqueue_failures(settings, unreachable_cache):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    before = scrape()
    with broker_at(dead):
        assert not publish_safely("audit.tasks.sweep_alerts")  # the broker refuses
        assert not publish_safely("audit.tasks.sweep_alerts")  # Redis is skipped meanwhile
    after = scrape()

    failures = "broker_enqueue_failures_total"
    assert delta(before, after, failures, task="audit.tasks.sweep_alerts", reason="error") == 1
    assert delta(before, after, failures, task="audit.tasks.sweep_alerts", reason="paused") == 1
    assert delta(before, after, "broker_redis_failures_total", use="enqueue") == 1
    assert value(after, "broker_redis_skipped_until_timestamp_seconds") > time.time()
    assert value(after, "broker_dependency_up", dependency="redis") == 0


@pytest.mark.parametrize(
    ("networks", "proxies", "remote", "forwarded", "status"),
    [
        # The default: loopback and private networks.
        (None, 0, "127.0.0.1", None, 200),
        (None, 0, "10.1.2.3", None, 200),
        (None, 0, "203.0.113.9", None, 404),
        # Behind one proxy the address is the one it forwarded, as for the throttle.
        (None, 1, "10.0.0.2", "203.0.113.9", 404),
        (None, 1, "10.0.0.2", "192.168.1.7", 200),
        # A forged header is not believed without DJANGO_NUM_PROXIES.
        (None, 0, "203.0.113.9", "127.0.0.1", 404),
        (["10.20.0.0/16"], 0, "127.0.0.1", None, 404),
        (["10.20.0.0/16"], 0, "10.20.3.4", None, 200),
        (["10.20.0.0/16", "2001:db8::/32"], 0, "2001:db8::1", None, 200),
    ],
)
def test_only_allowed_addresses_see_metrics(settings, networks, proxies, remote, forwarded, status):
    if networks is not None:
        settings.METRICS_ALLOWED_NETWORKS = networks
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": proxies}
    headers = {"REMOTE_ADDR": remote}
    if forwarded:
        headers["HTTP_X_FORWARDED_FOR"] = forwarded
    response = Client().get("/metrics", **headers)
    assert response.status_code == status
    assert (b"chatkit_session_attempts" in response.content) == (status == 200)


@pytest.mark.parametrize(
    ("authorization", "status"),
    [(None, 403), ("Bearer wrong", 403), (f"Basic {TOKEN}", 403), (f"Bearer {TOKEN}", 200)],
)
def test_a_token_is_asked_for_when_set(settings, authorization, status):
    settings.METRICS_TOKEN = TOKEN
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization else {}
    assert Client().get("/metrics", **headers).status_code == status
    # The token does not open the endpoint to addresses outside the list.
    outside = Client().get(
        "/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION=f"Bearer {TOKEN}"
    )
    assert outside.status_code == 404


def test_an_empty_network_list_with_a_token_serves_any_address_with_it(settings):
    settings.METRICS_ALLOWED_NETWORKS = []
    settings.METRICS_TOKEN = TOKEN
    headers = {"REMOTE_ADDR": "203.0.113.9"}
    assert Client().get("/metrics", **headers).status_code == 403
    assert (
        Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", **headers).status_code == 200
    )


def test_only_get_is_served():
    assert Client().post("/metrics").status_code == 405


@pytest.mark.parametrize(
    ("networks", "token", "debug", "ids"),
    [
        (["127.0.0.0/8"], "", False, []),
        (["127.0.0.0/8", "not-a-network"], "", False, ["broker.E001"]),
        (["127.0.0.0/8"], "short", False, ["broker.E002"]),
        (["127.0.0.0/8"], " " + TOKEN, False, ["broker.E002"]),
        ([], "", False, ["broker.W001"]),
        ([], "", True, []),  # a developer's machine
        ([], TOKEN, False, []),
    ],
)
def test_system_checks_refuse_weak_metrics_access(settings, networks, token, debug, ids):
    settings.METRICS_ALLOWED_NETWORKS, settings.METRICS_TOKEN = networks, token
    settings.DEBUG = debug
    assert [message.id for message in metrics_access_check()] == ids
