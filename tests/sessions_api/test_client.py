"""The upstream client against real sockets: pytest-httpserver, or bare TCP servers for the
behaviours an HTTP framework will not produce (silence, hang-ups, slow drips, keep-alive).

No mocks of requests or urllib3: retries and timeouts only mean something over a real socket.
"""

import contextlib
import functools
import gzip
import http.server
import json
import logging
import pickle
import re
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
import requests
import trustme
import urllib3
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from sessions_api.client import (
    ChatKitClient,
    ClientConfig,
    SessionResult,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamInvalidResponse,
    UpstreamNetworkError,
    UpstreamTimeout,
)
from sessions_api.transport import CheckedHTTPConnection

# Canaries: random per run, so a leak cannot hide behind a value that happens to be filtered.
API_KEY = "sk-canary-" + secrets.token_hex(12)
CLIENT_SECRET = "ek_canary_" + secrets.token_hex(16)
GATEWAY_KEY = "gw." + secrets.token_hex(12)
SESSIONS = "/v1/chatkit/sessions"
OK_BODY = {
    "id": "cksess_123",
    "object": "chatkit.session",
    "client_secret": CLIENT_SECRET,
    "expires_at": 1712349876,
    "status": "active",
    "user": "user-1",
    "workflow": {"id": "wf_abc", "version": None, "state_variables": None},
}


@pytest.fixture
def sleeps() -> list[float]:
    """Backoff sleeps requested by the client; recorded instead of slept, to keep tests fast."""
    return []


@pytest.fixture
def make_client(sleeps):
    clients: list[ChatKitClient] = []

    def make(base_url: str, *, real_sleep: bool = False, clock=None, **overrides) -> ChatKitClient:
        values = {
            "base_url": base_url,
            "api_key": API_KEY,
            "connect_timeout": 0.5,
            "read_timeout": 1.0,
            "total_timeout": 3.0,
        }
        values.update(overrides)
        client = ChatKitClient(
            ClientConfig(**values),
            sleep=time.sleep if real_sleep else sleeps.append,
            clock=clock or time.monotonic,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def base_url(httpserver) -> str:
    return httpserver.url_for("/v1/")  # trailing slash on purpose: the config strips it


@pytest.fixture
def raw_server():
    """Start bare TCP servers: `start(behaviour)` -> (base_url, stats).

    `behaviour(conn, stats, stop)` runs in its own thread per accepted connection.
    """
    stop = threading.Event()
    sockets: list[socket.socket] = []

    def start(behaviour) -> tuple[str, dict[str, int]]:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.05)
        sockets.append(listener)
        stats = {"connections": 0, "requests": 0}

        def accept_loop() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                conn.settimeout(None)
                sockets.append(conn)
                stats["connections"] += 1
                threading.Thread(target=behaviour, args=(conn, stats, stop), daemon=True).start()

        threading.Thread(target=accept_loop, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}/v1", stats

    yield start
    stop.set()
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv()
        except OSError:
            pass
        sock.close()


@pytest.fixture
def keepalive_server():
    """An HTTP/1.1 server that keeps connections open (werkzeug's always closes them): its URL
    and the client port of each request. A test may put a barrier in `calls_at_once`, which
    every request waits at before it is answered."""
    client_ports: list[int] = []
    calls_at_once: list[threading.Barrier] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            client_ports.append(self.client_address[1])
            for barrier in calls_at_once:
                barrier.wait()
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps(OK_BODY).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", client_ports, calls_at_once
    server.shutdown()
    server.server_close()


@pytest.fixture
def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


@pytest.fixture
def full_backlog_port():
    """A port whose listen queue is full, so a new connect() gets no answer: a connect timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.settimeout(0.2)
        fillers.append(filler)
        try:
            filler.connect(("127.0.0.1", port))
        except TimeoutError:
            break
    else:
        pytest.skip("this kernel answers connects beyond the listen backlog")
    yield port
    for sock in [*fillers, listener]:
        sock.close()


def read_request(conn: socket.socket) -> bytes | None:
    """Read one HTTP request (headers and Content-Length body); None if the peer went away."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return data


def silent(conn, stats, stop) -> None:
    """Read the request, then never answer."""
    if read_request(conn) is not None:
        stats["requests"] += 1
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass


def hang_up(conn, stats, stop) -> None:
    """Read the request, then close without a word (a crashed upstream or proxy)."""
    if read_request(conn) is not None:
        stats["requests"] += 1
    conn.close()


def answering(respond):
    """A behaviour that reads one request and counts it, then runs `respond(conn, stop)`.

    A client that has hung up meanwhile ends it quietly.
    """

    @functools.wraps(respond)
    def behaviour(conn, stats, stop) -> None:
        if read_request(conn) is None:
            return
        stats["requests"] += 1
        try:
            respond(conn, stop)
        except OSError:
            pass

    return behaviour


@answering
def slow_503(conn, stop) -> None:
    if not stop.wait(0.3):
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        conn.close()


