import functools
import logging
import secrets
import threading
import time
from datetime import timedelta

import pytest
import time_machine
from django.contrib.auth.models import AnonymousUser
from django.core.cache import caches
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.test import APIClient, APIRequestFactory

from audit.alerting.engine import alerts_evaluate
from audit.models import Alert, AttemptMinuteStat, SessionAttempt
from audit.stats import attempt_stats_aggregate
from sessions_api import apis, errors, throttle
from sessions_api.throttle import Limit, SessionCreateThrottle, network_of

pytestmark = pytest.mark.django_db

URL = "/api/chatkit/session/"


@pytest.fixture
def address() -> str:
    """A fresh client address per test, so counts left in a shared Redis never interfere."""
    return f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250)}"


def ipv6_prefix() -> str:
    """A fresh /64, written as its first four groups."""
    return "2001:db8:" + ":".join(f"{secrets.randbelow(0xFFFF):x}" for _ in range(2))


def statuses(client: APIClient, times: int, *, drop_cookies: bool = False) -> list[int]:
    answers = []
    for _ in range(times):
        if drop_cookies:
            client.cookies.clear()
        answers.append(client.post(URL).status_code)
    return answers


# --- who is counted by what ---------------------------------------------------------------


def test_a_browser_with_its_cookie_is_counted_by_the_cookie(upstream, settings, address):
    settings.CHATKIT_THROTTLE_ANON = "2/min"
    browser = APIClient(REMOTE_ADDR=address)
    # The first request has no cookie yet (counted by address); the next two carry it.
    assert statuses(browser, 3) == [200, 200, 200]

    refused = browser.post(URL)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limited"
    assert 59 <= int(refused["Retry-After"]) <= 60  # the window began with its first request
    row = SessionAttempt.objects.get(request_id=error["request_id"])
    assert (row.outcome, row.api_error_code) == ("rejected", "rate_limited")
    # Named by its cookie, as its sessions were.
    assert row.user_ref == SessionAttempt.objects.filter(outcome="success").last().user_ref
    # A neighbour behind the same address has its own budget.
    assert APIClient(REMOTE_ADDR=address).post(URL).status_code == 200


def test_callers_without_a_cookie_are_counted_by_address(upstream, settings, address):
    settings.CHATKIT_THROTTLE_ADDRESS = "2/min"
    script = APIClient(REMOTE_ADDR=address)
    assert statuses(script, 3, drop_cookies=True) == [200, 200, 429]
    # A refusal hands out no new anonymous id to try again with.
    script.cookies.clear()
    refused = script.post(URL)
    assert refused.status_code == 429
    assert settings.CHATKIT_ANON_COOKIE_NAME not in refused.cookies
    assert APIClient(REMOTE_ADDR=address + "1").post(URL).status_code == 200


def test_an_ipv6_slash_64_is_one_address(upstream, settings):
    settings.CHATKIT_THROTTLE_ADDRESS = "2/min"
    prefix = ipv6_prefix()
    hosts = [APIClient(REMOTE_ADDR=f"{prefix}::{n}") for n in (1, 2, 3)]
    assert [host.post(URL).status_code for host in hosts] == [200, 200, 429]
    assert APIClient(REMOTE_ADDR=f"{ipv6_prefix()}::1").post(URL).status_code == 200


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::", "2001:db8:1:2::/64"),
        ("not an address", "not an address"),
    ],
)
def test_network_of(address, network):
    assert network_of(address) == network


def test_logged_in_users_are_counted_per_user(upstream, settings, django_user_model, address):
    settings.CHATKIT_THROTTLE_USER = "1/min"
    settings.CHATKIT_THROTTLE_ANON_BUDGET = "1/min"  # for signed-out callers only
    users = [django_user_model.objects.create_user(username=f"{n}{address}") for n in "uv"]
    # Primary keys start over in each test database, while a real Redis keeps counts for a
    # minute: a run right after another would otherwise find these users' counts in place.
    caches["default"].delete_many([Limit("user", str(u.pk), 1, 60).cache_key for u in users])
    first, second = APIClient(REMOTE_ADDR=address), APIClient(REMOTE_ADDR=address)
    first.force_login(users[0])
    second.force_login(users[1])
    assert statuses(first, 2) == [200, 429]
    assert statuses(second, 1) == [200]


