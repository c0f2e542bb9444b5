"""The upstream client against real sockets: pytest-httpserver, or bare TCP servers for the
behaviours an HTTP framework will not produce (silence, hang-ups, slow drips, keep-alive).

No mocks of requests or urllib3: retries and timeouts only mean something over a real socket.
"""

import http.server
import json
import logging
import pickle
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest
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

# Canaries: random per run, so a leak cannot hide behind a value that happens to be filtered.
API_KEY = "sk-canary-" + secrets.token_hex(12)
CLIENT_SECRET = "ek_canary_" + secrets.token_hex(16)
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

    def make(base_url: str, *, real_sleep: bool = False, **overrides) -> ChatKitClient:
        values = {
            "base_url": base_url,
            "api_key": API_KEY,
            "connect_timeout": 0.5,
            "read_timeout": 1.0,
            "total_timeout": 3.0,
        }
        values.update(overrides)
        client = ChatKitClient(
            ClientConfig(**values), sleep=time.sleep if real_sleep else sleeps.append
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
    """An HTTP/1.1 server that keeps connections open (werkzeug's always closes them)."""
    client_ports: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            client_ports.append(self.client_address[1])
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
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", client_ports
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


def slow_503(conn, stats, stop) -> None:
    if read_request(conn) is None:
        return
    stats["requests"] += 1
    if stop.wait(0.3):
        return
    try:
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        conn.close()
    except OSError:
        pass


def drip(conn, stats, stop) -> None:
    """A 200 whose body arrives one byte at a time, each well inside the read timeout."""
    if read_request(conn) is None:
        return
    stats["requests"] += 1
    try:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        conn.sendall(b"Content-Length: 100000\r\n\r\n")
        while not stop.wait(0.05):
            conn.sendall(b" ")
    except OSError:
        pass


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
    assert result.latency_ms >= 0
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
    assert caught.value.outcome == "upstream_error"
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


# --- timeouts and the wall-clock budget -----------------------------------------------------


def test_read_timeout_is_not_retried(raw_server, make_client, sleeps):
    url, stats = raw_server(silent)

    with pytest.raises(UpstreamTimeout) as caught:
        make_client(url, read_timeout=0.3).create_session(workflow_id="wf_abc", user="user-1")

    assert stats["requests"] == 1
    assert caught.value.attempts == 1
    assert caught.value.outcome == "timeout"
    assert sleeps == []


def test_budget_holds_when_upstream_never_answers(raw_server, make_client):
    url, _ = raw_server(silent)
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
    assert caught.value.attempts == 1


# --- network failures -----------------------------------------------------------------------


def test_connection_refused_is_retried_then_raised(closed_port, make_client, sleeps):
    client = make_client(f"http://127.0.0.1:{closed_port}/v1")

    with pytest.raises(UpstreamNetworkError) as caught:
        client.create_session(workflow_id="wf_abc", user="user-1")

    assert caught.value.attempts == 3
    assert caught.value.outcome == "network_error"
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
    expect_create(httpserver).respond_with_data(body, content_type="application/json")

    with pytest.raises(UpstreamInvalidResponse) as caught:
        make_client(base_url).create_session(workflow_id="wf_abc", user="user-1")

    assert len(httpserver.log) == 1
    assert caught.value.attempts == 1
    assert caught.value.status_code == 200
    assert caught.value.outcome == "invalid_response"
    assert CLIENT_SECRET not in all_text(caught.value, caplog)


def test_body_over_the_limit_is_an_invalid_response(httpserver, base_url, make_client):
    body = {**OK_BODY, "padding": "x" * 5000}
    expect_create(httpserver).respond_with_json(body)

    with pytest.raises(UpstreamInvalidResponse) as caught:
        make_client(base_url, max_body_bytes=4096).create_session(
            workflow_id="wf_abc", user="user-1"
        )

    assert "4096 bytes" in caught.value.error_message


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


# --- connections and threads ----------------------------------------------------------------


def test_each_thread_has_its_own_session(httpserver, base_url, make_client):
    expect_create(httpserver).respond_with_json(OK_BODY)
    client = make_client(base_url)
    seen: dict[str, list[object]] = {}

    def work(name: str) -> None:
        seen[name] = [client._session(), client._session()]
        client.create_session(workflow_id="wf_abc", user=name)

    threads = [threading.Thread(target=work, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert seen["a"][0] is seen["a"][1]
    assert seen["b"][0] is seen["b"][1]
    assert seen["a"][0] is not seen["b"][0]
    assert len(httpserver.log) == 2


def test_a_thread_reuses_its_connection(keepalive_server, make_client):
    url, client_ports = keepalive_server
    client = make_client(url)

    for _ in range(3):
        client.create_session(workflow_id="wf_abc", user="user-1")

    assert len(client_ports) == 3
    assert len(set(client_ports)) == 1  # one TCP connection served all three calls


def test_close_closes_sessions_and_the_client_still_works(keepalive_server, make_client):
    url, _ = keepalive_server
    client = make_client(url)
    before = client._session()

    client.close()

    assert client._session() is not before
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