@answering
def drip(conn, stop) -> None:
    """A 200 whose body arrives one byte at a time, each well inside the read timeout."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    conn.sendall(b"x-request-id: req_drip\r\nContent-Length: 100000\r\n\r\n")
    while not stop.wait(0.05):
        conn.sendall(b" ")


@answering
def stall_mid_body(conn, stop) -> None:
    """A 200 that sends its headers and the start of its body, then nothing more."""
    conn.sendall(PARTIAL_200)
    stop.wait()


@answering
def cut_mid_body(conn, stop) -> None:
    """A 200 whose connection drops after the start of its body (a crashed proxy)."""
    conn.sendall(PARTIAL_200)
    conn.close()


PARTIAL_200 = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: req_partial\r\n"
    b'Content-Length: 100\r\n\r\n{"id": '
)


def expect_create(httpserver, *, oneshot: bool = False):
    expect = httpserver.expect_oneshot_request if oneshot else httpserver.expect_request
    return expect(SESSIONS, method="POST")


def all_text(outcome: object, caplog) -> str:
    """Every rendering of an outcome a log or error page could show, plus all captured logs."""
    parts = [str(outcome), repr(outcome), caplog.text]
    parts += [record.getMessage() for record in caplog.records]
    if isinstance(outcome, BaseException):
        parts += traceback.format_exception(outcome)
        parts += [str(value) for value in vars(outcome).values()]
    return "\n".join(parts)


# --- what is sent ---------------------------------------------------------------------------


def test_create_sends_headers_and_minimal_body(httpserver, base_url, make_client):
    expect_create(httpserver).respond_with_json(OK_BODY)

    make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    ((request, _),) = httpserver.log
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.headers["OpenAI-Beta"] == "chatkit_beta=v1"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"] == "chatkit-session-broker/1.0"
    assert json.loads(request.get_data()) == {"workflow": {"id": "wf_abc"}, "user": "user-1"}


def test_create_sends_optional_fields_when_given(httpserver, base_url, make_client):
    expect_create(httpserver).respond_with_json(OK_BODY)
    configuration = {"history": {"enabled": False}}

    make_client(base_url).create_session(
        workflow_id="wf_abc",
        user="user-1",
        expires_after_seconds=300,
        rate_limit_per_minute=5,
        chatkit_configuration=configuration,
    )

    ((request, _),) = httpserver.log
    assert json.loads(request.get_data()) == {
        "workflow": {"id": "wf_abc"},
        "user": "user-1",
        "expires_after": {"anchor": "created_at", "seconds": 300},
        "rate_limits": {"max_requests_per_1_minute": 5},
        "chatkit_configuration": configuration,
    }


def test_cancel_posts_without_body_to_the_quoted_path(httpserver, base_url, make_client):
    raw_paths = []

    def handler(request: Request) -> Response:
        raw_paths.append(request.environ["RAW_URI"])
        assert request.get_data() == b""
        body = {**OK_BODY, "id": "cksess_1/../x?y", "client_secret": "", "status": "cancelled"}
        return Response(json.dumps(body), content_type="application/json")

    cancel_path = re.compile(r"^/v1/chatkit/sessions/.+/cancel$")
    httpserver.expect_request(cancel_path, method="POST").respond_with_handler(handler)

    result = make_client(base_url).cancel_session("cksess_1/../x?y")

    assert raw_paths == ["/v1/chatkit/sessions/cksess_1%2F..%2Fx%3Fy/cancel"]
    ((request, _),) = httpserver.log
    assert request.method == "POST"
    assert request.headers["OpenAI-Beta"] == "chatkit_beta=v1"
    assert result.status == "cancelled"
    assert result.client_secret == ""


# --- success --------------------------------------------------------------------------------


def test_latency_includes_the_upstream_wait(httpserver, base_url, make_client):
    def slow(request):
        time.sleep(0.05)
        return Response(json.dumps(OK_BODY), content_type="application/json")

    expect_create(httpserver).respond_with_handler(slow)

    result = make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert result.latency_ms >= 50


def test_success_is_parsed_into_a_session_result(httpserver, base_url, make_client):
    expect_create(httpserver).respond_with_json(
        {**OK_BODY, "expires_at": "1712349876"}, headers={"x-request-id": "req_abc"}
    )

    result = make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert result == SessionResult(
        session_id="cksess_123",
        client_secret=CLIENT_SECRET,
        expires_at=1712349876,
        status="active",
        user="user-1",
        workflow_id="wf_abc",
        request_id="req_abc",
        attempts=1,
        latency_ms=result.latency_ms,
    )
    assert CLIENT_SECRET not in repr(result)
    assert CLIENT_SECRET not in str(result)


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [(1712349876.7, 1712349876), ("12", 12), ("soon", None), (True, None), (None, None)],
)
def test_expires_at_is_tolerant(httpserver, base_url, make_client, raw, parsed):
    expect_create(httpserver).respond_with_json({**OK_BODY, "expires_at": raw})

    result = make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert result.expires_at == parsed


# --- retries --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_retried_twice_then_raised(httpserver, base_url, make_client, sleeps, status):
    expect_create(httpserver).respond_with_data("", status=status)

    with pytest.raises(UpstreamHTTPError) as caught:
        make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert len(httpserver.log) == 3
    assert caught.value.status_code == status
    assert caught.value.attempts == 3
    assert type(caught.value) is UpstreamHTTPError
    # Backoff 0.25 s then 0.5 s, each times a jitter factor in [0.5, 1].
    assert len(sleeps) == 2
    assert 0.125 <= sleeps[0] <= 0.25
    assert 0.25 <= sleeps[1] <= 0.5


def test_5xx_then_success_returns_the_session(httpserver, base_url, make_client):
    expect_create(httpserver, oneshot=True).respond_with_data("bad gateway", status=502)
    expect_create(httpserver, oneshot=True).respond_with_json(OK_BODY)

    result = make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert len(httpserver.log) == 2
    assert result.attempts == 2
    assert result.client_secret == CLIENT_SECRET


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_4xx_is_never_retried(httpserver, base_url, make_client, sleeps, status):
    expect_create(httpserver).respond_with_json({"error": {"message": "no"}}, status=status)

    with pytest.raises(UpstreamHTTPError) as caught:
        make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert len(httpserver.log) == 1
    assert caught.value.status_code == status
    assert caught.value.attempts == 1
    assert sleeps == []


def test_429_with_short_retry_after_is_retried(httpserver, base_url, make_client, sleeps):
    expect_create(httpserver, oneshot=True).respond_with_data(
        "", status=429, headers={"Retry-After": "1"}
    )
    expect_create(httpserver, oneshot=True).respond_with_json(OK_BODY)

    result = make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert len(httpserver.log) == 2
    assert result.attempts == 2
    assert sleeps == [1.0]


def test_429_retry_after_ms_is_preferred(httpserver, base_url, make_client, sleeps):
    expect_create(httpserver, oneshot=True).respond_with_data(
        "", status=429, headers={"retry-after-ms": "250", "Retry-After": "1"}
    )
    expect_create(httpserver, oneshot=True).respond_with_json(OK_BODY)

    make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert sleeps == [0.25]


@pytest.mark.parametrize("retry_after", ["30", "2.5"])
def test_429_with_long_retry_after_is_not_retried(
    httpserver, base_url, make_client, sleeps, retry_after
):
    expect_create(httpserver).respond_with_data(
        "", status=429, headers={"Retry-After": retry_after}
    )
    # A budget this large cannot be what stops the retry: max_retry_after (2 s) must.
    client = make_client(base_url, total_timeout=60.0)

    with pytest.raises(UpstreamHTTPError) as caught:
        client.create_session(workflow_id="wf_abc", user="user-1")

    assert len(httpserver.log) == 1
    assert caught.value.retry_after == float(retry_after)
    assert sleeps == []


def test_429_without_retry_after_is_not_retried(httpserver, base_url, make_client, sleeps):
    expect_create(httpserver).respond_with_json({"error": {"message": "slow down"}}, status=429)

    with pytest.raises(UpstreamHTTPError) as caught:
        make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert len(httpserver.log) == 1
    assert caught.value.retry_after is None
    assert sleeps == []


def test_backoff_doubles_up_to_one_second(httpserver, base_url, make_client, sleeps):
    expect_create(httpserver).respond_with_data("", status=502)

    with pytest.raises(UpstreamHTTPError):
        make_client(base_url, max_retries=4).create_session(workflow_id="wf_abc", user="user-1")

    assert len(httpserver.log) == 5
    # 0.25, 0.5, 1, 1 (capped) s, each times a jitter factor in [0.5, 1].
    bounds = [(0.125, 0.25), (0.25, 0.5), (0.5, 1.0), (0.5, 1.0)]
    assert len(sleeps) == 4
    assert all(low <= sleep <= high for sleep, (low, high) in zip(sleeps, bounds, strict=True))


def test_429_with_retry_after_of_exactly_the_limit_is_retried(
    httpserver, base_url, make_client, sleeps
):
    expect_create(httpserver, oneshot=True).respond_with_data(
        "", status=429, headers={"Retry-After": "2"}
    )
    expect_create(httpserver, oneshot=True).respond_with_json(OK_BODY)

    result = make_client(base_url, total_timeout=60.0).create_session(
        workflow_id="wf_abc", user="user-1"
    )

    assert result.attempts == 2
    assert sleeps == [2.0]


@pytest.mark.parametrize(("retry_after", "waits"), [("1", 1.0), ("2", 2.0)])
def test_503_waits_as_long_as_its_retry_after_asks(
    httpserver, base_url, make_client, sleeps, retry_after, waits
):
    expect_create(httpserver).respond_with_data(
        "", status=503, headers={"Retry-After": retry_after}
    )

    with pytest.raises(UpstreamHTTPError) as caught:
        make_client(base_url, total_timeout=60.0).create_session(
            workflow_id="wf_abc", user="user-1"
        )

    assert len(httpserver.log) == 3
    assert caught.value.retry_after == waits
    assert sleeps == [waits, waits]


def test_503_asking_for_no_wait_still_backs_off(httpserver, base_url, make_client, sleeps):
    expect_create(httpserver).respond_with_data("", status=503, headers={"Retry-After": "0"})

    with pytest.raises(UpstreamHTTPError):
        make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert len(sleeps) == 2
    assert 0.125 <= sleeps[0] <= 0.25
    assert 0.25 <= sleeps[1] <= 0.5


def test_503_asking_for_longer_than_the_limit_is_not_retried(
    httpserver, base_url, make_client, sleeps
):
    expect_create(httpserver).respond_with_data("", status=503, headers={"Retry-After": "30"})
    # A budget this large cannot be what stops the retry: max_retry_after (2 s) must.
    client = make_client(base_url, total_timeout=60.0)

    with pytest.raises(UpstreamHTTPError) as caught:
        client.create_session(workflow_id="wf_abc", user="user-1")

    assert len(httpserver.log) == 1
    assert caught.value.retry_after == 30.0
    assert sleeps == []


@pytest.mark.parametrize("status", [500, 502, 504])
def test_retry_after_on_other_5xx_is_ignored(httpserver, base_url, make_client, sleeps, status):
    expect_create(httpserver).respond_with_data("", status=status, headers={"Retry-After": "30"})

    with pytest.raises(UpstreamHTTPError) as caught:
        make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert len(httpserver.log) == 3
    assert caught.value.retry_after is None
    assert len(sleeps) == 2
    assert 0.125 <= sleeps[0] <= 0.25


def http_date(delta: timedelta, *, naive: bool = False) -> str:
    when = datetime.now(UTC) + delta
    return format_datetime(when.replace(tzinfo=None)) if naive else format_datetime(when, True)


@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [
        ({"Retry-After": " 1.5 "}, 1.5, 1.5),
        ({"Retry-After": "-3"}, 0.0, 0.0),  # a clock skewed upstream: no wait, not a negative one
        ({"retry-after-ms": "soon", "Retry-After": "1"}, 1.0, 1.0),
        ({"retry-after-ms": "", "Retry-After": "1"}, 1.0, 1.0),
        ({"Retry-After": "Sun, 06 Nov 1994 08:49:37 GMT"}, 0.0, 0.0),  # a date gone by
    ],
    ids=["spaces", "negative", "bad-ms-falls-back", "blank-ms-falls-back", "past-date"],
)
def test_429_retry_after_forms_that_are_retried(
    httpserver, base_url, make_client, sleeps, headers, low, high
):
    expect_create(httpserver, oneshot=True).respond_with_data("", status=429, headers=headers)
    expect_create(httpserver, oneshot=True).respond_with_json(OK_BODY)

    assert make_client(base_url).create_session(workflow_id="wf_abc", user="u").attempts == 2

    assert len(sleeps) == 1
    assert low <= sleeps[0] <= high


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        # Dates are made when the test runs (a collected value would age during a long run).
        (lambda: http_date(timedelta(hours=1)), 3590.0, 3600.0),
        (lambda: http_date(timedelta(hours=1), naive=True), 3590.0, 3600.0),  # "-0000": UTC
        (lambda: "soon", None, None),
        (lambda: "inf", None, None),
        (lambda: "nan", None, None),
    ],
    ids=["date", "date-without-zone", "word", "inf", "nan"],
)
def test_429_retry_after_forms_that_are_not_retried(
    httpserver, base_url, make_client, sleeps, value, low, high
):
    expect_create(httpserver).respond_with_data("", status=429, headers={"Retry-After": value()})

    with pytest.raises(UpstreamHTTPError) as caught:
        make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert len(httpserver.log) == 1
    assert sleeps == []
    if low is None:
        assert caught.value.retry_after is None
    else:
        assert low <= caught.value.retry_after <= high


def test_a_retry_is_not_started_with_less_than_a_tenth_of_a_second_left(
    httpserver, base_url, make_client, sleeps
):
    expect_create(httpserver).respond_with_data("", status=429, headers={"Retry-After": "0.95"})
    client = make_client(base_url, total_timeout=1.0, clock=lambda: 0.0)

    with pytest.raises(UpstreamHTTPError):
        client.create_session(workflow_id="wf_abc", user="user-1")

    assert len(httpserver.log) == 1
    assert sleeps == []


def test_a_retry_that_leaves_exactly_a_tenth_of_a_second_is_made(
    httpserver, base_url, make_client, sleeps
):
    expect_create(httpserver, oneshot=True).respond_with_data(
        "", status=429, headers={"Retry-After": "2"}
    )
    expect_create(httpserver, oneshot=True).respond_with_json(OK_BODY)
    # 0 + 2.0 s of waiting <= 2.1 s budget - 0.1 s, exactly (these floats are exact).
    client = make_client(base_url, total_timeout=2.1, clock=lambda: 0.0)

    assert client.create_session(workflow_id="wf_abc", user="user-1").attempts == 2
    assert sleeps == [2.0]


# --- error bodies ---------------------------------------------------------------------------


def test_error_envelope_is_parsed(httpserver, base_url, make_client):
    expect_create(httpserver).respond_with_json(
        {
            "error": {
                "message": "Workflow with id 'wf_abc' not found.",
                "type": "invalid_request_error",
                "param": "workflow",
                "code": "workflow_not_found",
            }
        },
        status=404,
        headers={"x-request-id": "req_404"},
    )

    with pytest.raises(UpstreamHTTPError) as caught:
        make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    error = caught.value
    assert (error.status_code, error.error_type, error.error_code, error.error_param) == (
        404,
        "invalid_request_error",
        "workflow_not_found",
        "workflow",
    )
    assert error.error_message == "Workflow with id 'wf_abc' not found."
    assert error.request_id == "req_404"
    assert str(error) == (
        "UpstreamHTTPError status=404 code=workflow_not_found request_id=req_404 attempts=1: "
        "Workflow with id 'wf_abc' not found."
    )


def test_error_fields_that_echo_the_key_are_cleaned_like_the_message(
    httpserver, base_url, make_client
):
    # Found by the run-wide canary sweep: str(error) quotes the code, and so did the log line.
    echoed = {"message": "no", "type": f"t\r\n{API_KEY}", "code": API_KEY, "param": [API_KEY]}
    expect_create(httpserver).respond_with_json({"error": echoed}, status=401)

    with pytest.raises(UpstreamHTTPError) as caught:
        make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    error = caught.value
    fields = (error.error_type, error.error_code, error.error_param)
    assert fields == ("t  [REDACTED]", "[REDACTED]", "['[REDACTED]']")
    assert API_KEY not in str(error)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("<html>\r\n<body>\n  <h1>502   Bad Gateway</h1>\n</body></html>", None),
        ("", "HTTP 502 with empty body"),
        ('{"detail": "not an envelope"}', '{"detail": "not an envelope"}'),
        ("x" * 5000, None),
    ],
)
def test_non_json_error_bodies_become_a_short_snippet(
    httpserver, base_url, make_client, body, message
):
    expect_create(httpserver).respond_with_data(
        body, status=502, content_type="text/html", headers={"x-request-id": "req_proxy"}
    )

    with pytest.raises(UpstreamHTTPError) as caught:
        make_client(base_url, max_retries=0).create_session(workflow_id="wf_abc", user="user-1")

    error = caught.value
    assert error.request_id == "req_proxy"
    assert error.error_code is None
    assert len(error.error_message) <= 300
    assert "\n" not in error.error_message and "  " not in error.error_message
    if message is not None:
        assert error.error_message == message
    if body.startswith("<html>"):
        assert error.error_message == "<html> <body> <h1>502 Bad Gateway</h1> </body></html>"


@pytest.mark.parametrize(
    ("body", "message", "error_type", "code"),
    [
        # Some gateways answer with a bare string.
        ({"error": "Upstream overloaded, try later"}, "Upstream overloaded, try later", None, None),
        (
            {"error": {"message": "Ungültiger Wert für 'user' – höchstens 512 Zeichen"}},
            "Ungültiger Wert für 'user' – höchstens 512 Zeichen",
            None,
            None,
        ),
        # Numbers where strings belong become strings.
        ({"error": {"message": "slow down", "type": 7, "code": 429}}, "slow down", "7", "429"),
        # No message: the body itself is the best description, and type and code still count.
        (
            {"error": {"message": "", "type": "server_error", "code": "engine_overloaded"}},
            '{"error": {"message": "", "type": "server_error", "code": "engine_overloaded"}}',
            "server_error",
            "engine_overloaded",
        ),
        ({"error": None}, '{"error": null}', None, None),
    ],
    ids=["string", "unicode", "numbers", "no-message", "null"],
)
def test_error_envelope_variants(
    httpserver, base_url, make_client, body, message, error_type, code
):
    expect_create(httpserver).respond_with_data(
        json.dumps(body), status=400, content_type="application/json"
    )

    with pytest.raises(UpstreamHTTPError) as caught:
        make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    error = caught.value
    assert (error.error_message, error.error_type, error.error_code) == (message, error_type, code)


def test_an_error_body_that_is_not_utf8_is_still_described(httpserver, base_url, make_client):
    body = "<h1>Ungültige Anfrage</h1>".encode("latin-1")
    expect_create(httpserver).respond_with_data(body, status=400, content_type="text/html")

    with pytest.raises(UpstreamHTTPError) as caught:
        make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert caught.value.error_message == "<h1>Ung\ufffdltige Anfrage</h1>"


@pytest.mark.parametrize("status", [400, 200])
def test_a_snippet_is_cut_from_the_first_1200_bytes_only(httpserver, base_url, make_client, status):
    # Padding that collapses to one space would otherwise pull in what follows it.
    body = "<html>" + "\n" * 1194 + "<p>tail</p>"
    expect_create(httpserver).respond_with_data(body, status=status, content_type="text/html")

    with pytest.raises((UpstreamHTTPError, UpstreamInvalidResponse)) as caught:
        make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert caught.value.error_message.endswith("<html>")
    assert "tail" not in caught.value.error_message


@pytest.mark.parametrize("status", [300, 307])
def test_redirects_are_errors_and_never_followed(httpserver, base_url, make_client, status):
    expect_create(httpserver).respond_with_json(
        OK_BODY, status=status, headers={"Location": "/v1/elsewhere"}
    )
    httpserver.expect_request("/v1/elsewhere").respond_with_json(OK_BODY)

    with pytest.raises(UpstreamHTTPError) as caught:
        make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert caught.value.status_code == status
    assert [request.path for request, _ in httpserver.log] == [SESSIONS]


# --- timeouts and the wall-clock budget -----------------------------------------------------


def test_read_timeout_is_not_retried(raw_server, make_client, sleeps):
    url, stats = raw_server(silent)

    with pytest.raises(UpstreamTimeout) as caught:
        make_client(url, read_timeout=0.3).create_session(workflow_id="wf_abc", user="user-1")

    assert stats["requests"] == 1
    assert caught.value.attempts == 1
    assert type(caught.value) is UpstreamTimeout
    assert sleeps == []


@answering
def drip_then_stall(conn, stop) -> None:
    """A 200 whose body trickles for most of the budget, then stops."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    for _ in range(16):  # 0.8 s
        if stop.wait(0.05):
            return
        conn.sendall(b" ")
    stop.wait()