def test_each_kind_of_caller_has_its_own_counter_under_a_documented_key(
    upstream, settings, django_user_model, address
):
    # Operators look counters up (or clear them) by these keys: throttle_chatkit_<scope>_<hash>.
    settings.CHATKIT_THROTTLE_USER = settings.CHATKIT_THROTTLE_ANON = "9/min"
    settings.CHATKIT_THROTTLE_ADDRESS = settings.CHATKIT_THROTTLE_ANON_BUDGET = "9/min"
    backend = caches["default"]
    user = django_user_model.objects.create_user(username=f"keys-{address}")
    budget = Limit("budget", "anonymous", 9, 60).cache_key
    backend.delete_many([Limit("user", str(user.pk), 9, 60).cache_key, budget])
    browser = APIClient(REMOTE_ADDR=address)
    browser.post(URL)  # no cookie yet: counted by address (and in the budget)
    browser.post(URL)  # with its cookie: counted by browser (and in the budget)
    member = APIClient(REMOTE_ADDR=address)
    member.force_login(user)
    member.post(URL)  # counted by user only
    anon_ref = SessionAttempt.objects.filter(anonymous=True).last().user_ref

    counters = {
        "address": Limit("address", address, 9, 60),
        "browser": Limit("browser", anon_ref, 9, 60),
        "user": Limit("user", str(user.pk), 9, 60),
    }
    assert {scope: backend.get(limit.cache_key) for scope, limit in counters.items()} == {
        "address": 1,
        "browser": 1,
        "user": 1,
    }
    assert backend.get(budget) == 2
    assert counters["address"].cache_key.startswith("throttle_chatkit_address_")


def test_300_new_browsers_behind_one_address_are_served_by_default(upstream, settings, address):
    """An office or a carrier's NAT: the defaults serve a burst of new browsers from one address."""
    settings.CHATKIT_THROTTLE_ANON = "30/min"
    settings.CHATKIT_THROTTLE_ADDRESS = "600/min"
    browsers = [APIClient(REMOTE_ADDR=address) for _ in range(300)]
    answers = [browser.post(URL).status_code for browser in browsers]
    assert answers == [200] * 300
    # One address window held the whole burst (not the pace of this machine): 300 more callers
    # without a cookie fill it to its 600, and the next is refused.
    more = [APIClient(REMOTE_ADDR=address).post(URL).status_code for _ in range(301)]
    assert more == [200] * 300 + [429]
    # Each is then counted by its own cookie: one browser's 30 do not touch the others.
    assert statuses(browsers[0], 31) == [200] * 30 + [429]
    assert browsers[1].post(URL).status_code == 200


def test_the_defaults_are_the_documented_policy():
    from broker import settings as defaults

    assert (
        defaults.CHATKIT_THROTTLE_USER,
        defaults.CHATKIT_THROTTLE_ANON,
        defaults.CHATKIT_THROTTLE_ADDRESS,
        defaults.CHATKIT_THROTTLE_ANON_BUDGET,
    ) == ("30/min", "30/min", "600/min", "")


# --- the anonymous budget ------------------------------------------------------------------