@pytest.mark.parametrize(
    "behaviour",
    [silent, stall_mid_body, drip_then_stall],
    ids=["no-answer", "stalled-body", "stalled-late"],
)
def test_budget_holds_when_upstream_goes_silent(raw_server, make_client, behaviour):
    url, _ = raw_server(behaviour)
    # Each read may wait read_timeout, but never past what is left of the budget.
    client = make_client(url, real_sleep=True, read_timeout=5.0, total_timeout=1.0)

    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        client.create_session(workflow_id="wf_abc", user="user-1")

    assert time.monotonic() - started <= 1.0 + 0.5


def test_budget_holds_when_every_attempt_is_a_slow_503(raw_server, make_client):
    url, stats = raw_server(slow_503)
    client = make_client(url, real_sleep=True, total_timeout=1.0, max_retries=5)

    started = time.monotonic()
    with pytest.raises(UpstreamError) as caught:
        client.create_session(workflow_id="wf_abc", user="user-1")

    assert time.monotonic() - started <= 1.0 + 0.5
    assert caught.value.attempts == stats["requests"] >= 2
    assert caught.value.latency_ms <= 1500


def test_budget_holds_against_a_slow_drip_body(raw_server, make_client):
    url, _ = raw_server(drip)
    client = make_client(url, real_sleep=True, read_timeout=1.0, total_timeout=0.8)

    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as caught:
        client.create_session(workflow_id="wf_abc", user="user-1")

    assert time.monotonic() - started <= 0.8 + 0.5
    assert caught.value.status_code == 200
    assert caught.value.request_id == "req_drip"
    assert caught.value.attempts == 1


def stepping_clock(*readings: float):
    """A monotonic clock that reads these values in turn, then the last one for ever."""
    values = iter(readings)
    return lambda: next(values, readings[-1])


def test_a_read_timeout_inside_the_body_is_a_timeout(raw_server, make_client, sleeps):
    url, stats = raw_server(stall_mid_body)

    with pytest.raises(UpstreamTimeout) as caught:
        make_client(url, read_timeout=0.3).create_session(workflow_id="wf_abc", user="user-1")

    error = caught.value
    assert (error.status_code, error.request_id, error.attempts) == (200, "req_partial", 1)
    assert error.error_message == "read timed out in the HTTP 200 body"
    assert stats["requests"] == 1
    assert sleeps == []


def test_a_budget_spent_before_the_request_sends_nothing(httpserver, base_url, make_client):
    expect_create(httpserver).respond_with_json(OK_BODY)
    client = make_client(base_url, total_timeout=3.0, clock=stepping_clock(0.0, 3.0))

    with pytest.raises(UpstreamTimeout) as caught:
        client.create_session(workflow_id="wf_abc", user="user-1")

    error = caught.value
    assert error.error_message == "time budget spent before the request was sent"
    assert (error.status_code, error.attempts, error.latency_ms) == (None, 1, 3000)
    assert httpserver.log == []


def test_a_budget_spent_as_the_body_starts_is_a_timeout(httpserver, base_url, make_client):
    expect_create(httpserver).respond_with_json(OK_BODY, headers={"x-request-id": "req_late"})
    # Readings: the call's start, the attempt's start, then the first read of the body.
    client = make_client(base_url, total_timeout=3.0, clock=stepping_clock(0.0, 0.0, 3.0))

    with pytest.raises(UpstreamTimeout) as caught:
        client.create_session(workflow_id="wf_abc", user="user-1")

    error = caught.value
    assert error.error_message == "time budget spent while reading the HTTP 200 body"
    assert (error.status_code, error.request_id, error.attempts) == (200, "req_late", 1)


@pytest.mark.parametrize(("seconds", "latency_ms"), [(1.5, 1500), (0.0, 0)])
def test_latency_is_the_whole_call_in_milliseconds(
    httpserver, base_url, make_client, seconds, latency_ms
):
    now = [1000.0]

    def slow_upstream(request: Request) -> Response:
        now[0] += seconds
        status = 200 if request.get_json()["user"] == "ok" else 400
        return Response(json.dumps(OK_BODY), status=status, content_type="application/json")

    expect_create(httpserver).respond_with_handler(slow_upstream)
    client = make_client(base_url, clock=lambda: now[0])

    assert client.create_session(workflow_id="wf_abc", user="ok").latency_ms == latency_ms
    with pytest.raises(UpstreamHTTPError) as caught:
        client.create_session(workflow_id="wf_abc", user="refused")
    assert caught.value.latency_ms == latency_ms


# --- network failures -----------------------------------------------------------------------