def test_a_spent_anonymous_budget_refuses_signed_out_callers_and_alerts(
    upstream, settings, django_user_model
):
    settings.CHATKIT_THROTTLE_ADDRESS = "100/min"
    settings.CHATKIT_THROTTLE_ANON_BUDGET = "3/min"
    caches["default"].delete(Limit("budget", "anonymous", 3, 60).cache_key)
    callers = [APIClient(REMOTE_ADDR=f"10.9.{secrets.randbelow(250)}.{n}") for n in range(5)]
    answers = [caller.post(URL) for caller in callers]

    assert [answer.status_code for answer in answers] == [200, 200, 200, 429, 429]
    assert answers[3].json()["error"]["code"] == "anonymous_budget_spent"
    assert 1 <= int(answers[3]["Retry-After"]) <= 60
    # Both refusals share the minute's one row, which counts them.
    [row] = SessionAttempt.objects.filter(api_error_code="anonymous_budget_spent")
    assert row.requests == 2
    assert {answer.json()["error"]["request_id"] for answer in answers[3:]} == {row.request_id}

    alerts_evaluate()
    alert = Alert.objects.get(rule="anonymous_budget")
    assert (alert.state, alert.count) == (Alert.State.FIRING, 2)

    # Signed-in users do not draw on it.
    user = django_user_model.objects.create_user(username=f"budget-{secrets.token_hex(4)}")
    member = APIClient(REMOTE_ADDR="10.9.0.1")
    member.force_login(user)
    assert member.post(URL).status_code == 200


def test_a_caller_refused_by_its_own_limit_spends_nothing_of_the_budget(
    upstream, settings, address
):
    settings.CHATKIT_THROTTLE_ADDRESS = "1/min"
    settings.CHATKIT_THROTTLE_ANON_BUDGET = "2/min"
    caches["default"].delete(Limit("budget", "anonymous", 2, 60).cache_key)
    script = APIClient(REMOTE_ADDR=address)
    assert statuses(script, 5, drop_cookies=True) == [200, 429, 429, 429, 429]
    assert APIClient(REMOTE_ADDR=address + "1").post(URL).status_code == 200


# --- what a flood leaves in the audit log --------------------------------------------------


def test_a_throttled_caller_gets_one_row_a_minute_that_counts_its_refusals(
    upstream, settings, address
):
    settings.CHATKIT_THROTTLE_ADDRESS = "1/min"
    script = APIClient(REMOTE_ADDR=address)
    # Twenty seconds apart, across a minute's end: the window is not over, the minute is.
    start = timezone.now().replace(second=50, microsecond=0) + timedelta(minutes=1)
    with time_machine.travel(start, tick=False):
        assert statuses(script, 21, drop_cookies=True) == [200] + [429] * 20
    with time_machine.travel(start + timedelta(seconds=20), tick=False):
        assert statuses(script, 5, drop_cookies=True) == [429] * 5

    rows = SessionAttempt.objects.filter(outcome="rejected").order_by("created_at")
    assert [(row.api_error_code, row.requests) for row in rows] == [
        ("rate_limited", 20),
        ("rate_limited", 5),
    ]
    assert SessionAttempt.objects.count() == 3

    attempt_stats_aggregate()
    refused = AttemptMinuteStat.objects.filter(outcome="rejected").order_by("minute")
    assert [stat.attempts for stat in refused] == [20, 5]


def test_junk_workflows_are_one_placeholder_kept_only_in_the_message(upstream, settings):
    junk = [f"wf_junk_{n}\r\nX-Injected: {n}\x1b[31m" for n in range(21)]
    client = APIClient()
    answers = [client.post(URL, {"workflow_id": value}, format="json") for value in junk]

    assert {answer.json()["error"]["code"] for answer in answers} == {"workflow_not_allowed"}
    rows = SessionAttempt.objects.order_by("id")
    assert {row.workflow_id for row in rows} == {"(refused)"}
    first = rows[0].error_message
    assert (
        first == "This workflow is not available here. (workflow_id: wf_junk_0  X-Injected: 0 [31m)"
    )
    assert not any(c in row.error_message for row in rows for c in "\r\n\x1b")

    attempt_stats_aggregate()
    stats = AttemptMinuteStat.objects.all()
    assert {(stat.workflow_id, stat.outcome) for stat in stats} == {("(refused)", "rejected")}
    assert sum(stat.attempts for stat in stats) == 21