def test_connection_refused_is_retried_then_raised(closed_port, make_client, sleeps):
    client = make_client(f"http://127.0.0.1:{closed_port}/v1")

    with pytest.raises(UpstreamNetworkError) as caught:
        client.create_session(workflow_id="wf_abc", user="user-1")

    assert caught.value.attempts == 3
    assert type(caught.value) is UpstreamNetworkError
    assert caught.value.status_code is None
    assert len(sleeps) == 2
    assert "refused" in caught.value.error_message.lower()


def test_connect_timeout_is_retried_then_raised(full_backlog_port, make_client, sleeps):
    client = make_client(f"http://127.0.0.1:{full_backlog_port}/v1", connect_timeout=0.2)

    with pytest.raises(UpstreamNetworkError) as caught:
        client.create_session(workflow_id="wf_abc", user="user-1")

    assert caught.value.attempts == 3
    assert len(sleeps) == 2
    assert "timed out" in caught.value.error_message


def test_hang_up_after_the_request_is_not_retried(raw_server, make_client, sleeps):
    url, stats = raw_server(hang_up)

    with pytest.raises(UpstreamNetworkError) as caught:
        make_client(url).create_session(workflow_id="wf_abc", user="user-1")

    assert caught.value.attempts == 1
    assert stats["requests"] == 1
    assert sleeps == []


def test_urllib3_never_retries_on_its_own(closed_port, make_client, caplog):
    caplog.set_level(logging.DEBUG, logger="urllib3")

    with pytest.raises(UpstreamNetworkError) as caught:
        make_client(f"http://127.0.0.1:{closed_port}/v1").create_session(
            workflow_id="wf_abc", user="user-1"
        )

    assert caught.value.error_message.startswith("NewConnectionError: ")
    assert isinstance(caught.value.__cause__, requests.ConnectionError)
    # Our loop made three attempts; a retrying pool would have made more connects of its own.
    connects = [r for r in caplog.records if "Starting new HTTP connection" in r.getMessage()]
    assert len(connects) == 3
    assert not [r for r in caplog.records if r.getMessage().startswith("Retrying")]


SSH_BANNER = "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3 " + "x" * 400


@answering
def ssh_banner(conn, stop) -> None:
    """What the broker meets when its base URL names the wrong port: another protocol."""
    conn.sendall(SSH_BANNER.encode() + b"\r\n")
    conn.close()


@pytest.mark.parametrize(
    ("behaviour", "message", "status", "request_id"),
    [
        (
            ssh_banner,
            # Cut to 300 characters, "…" included.
            f"ProtocolError: ('Connection aborted.', BadStatusLine('{SSH_BANNER}"[:299] + "…",
            None,
            None,
        ),
        (
            cut_mid_body,
            "ProtocolError: ('Connection broken: IncompleteRead(7 bytes read, 93 more expected)', "
            "IncompleteRead(7 bytes read, 93 more expected))",
            200,
            "req_partial",
        ),
    ],
    ids=["not-http", "dropped-in-body"],
)
def test_a_connection_failing_after_the_request_is_a_network_error_not_retried(
    raw_server, make_client, sleeps, behaviour, message, status, request_id
):
    url, stats = raw_server(behaviour)

    with pytest.raises(UpstreamNetworkError) as caught:
        make_client(url).create_session(workflow_id="wf_abc", user="user-1")

    error = caught.value
    assert error.error_message == message
    assert (error.status_code, error.request_id) == (status, request_id)
    assert isinstance(error.__cause__, requests.ConnectionError | urllib3.exceptions.HTTPError)
    assert (error.attempts, stats["requests"], sleeps) == (1, 1, [])  # it was sent: no retry


# --- unusable 2xx ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b"<html><body>Welcome to nginx!</body></html>",
        b"\xff\xfe\x00garbage\x80",
        b"",
        b"[1, 2, 3]",
        b'"just a string"',
        b"[" * 100_000,
        json.dumps({**OK_BODY, "client_secret": None}).encode(),
        json.dumps({**OK_BODY, "client_secret": ""}).encode(),
        json.dumps({k: v for k, v in OK_BODY.items() if k != "id"}).encode(),
    ],
    ids=[
        "text",
        "html",
        "binary",
        "empty",
        "array",
        "string",
        "deep",
        "null-secret",
        "empty-secret",
        "no-id",
    ],
)
def test_unusable_2xx_is_an_invalid_response(httpserver, base_url, make_client, caplog, body):
    caplog.set_level(logging.DEBUG)  # so that the leak check below reads every log line
    expect_create(httpserver).respond_with_data(body, content_type="application/json")

    with pytest.raises(UpstreamInvalidResponse) as caught:
        make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert len(httpserver.log) == 1
    assert caught.value.attempts == 1
    assert caught.value.status_code == 200
    assert type(caught.value) is UpstreamInvalidResponse
    assert CLIENT_SECRET not in all_text(caught.value, caplog)


def test_body_over_the_limit_is_an_invalid_response(httpserver, base_url, make_client):
    body = {**OK_BODY, "padding": "x" * 5000}
    expect_create(httpserver).respond_with_json(body, headers={"x-request-id": "req_big"})

    with pytest.raises(UpstreamInvalidResponse) as caught:
        make_client(base_url, max_body_bytes=4096).create_session(
            workflow_id="wf_abc", user="user-1"
        )

    assert caught.value.error_message == "HTTP 200 body larger than 4096 bytes"
    assert (caught.value.status_code, caught.value.request_id) == (200, "req_big")


@answering
def limit_then_one_more(conn, stop) -> None:
    """A 200 whose body is one byte over the limit, its first LIMIT bytes in a packet alone."""
    body = json.dumps({**OK_BODY, "padding": "x" * 4096}).encode()[:LIMIT] + b" "
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:LIMIT])
    if not stop.wait(0.1):
        conn.sendall(body[LIMIT:])


LIMIT = 4096


def test_one_byte_over_the_limit_is_too_large_however_it_arrives(raw_server, make_client):
    url, _ = raw_server(limit_then_one_more)

    with pytest.raises(UpstreamInvalidResponse) as caught:
        make_client(url, max_body_bytes=LIMIT).create_session(workflow_id="wf_abc", user="u")

    assert caught.value.error_message == f"HTTP 200 body larger than {LIMIT} bytes"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json  at\nall", "HTTP 200 body is not JSON: not json at all"),
        (b"", "HTTP 200 body is not JSON: "),
        (b"[1, 2, 3]", "HTTP 200 body is a JSON list, not an object"),
        (b'"just a string"', "HTTP 200 body is a JSON str, not an object"),
        (json.dumps({**OK_BODY, "id": ""}).encode(), "HTTP 200 body has no session 'id'"),
        (json.dumps({**OK_BODY, "id": 123}).encode(), "HTTP 200 body has no session 'id'"),
        (
            json.dumps({**OK_BODY, "client_secret": 5}).encode(),
            "HTTP 200 body has no 'client_secret'",
        ),
    ],
    ids=["text", "empty", "array", "string", "blank-id", "numeric-id", "numeric-secret"],
)
def test_an_unusable_2xx_says_what_is_wrong(httpserver, base_url, make_client, body, message):
    expect_create(httpserver).respond_with_data(
        body, content_type="application/json", headers={"x-request-id": "req_odd"}
    )

    with pytest.raises(UpstreamInvalidResponse) as caught:
        make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert caught.value.error_message == message
    assert (caught.value.status_code, caught.value.request_id) == (200, "req_odd")


def test_a_long_unusable_2xx_is_described_in_300_characters(httpserver, base_url, make_client):
    expect_create(httpserver).respond_with_data("<html>" + "y" * 2000, content_type="text/html")

    with pytest.raises(UpstreamInvalidResponse) as caught:
        make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert len(caught.value.error_message) == 300
    assert caught.value.error_message.startswith("HTTP 200 body is not JSON: <html>yyy")


def test_optional_fields_may_be_missing_or_null(httpserver, base_url, make_client):
    body = {"id": "cksess_min", "client_secret": CLIENT_SECRET, "workflow": None, "user": None}
    expect_create(httpserver).respond_with_json(body)

    result = make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert (result.session_id, result.client_secret) == ("cksess_min", CLIENT_SECRET)
    assert (result.workflow_id, result.user, result.status, result.expires_at) == (None,) * 4


def test_a_cancel_answer_without_a_secret_has_a_blank_one(httpserver, base_url, make_client):
    body = {"id": "cksess_1", "client_secret": None, "status": "cancelled", "workflow": "wf_abc"}
    httpserver.expect_request(f"{SESSIONS}/cksess_1/cancel", method="POST").respond_with_json(body)

    result = make_client(base_url).cancel_session("cksess_1")

    assert (result.session_id, result.client_secret, result.status) == ("cksess_1", "", "cancelled")
    assert result.workflow_id is None  # not an object: ignored, not an error


def test_a_body_of_exactly_the_limit_is_accepted(httpserver, base_url, make_client):
    body = json.dumps(OK_BODY).encode()
    expect_create(httpserver).respond_with_data(body, content_type="application/json")

    result = make_client(base_url, max_body_bytes=len(body)).create_session(
        workflow_id="wf_abc", user="user-1"
    )

    assert result.session_id == "cksess_123"