def test_rows_refused_before_the_body_is_read_name_no_workflow(upstream, settings, address):
    settings.CHATKIT_THROTTLE_ADDRESS = "1/min"
    script = APIClient(REMOTE_ADDR=address)
    body = {"workflow_id": settings.OPENAI_WORKFLOW_ID}
    for expected in (200, 429):
        script.cookies.clear()
        assert script.post(URL, body, format="json").status_code == expected
    # Throttled before the body was read: no workflow, and no placeholder either.
    assert SessionAttempt.objects.get(outcome="rejected").workflow_id == ""
    # A workflow_id that is no text is not kept either.
    other = APIClient(REMOTE_ADDR=address + "1")
    assert other.post(URL, {"workflow_id": 5}, format="json").status_code == 400
    assert SessionAttempt.objects.latest("id").workflow_id == ""


# --- proxies ------------------------------------------------------------------------------


@pytest.fixture
def fresh_process(monkeypatch):
    """As if the process had just started: the once-per-process warning not yet given."""
    once = functools.cache(apis._warn_forwarded_ignored.__wrapped__)
    monkeypatch.setattr(apis, "_warn_forwarded_ignored", once)


def test_forwarded_for_without_num_proxies_warns_once_per_process(
    upstream, settings, caplog, fresh_process
):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 0}
    caplog.set_level(logging.WARNING, logger="sessions_api.apis")
    client = APIClient(REMOTE_ADDR="10.0.0.1")
    for _ in range(3):
        client.post(URL, HTTP_X_FORWARDED_FOR="203.0.113.9")
    warnings = [r.getMessage() for r in caplog.records if r.name == "sessions_api.apis"]
    assert len(warnings) == 1
    assert "DJANGO_NUM_PROXIES" in warnings[0]