@answering
def endless_body(conn, stop) -> None:
    """A 200 that streams without end, as fast as it is read (a misrouted event stream)."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
    while not stop.is_set():
        conn.sendall(b"data: {}\n\n" * 100)


def test_an_endless_body_is_cut_at_the_limit(raw_server, make_client):
    url, _ = raw_server(endless_body)
    client = make_client(url, max_body_bytes=100_000, total_timeout=5.0)

    with pytest.raises(UpstreamInvalidResponse) as caught:
        client.create_session(workflow_id="wf_abc", user="user-1")

    assert caught.value.error_message == "HTTP 200 body larger than 100000 bytes"
    assert caught.value.latency_ms < 5000  # stopped reading, not run out of time


def test_a_gzipped_body_is_decoded(httpserver, base_url, make_client):
    body = gzip.compress(json.dumps(OK_BODY).encode())
    expect_create(httpserver).respond_with_data(
        body, content_type="application/json", headers={"Content-Encoding": "gzip"}
    )

    result = make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert result.client_secret == CLIENT_SECRET


@answering
def two_parts(conn, stop) -> None:
    """A 200 whose body arrives in two packets, a moment apart."""
    body = json.dumps(OK_BODY).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    conn.sendall(head.encode() + body[:20])
    if not stop.wait(0.1):
        conn.sendall(body[20:])
    conn.close()


def test_a_body_in_several_parts_is_read_whole(raw_server, make_client):
    url, _ = raw_server(two_parts)

    result = make_client(url).create_session(workflow_id="wf_abc", user="user-1")

    assert (result.session_id, result.client_secret) == ("cksess_123", CLIENT_SECRET)


# --- secrets never leak ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, json.dumps(OK_BODY)),
        (
            401,
            json.dumps(
                {
                    "error": {
                        "message": f"Incorrect API key provided: {API_KEY}. Also "
                        f"sk-canar{'*' * 20}{API_KEY[-8:]} and Bearer {API_KEY}",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                }
            ),
        ),
        (500, f"<pre>Authorization: Bearer {API_KEY}\nsecret={CLIENT_SECRET}</pre>"),
        (200, json.dumps({"client_secret": CLIENT_SECRET, "note": API_KEY})),
        (200, f"oops {API_KEY} {CLIENT_SECRET} " + "x" * 400),
    ],
    ids=["success", "401-echoes-key", "500-echoes-headers", "200-no-id", "200-garbage"],
)
def test_key_and_client_secret_never_leak(httpserver, base_url, make_client, caplog, status, body):
    caplog.set_level(logging.DEBUG)  # urllib3's and requests' own loggers included
    expect_create(httpserver).respond_with_data(body, status=status)

    try:
        outcome: object = make_client(base_url).create_session(workflow_id="wf_abc", user="u")
    except UpstreamError as exc:
        outcome = exc

    text = all_text(outcome, caplog)
    assert API_KEY not in text
    assert API_KEY[-8:] not in text  # nor the tail that OpenAI's masked form keeps
    assert CLIENT_SECRET not in text
    assert "chatkit" in caplog.text or status == 200  # failures were logged


def test_network_errors_do_not_leak_the_key(closed_port, make_client, caplog):
    caplog.set_level(logging.DEBUG)

    with pytest.raises(UpstreamNetworkError) as caught:
        make_client(f"http://127.0.0.1:{closed_port}/v1").create_session(
            workflow_id="wf_abc", user="u"
        )

    assert API_KEY not in all_text(caught.value, caplog)


def test_config_repr_hides_the_key():
    assert API_KEY not in repr(ClientConfig(base_url="http://x", api_key=API_KEY))


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, json.dumps({"error": {"message": f"Incorrect API key provided: {GATEWAY_KEY}"}})),
        (502, f"<pre>key={GATEWAY_KEY}</pre>"),
        (200, f"<pre>key={GATEWAY_KEY}</pre>"),
    ],
    ids=["401-envelope", "502-page", "200-page"],
)
def test_a_key_in_a_gateways_own_format_never_leaks(
    httpserver, base_url, make_client, caplog, status, body
):
    # A gateway in front of OpenAI has keys of its own shape, which no pattern knows.
    expect_create(httpserver).respond_with_data(body, status=status)

    with pytest.raises(UpstreamError) as caught:
        make_client(base_url, api_key=GATEWAY_KEY, max_retries=0).create_session(
            workflow_id="wf_abc", user="u"
        )

    assert GATEWAY_KEY not in all_text(caught.value, caplog)
    assert "[REDACTED]" in caught.value.error_message


# --- connections and threads ----------------------------------------------------------------


def test_calls_at_the_same_time_borrow_different_sessions_and_give_them_back(base_url, make_client):
    client = make_client(base_url)

    with client._session() as first, client._session() as second:
        assert first is not second
    # Given back: the next calls borrow them again, and no session is made.
    with client._session() as third, client._session() as fourth:
        assert {id(third), id(fourth)} == {id(first), id(second)}
    assert len(client._sessions) == 2


def test_each_call_in_flight_has_a_session_of_its_own(make_client):
    # The upstream answers only once both calls are in: with one session between them, the
    # second would wait for the first, and the first for the second.
    both_in = threading.Barrier(2, timeout=10)

    def answer(request: Request) -> Response:
        both_in.wait()
        return Response(json.dumps(OK_BODY), content_type="application/json")

    results: list[str] = []

    def call(name: str) -> None:
        results.append(client.create_session(workflow_id="wf_abc", user=name).session_id)

    with HTTPServer(threaded=True) as server:
        expect_create(server).respond_with_handler(answer)
        client = make_client(server.url_for("/v1"), max_retries=0)
        threads = [threading.Thread(target=call, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert results == ["cksess_123", "cksess_123"]
    assert len(client._sessions) == 2


def test_a_thread_reuses_its_connection(keepalive_server, make_client):
    url, client_ports, _ = keepalive_server
    client = make_client(url)

    for _ in range(3):
        client.create_session(workflow_id="wf_abc", user="user-1")

    assert len(client_ports) == 3
    assert len(set(client_ports)) == 1  # one TCP connection served all three calls


def test_threads_share_the_kept_alive_connections(keepalive_server, make_client):
    url, client_ports, _ = keepalive_server
    client = make_client(url)

    for name in ("a", "b", "c"):  # one after another, each from a thread of its own
        thread = threading.Thread(
            target=client.create_session, kwargs={"workflow_id": "wf_abc", "user": name}
        )
        thread.start()
        thread.join()

    assert len(client_ports) == 3
    assert len(set(client_ports)) == 1  # the pool is the process's, not each thread's


def test_sessions_share_the_kept_alive_connections(keepalive_server, make_client):
    url, client_ports, _ = keepalive_server
    client = make_client(url)

    client.create_session(workflow_id="wf_abc", user="a")
    with client._session():  # the first call's session is busy: the next call makes another
        client.create_session(workflow_id="wf_abc", user="b")

    assert len(client._sessions) == 2
    assert len(client_ports) == 2
    assert len(set(client_ports)) == 1  # one pool behind both sessions


@pytest.mark.parametrize(("pool_maxsize", "opened_again"), [(2, 1), (3, 0)])
def test_the_pool_keeps_as_many_connections_as_its_size(
    keepalive_server, make_client, pool_maxsize, opened_again
):
    # Three calls at once, twice: the pool keeps at most pool_maxsize of the first three
    # connections, so the second three open one anew when it keeps two.
    url, client_ports, calls_at_once = keepalive_server
    calls_at_once.append(threading.Barrier(3, timeout=10))
    client = make_client(url, pool_maxsize=pool_maxsize)

    def three_at_once() -> set[int]:
        start = len(client_ports)
        threads = [
            threading.Thread(
                target=client.create_session, kwargs={"workflow_id": "wf_abc", "user": name}
            )
            for name in ("a", "b", "c")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        return set(client_ports[start:])

    first = three_at_once()
    second = three_at_once()

    assert len(first) == len(second) == 3
    assert len(second - first) == opened_again


def test_a_session_borrowed_before_any_close_is_not_kept(base_url, make_client):
    client = make_client(base_url)
    for _ in range(2):  # the second close as well as the first
        with client._session() as borrowed:
            client.close()
        with client._session() as after:
            assert after is not borrowed


def test_close_closes_sessions_and_the_client_still_works(keepalive_server, make_client):
    url, _, _ = keepalive_server
    client = make_client(url)
    with client._session() as before:
        pass

    client.close()

    with client._session() as after:
        assert after is not before
    assert client.create_session(workflow_id="wf_abc", user="u").session_id == "cksess_123"


# --- odds and ends --------------------------------------------------------------------------


def test_errors_survive_pickling():
    error = UpstreamHTTPError(
        status_code=429, error_code="rate_limited", error_message="slow", retry_after=1.5
    )
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert type(copy) is UpstreamHTTPError
    assert (copy.status_code, copy.error_code, copy.retry_after) == (429, "rate_limited", 1.5)
    assert str(copy) == str(error)


def test_client_imports_without_django():
    root = Path(__file__).resolve().parents[2]
    code = "import sys, sessions_api.client; sys.exit('django' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0


def test_close_can_be_called_again_and_again(keepalive_server, make_client):
    url, _, _ = keepalive_server
    client = make_client(url)
    seen = []

    for _ in range(3):
        with client._session() as session:
            seen.append(session)
        client.close()

    assert len({id(session) for session in seen}) == 3
    assert client.create_session(workflow_id="wf_abc", user="u").session_id == "cksess_123"


def test_config_strips_trailing_slashes_only():
    config = ClientConfig(base_url="https://gateway.example/openai/vX//", api_key=API_KEY)
    assert config.base_url == "https://gateway.example/openai/vX"


def test_an_error_built_by_hand_has_safe_defaults():
    error = UpstreamHTTPError(status_code=502)

    assert (error.attempts, error.latency_ms, error.retry_after) == (0, 0, None)
    assert (error.error_message, error.args) == ("", ("",))
    assert str(error) == "UpstreamHTTPError status=502 attempts=0: "
    assert UpstreamHTTPError(error_message="slow").args == ("slow",)


def test_an_errors_text_is_cut_at_500_characters():
    error = UpstreamHTTPError(error_message="z" * 600)
    assert str(error) == "UpstreamHTTPError attempts=0: " + "z" * 499 + "…"


def client_log(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "sessions_api.client"]


def test_failures_and_late_successes_are_logged_for_operators(
    httpserver, base_url, make_client, caplog
):
    caplog.set_level(logging.INFO, logger="sessions_api.client")
    expect_create(httpserver, oneshot=True).respond_with_data("bad gateway", status=502)
    expect_create(httpserver, oneshot=True).respond_with_json(OK_BODY)

    make_client(base_url, clock=lambda: 0.0).create_session(workflow_id="wf_abc", user="u")

    warning, info = client_log(caplog)
    assert re.fullmatch(
        r"chatkit create attempt 1 failed, 0 ms into the call: UpstreamHTTPError status=502 "
        r"attempts=1: bad gateway; retrying in 0\.(1[3-9]|2[0-5])s",
        warning,
    ), warning
    assert info == "chatkit create succeeded after 2 attempts"


def test_a_first_time_success_logs_nothing(httpserver, base_url, make_client, caplog):
    caplog.set_level(logging.INFO, logger="sessions_api.client")
    expect_create(httpserver).respond_with_json(OK_BODY)

    make_client(base_url).create_session(workflow_id="wf_abc", user="u")

    assert client_log(caplog) == []


def test_a_failed_cancel_is_logged_as_a_cancel(httpserver, base_url, make_client, caplog):
    # Set, not inherited: a Celery worker started by an earlier test may have raised the level.
    caplog.set_level(logging.INFO, logger="sessions_api.client")
    httpserver.expect_request(f"{SESSIONS}/cksess_9/cancel", method="POST").respond_with_json(
        {"error": {"message": "Chatkit Session with id 'cksess_9' not found."}}, status=404
    )

    with pytest.raises(UpstreamHTTPError):
        make_client(base_url, clock=lambda: 0.0).cancel_session("cksess_9")

    assert client_log(caplog) == [
        "chatkit cancel attempt 1 failed, 0 ms into the call: UpstreamHTTPError status=404 "
        "attempts=1: Chatkit Session with id 'cksess_9' not found.; giving up"
    ]


@pytest.mark.parametrize(
    ("base_url", "api_key", "message"),
    [
        ("api.openai.com/v1", API_KEY, "MissingSchema: Invalid URL 'api.openai.com/v1/chatkit/"),
        # A key pasted with its file's newline (a secret made from a file): requests refuses the
        # header, and its message, which quotes the key, must not reach a traceback either.
        ("http://127.0.0.1:9/v1", GATEWAY_KEY + "\n", "InvalidHeader: Invalid leading whitespace"),
    ],
    ids=["no-scheme", "key-with-newline"],
)
def test_a_misconfiguration_names_itself_and_is_not_retried(
    make_client, sleeps, caplog, base_url, api_key, message
):
    caplog.set_level(logging.DEBUG)  # so that the leak check below reads every log line
    with pytest.raises(UpstreamNetworkError) as caught:
        make_client(base_url, api_key=api_key).create_session(workflow_id="wf_abc", user="u")

    assert caught.value.error_message.startswith(message)
    assert (caught.value.attempts, sleeps) == (1, [])
    assert GATEWAY_KEY not in all_text(caught.value, caplog)


# --- The environment: proxies and CA bundles, read once as requests reads them ---------------

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")


@pytest.fixture
def no_proxy_environment(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def proxy(request_lines: list[bytes]):
    """An HTTP proxy that answers every request on a connection itself, as the upstream would."""
    body = json.dumps(OK_BODY).encode()

    def behaviour(conn, stats, stop) -> None:
        while (request := read_request(conn)) is not None:
            stats["requests"] += 1
            request_lines.append(request.split(b"\r\n")[0])
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            conn.sendall(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    return behaviour


def test_the_upstream_is_reached_through_the_environments_proxy(
    raw_server, make_client, no_proxy_environment
):
    lines: list[bytes] = []
    proxy_url, stats = raw_server(proxy(lines))
    no_proxy_environment.setenv("HTTP_PROXY", proxy_url.removesuffix("/v1"))
    client = make_client("http://chatkit-upstream.invalid/v1")
    # Read when the client was made, not per call.
    no_proxy_environment.delenv("HTTP_PROXY")

    for _ in range(2):
        assert client.create_session(workflow_id="wf_abc", user="u").session_id == "cksess_123"

    assert lines == [b"POST http://chatkit-upstream.invalid/v1/chatkit/sessions HTTP/1.1"] * 2
    assert stats["connections"] == 1  # kept alive through the proxy too


def test_no_proxy_exempts_the_upstream_host(raw_server, make_client, no_proxy_environment):
    lines: list[bytes] = []
    proxy_url, stats = raw_server(proxy(lines))
    no_proxy_environment.setenv("HTTP_PROXY", proxy_url.removesuffix("/v1"))
    no_proxy_environment.setenv("NO_PROXY", "localhost,chatkit-upstream.invalid")

    with pytest.raises(UpstreamNetworkError, match="NameResolutionError"):
        make_client("http://chatkit-upstream.invalid/v1").create_session(
            workflow_id="wf_abc", user="u"
        )
    assert (lines, stats["connections"]) == ([], 0)


@pytest.fixture
def tls_upstream(tmp_path):
    """An HTTPS upstream with a certificate from a local CA; yields (base_url, CA file)."""
    authority = trustme.CA()
    ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(ssl_context)
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=ssl_context)
    server.start()
    server.expect_request(SESSIONS, method="POST").respond_with_json(OK_BODY)
    yield f"https://127.0.0.1:{server.port}/v1", ca_file
    server.clear()
    server.stop()


def test_new_tls_connections_reuse_one_context_holding_the_bundle(
    tls_upstream, make_client, monkeypatch
):
    # requests would name the bundle on each new connection, and urllib3 load it again (about
    # 30 ms of CPU for certifi's): every connection must get the one context, and no bundle.
    base_url, ca_file = tls_upstream
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
    wraps = []
    wrap = urllib3.connection.ssl_wrap_socket

    def recording(*args, **kwargs):
        wraps.append((kwargs.get("ca_certs"), kwargs.get("ssl_context")))
        return wrap(*args, **kwargs)

    monkeypatch.setattr(urllib3.connection, "ssl_wrap_socket", recording)
    client = make_client(base_url)
    for _ in range(3):
        client.create_session(workflow_id="wf_abc", user="u")
        client._adapter.poolmanager.clear()  # the next call opens a new connection

    assert len(wraps) == 3
    assert {ca for ca, _ in wraps} == {None}
    assert {id(context) for _, context in wraps} == {id(client._adapter._ssl_context)}


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_a_ca_bundle_from_the_environment_is_trusted(
    tls_upstream, make_client, monkeypatch, variable
):
    base_url, ca_file = tls_upstream
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, str(ca_file))
    client = make_client(base_url)
    assert client.create_session(workflow_id="wf_abc", user="u").session_id == "cksess_123"

    monkeypatch.delenv(variable)
    with pytest.raises(UpstreamNetworkError, match="SSLError"):
        make_client(base_url).create_session(workflow_id="wf_abc", user="u")


def tunnel(request_lines: list[bytes]):
    """An HTTPS proxy: CONNECT, then the bytes relayed both ways to the host it names."""

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def behaviour(conn, stats, stop) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            if not (chunk := conn.recv(4096)):
                return
            head += chunk
        request_lines.append(head.split(b"\r\n")[0])
        host, _, port = head.split()[1].decode().rpartition(":")
        with socket.create_connection((host, int(port))) as upstream:
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()
            pump(conn, upstream)

    return behaviour


def test_an_https_upstream_through_the_environments_proxy_is_verified_with_the_bundle(
    tls_upstream, raw_server, make_client, no_proxy_environment
):
    base_url, ca_file = tls_upstream
    no_proxy_environment.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
    lines: list[bytes] = []
    proxy_url, stats = raw_server(tunnel(lines))
    no_proxy_environment.setenv("HTTPS_PROXY", proxy_url.removesuffix("/v1"))
    client = make_client(base_url)

    assert client.create_session(workflow_id="wf_abc", user="u").session_id == "cksess_123"

    address = base_url.removeprefix("https://").removesuffix("/v1").encode()
    # Through the tunnel (http.client asks for it in HTTP/1.0), verified with the bundle.
    assert [line.rpartition(b" ")[0] for line in lines] == [b"CONNECT " + address]
    assert stats["connections"] == 1


def test_without_a_bundle_in_the_environment_certifis_is_trusted(make_client, monkeypatch):
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    client = make_client("https://api.openai.com/v1")  # never called: only its context is read

    with client._session():
        pass
    loaded = client._adapter._ssl_context.cert_store_stats()["x509_ca"]
    reference = ssl.create_default_context(cafile=requests.certs.where())
    assert loaded == reference.cert_store_stats()["x509_ca"] > 100


@pytest.mark.parametrize(
    "after_answer",
    [b"", b"HTTP/1.1 200 OK\r\n"],
    ids=["server-closed-it", "unasked-bytes-on-it"],
)
def test_a_kept_alive_connection_the_server_is_done_with_is_not_reused(
    raw_server, make_client, after_answer
):
    # The server answers keep-alive (no Connection: close), then closes the connection or
    # writes what nobody asked for: the next call must see it and open another, rather than
    # send a create on it, fail, and not retry a request that may have been sent.
    answered, done = threading.Event(), threading.Event()

    @answering
    def answer_then_end(conn, stop) -> None:
        body = json.dumps(OK_BODY).encode()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        answered.wait(5)  # the connection is back in the pool, idle
        if after_answer:
            conn.sendall(after_answer)
        else:
            conn.close()
        done.set()

    url, stats = raw_server(answer_then_end)
    client = make_client(url)

    client.create_session(workflow_id="wf_abc", user="a")
    answered.set()
    assert done.wait(5)
    result = client.create_session(workflow_id="wf_abc", user="b")

    assert result.session_id == OK_BODY["id"]
    assert stats == {"connections": 2, "requests": 2}


def test_a_kept_alive_connection_still_open_is_reused(keepalive_server, make_client):
    url, client_ports, _ = keepalive_server
    client = make_client(url)
    client.create_session(workflow_id="wf_abc", user="a")
    time.sleep(0.1)  # idle, as a pooled connection is between calls

    client.create_session(workflow_id="wf_abc", user="b")

    assert len(set(client_ports)) == 1
    # Checked before reuse with the OS's poll (the next test), not urllib3's own connection's.
    assert (
        client._adapter.poolmanager.connection_from_url(url).ConnectionCls is CheckedHTTPConnection
    )


def test_the_connection_check_does_not_go_round_the_event_loop_under_gevent():
    # gunicorn's gevent worker patches select, and gevent's poll yields to the event loop even
    # with no timeout: every request ready in the worker would run before this one is sent.
    code = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import gevent, socket\n"
        "from sessions_api.transport import CheckedHTTPConnection\n"
        "ours, theirs = socket.socketpair()\n"
        "connection = CheckedHTTPConnection('127.0.0.1')\n"
        "connection.sock = ours\n"
        "ran = []\n"
        "gevent.spawn(ran.append, 'another request')\n"
        "print(connection.is_connected, ran)\n"
        "theirs.close()\n"
        "print(connection.is_connected)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split("\n")[:2] == ["True []", "False"]