def test_no_warning_without_the_header_or_with_proxies_set(
    upstream, settings, caplog, fresh_process
):
    caplog.set_level(logging.WARNING, logger="sessions_api.apis")
    APIClient(REMOTE_ADDR="10.0.0.1").post(URL)
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    APIClient(REMOTE_ADDR="10.0.0.1").post(URL, HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert [r for r in caplog.records if r.name == "sessions_api.apis"] == []


def test_behind_one_proxy_the_forwarded_address_is_counted(upstream, settings, address):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    settings.CHATKIT_THROTTLE_ADDRESS = "1/min"
    proxy = APIClient(REMOTE_ADDR="10.255.255.254")
    assert proxy.post(URL, HTTP_X_FORWARDED_FOR=address).status_code == 200
    proxy.cookies.clear()
    assert proxy.post(URL, HTTP_X_FORWARDED_FOR=address).status_code == 429
    proxy.cookies.clear()
    assert proxy.post(URL, HTTP_X_FORWARDED_FOR=address + "1").status_code == 200


# --- counting -----------------------------------------------------------------------------


def test_a_broken_cache_lets_requests_through_and_is_skipped_for_a_while(
    upstream, settings, address, caplog, unreachable_cache, monkeypatch
):
    settings.CHATKIT_THROTTLE_ADDRESS = "1/min"
    caplog.set_level(logging.WARNING, logger="broker.redis_breaker")
    asked = []
    real_count = throttle.count
    monkeypatch.setattr(throttle, "count", lambda limits: asked.append(1) or real_count(limits))
    client = APIClient(REMOTE_ADDR=address)

    assert statuses(client, 3, drop_cookies=True) == [200, 200, 200]
    assert len(asked) == 1  # after its failure, Redis is not asked again for a while
    warnings = [r.getMessage() for r in caplog.records if r.name == "broker.redis_breaker"]
    assert warnings == [
        "Redis failed (throttle: ConnectionError); skipping it for 5 s: throttles allow, alerts "
        "wait for the minute sweep."
    ]


def test_parallel_requests_cannot_slip_past_the_limit(settings, address):
    """Every worker thread counts at once; exactly the limit gets through."""
    settings.CHATKIT_THROTTLE_ADDRESS = "20/min"
    factory = APIRequestFactory()
    start = threading.Barrier(40)
    allowed = []

    def request_once() -> None:
        request = Request(factory.post(URL, REMOTE_ADDR=address))
        request.user = AnonymousUser()
        start.wait()
        try:
            allowed.append(SessionCreateThrottle().allow_request(request, None))
        except errors.RateLimited:
            allowed.append(False)

    threads = [threading.Thread(target=request_once) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert (allowed.count(True), allowed.count(False)) == (20, 20)


def test_without_redis_the_local_cache_counts(upstream, settings, address):
    """`make run` without Redis: each process counts on its own, in its local memory."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    caches["default"].clear()  # the budget's counter outlives a test in local memory
    settings.CHATKIT_THROTTLE_ADDRESS = "2/min"
    settings.CHATKIT_THROTTLE_ANON_BUDGET = "3/min"
    client = APIClient(REMOTE_ADDR=address)
    assert statuses(client, 3, drop_cookies=True) == [200, 200, 429]
    assert int(client.post(URL)["Retry-After"]) == 60
    other = APIClient(REMOTE_ADDR=address + "1")
    assert [other.post(URL).json().get("error", {}).get("code") for _ in range(2)] == [
        None,
        "anonymous_budget_spent",
    ]


def test_later_requests_do_not_restart_the_window(upstream, settings, address):
    """The window starts with the first request; refusals must not push its end further out."""
    settings.CHATKIT_THROTTLE_ADDRESS = "1/min"
    client = APIClient(REMOTE_ADDR=address)
    assert client.post(URL).status_code == 200
    time.sleep(1.1)  # Redis keeps time itself: a second must really pass
    client.cookies.clear()
    refused = client.post(URL)
    assert refused.status_code == 429
    assert 57 <= int(refused["Retry-After"]) <= 59


def test_a_counter_that_lost_its_expiry_gets_its_window_back(settings):
    limit = Limit("address", f"lost-{secrets.token_hex(4)}", 1, 60)
    backend = caches["default"]
    backend.set(limit.cache_key, 5, timeout=None)  # no expiry: would refuse for ever

    assert throttle.count([limit]) == (1, 60)
    client = backend._cache.get_client()
    assert 59 <= client.ttl(backend.make_and_validate_key(limit.cache_key)) <= 60


def test_the_local_window_ends_and_counting_starts_over(upstream, settings, address):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    settings.CHATKIT_THROTTLE_ADDRESS = "1/min"
    client = APIClient(REMOTE_ADDR=address)
    start = time.time()
    with time_machine.travel(start, tick=False):
        assert statuses(client, 2, drop_cookies=True) == [200, 429]
    with time_machine.travel(start + 61, tick=False):
        client.cookies.clear()
        assert client.post(URL).status_code == 200


def test_other_methods_are_not_counted(upstream, settings, address):
    settings.CHATKIT_THROTTLE_ADDRESS = "1/min"
    client = APIClient(REMOTE_ADDR=address)
    assert [client.get(URL).status_code for _ in range(3)] == [405, 405, 405]
    assert client.post(URL).status_code == 200


def test_the_script_is_made_once_per_process(monkeypatch):
    # Django's get_client() builds a new redis-py client on every call, which cost more CPU
    # than the round trip itself; the throttle asks once per redis-py client, and threads (and
    # gevent's greenlets), each with a cache backend of its own, share that client.
    backend = caches["default"]
    vars(backend._cache).pop("_throttle_script", None)  # made by an earlier test, maybe
    asked = []
    real = backend._cache.get_client
    monkeypatch.setattr(
        backend._cache, "get_client", lambda *args, **kwargs: asked.append(kwargs) or real()
    )
    prefix = f"throttle-client-{secrets.token_hex(4)}"
    limits = [Limit("address", f"{prefix}-{n}", 1, 60) for n in (1, 2, 1)]
    elsewhere = []
    thread = threading.Thread(
        target=lambda: elsewhere.append((caches["default"], throttle.count([limits[1]])))
    )

    assert [throttle.count([limit]) for limit in limits] == [(0, 0), (0, 0), (1, 60)]
    thread.start()
    thread.join()
    [(other_backend, counted)] = elsewhere
    assert other_backend is not backend
    assert other_backend._cache is backend._cache
    assert counted == (1, 60)
    assert asked == [{"write": True}]
