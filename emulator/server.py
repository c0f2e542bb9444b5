"""The aiohttp application (handlers, build_app) and the two ways to serve it: run in the
foreground, serve_in_thread for tests."""

from __future__ import annotations

import asyncio
import gc
import json
import random
import secrets
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterable

from aiohttp import web
from multidict import CIMultiDict

from emulator.faults import GARBAGE_BODY, parse_script
from emulator.state import RECORDED_BODY_BYTES, EmulatorState
from emulator.validation import (
    BAD_KEY_MESSAGE,
    BETA_MESSAGE,
    JSON_MESSAGE,
    MISSING_KEY_MESSAGE,
    RATE_LIMIT_MESSAGE,
    SERVER_ERROR_MESSAGE,
    _ApiError,
    _validate_create,
    mask_key,
)

# Where build_app() leaves the state, for code that only holds the application.
STATE = web.AppKey("state", EmulatorState)

# ---------------------------------------------------------------------------- HTTP


def _json_body(payload: dict) -> bytes:
    return json.dumps(payload).encode()


class _Emulator:
    """The request handlers; one instance per app, holding its configuration."""

    def __init__(
        self,
        state: EmulatorState,
        api_keys: Iterable[str],
        workflows: Iterable[str],
        latency_ms: float,
        fail_rate: float,
    ) -> None:
        self.state = state
        self.api_keys = frozenset(api_keys)
        self.workflows = frozenset(workflows)
        self.latency = latency_ms / 1000
        self.fail_rate = fail_rate
        self.closing = False

    # -- plumbing

    async def _receive(self, request: web.Request) -> tuple[bytes, object]:
        raw = await request.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        self.state.record_request(
            {
                "method": request.method,
                "path": request.path,
                "headers": CIMultiDict(request.headers),
                "json": parsed,
                # Only what could not be parsed, and only its start: the log stays small.
                "body": raw[:RECORDED_BODY_BYTES] if parsed is None else b"",
                "time": time.time(),
            }
        )
        return raw, parsed

    def _respond(
        self,
        started: float,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/json",
        headers: dict | None = None,
        count: bool = True,
    ) -> web.Response:
        response_headers = {
            "Content-Type": content_type,
            "x-request-id": "req_" + secrets.token_hex(16),
            "openai-processing-ms": str(int((time.monotonic() - started) * 1000)),
            "openai-version": "2020-10-01",
        }
        if headers:
            response_headers.update(headers)
        if count:  # the control endpoints stay out of the API's counters
            self.state.count_status(status)
        return web.Response(status=status, body=body, headers=response_headers)

    def _error(self, started: float, error: _ApiError, headers: dict | None = None):
        return self._respond(started, error.status, _json_body(error.payload), headers=headers)

    def _drop(self, request: web.Request) -> web.Response:
        # Writing to a closed transport makes aiohttp treat this as a client disconnect: the
        # client sees the connection end with no response at all, never a 500.
        if request.transport is not None:
            request.transport.close()
        self.state.counters["dropped"] += 1
        self.state.count_status("dropped")
        return web.Response(status=499)

    def _check_headers(self, request: web.Request) -> None:
        authorization = request.headers.get("Authorization", "")
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise _ApiError(401, MISSING_KEY_MESSAGE)
        if not (
            key in self.api_keys if self.api_keys else key.startswith("sk-") and len(key) >= 20
        ):
            raise _ApiError(
                401, BAD_KEY_MESSAGE.format(masked=mask_key(key)), code="invalid_api_key"
            )
        betas = ",".join(request.headers.getall("OpenAI-Beta", ()))
        if "chatkit_beta=v1" not in (beta.strip() for beta in betas.split(",")):
            raise _ApiError(400, BETA_MESSAGE)

    def _workflow_known(self, workflow_id: str) -> bool:
        return workflow_id in self.workflows if self.workflows else workflow_id.startswith("wf_")

    # -- faults

    def _next_fault(self) -> dict | None:
        fault = self.state.next_fault()
        if fault is None and self.fail_rate and random.random() < self.fail_rate:
            fault = {"status": 500}
        if fault is not None and not fault.get("ok"):
            self.state.counters["faults"] += 1
        return fault

    async def _hang(self, request: web.Request) -> web.Response:
        # Polling rather than handler cancellation, which aiohttp leaves off by default.
        while not self.closing and request.transport is not None:
            await asyncio.sleep(0.05)
        return self._drop(request)

    def _fault_response(self, started: float, fault: dict) -> web.Response:
        status = fault["status"]
        headers = dict(fault.get("headers") or {})
        retry_after = fault.get("retry_after")
        if retry_after is not None:
            headers["retry-after"] = str(retry_after)
        if "body" in fault:
            return self._respond(
                started,
                status,
                fault["body"].encode(),
                content_type=fault.get("content_type", "text/html"),
                headers=headers,
            )
        if status == 429:
            message = RATE_LIMIT_MESSAGE.format(seconds=retry_after or 1)
            kind, code = "rate_limit_exceeded", "rate_limit_exceeded"
        elif status >= 500:
            message, kind, code = SERVER_ERROR_MESSAGE, "server_error", None
        else:
            message, kind, code = f"Emulated error (HTTP {status}).", "invalid_request_error", None
        error = _ApiError(
            status,
            fault.get("message", message),
            type=fault.get("type", kind),
            code=fault.get("code", code),
        )
        return self._error(started, error, headers)

    # -- handlers

    async def create(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        _, body = await self._receive(request)
        fault = self._next_fault()
        delay = self.latency + (fault.get("latency_ms", 0) / 1000 if fault else 0)
        if delay:
            await asyncio.sleep(delay)
        if fault:
            if fault.get("hangup"):
                return self._drop(request)
            if fault.get("hang"):
                return await self._hang(request)
            if fault.get("garbage"):
                return self._respond(started, 200, GARBAGE_BODY)
            if fault.get("status"):
                return self._fault_response(started, fault)
        try:
            self._check_headers(request)
            if not isinstance(body, dict):
                raise _ApiError(400, JSON_MESSAGE)
            fields = _validate_create(body)
            workflow_id = fields["workflow"]["id"]
            if not self._workflow_known(workflow_id):
                raise _ApiError(404, f"Workflow with id '{workflow_id}' not found.")
        except _ApiError as error:
            return self._error(started, error)
        per_minute = fields["max_requests_per_1_minute"]
        session = {
            "id": "cksess_" + secrets.token_hex(16),
            "object": "chatkit.session",
            "client_secret": "ek_" + secrets.token_hex(24),
            "expires_at": int(time.time()) + fields["expires_in"],
            "status": "active",
            "user": fields["user"],
            "workflow": fields["workflow"],
            "rate_limits": {"max_requests_per_1_minute": per_minute},
            "max_requests_per_1_minute": per_minute,
            "chatkit_configuration": fields["chatkit_configuration"],
        }
        body = self.state.store_session(session)
        self.state.counters["created"] += 1
        return self._respond(started, 200, body)

    async def cancel(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        await self._receive(request)
        if self.latency:
            await asyncio.sleep(self.latency)
        session_id = request.match_info["session_id"]
        try:
            self._check_headers(request)
            session = self.state.get_session(session_id)
            if session is None:
                raise _ApiError(404, f"Chatkit Session with id '{session_id}' not found.")
        except _ApiError as error:
            return self._error(started, error)
        session["status"] = "cancelled"
        body = self.state.store_session(session)
        self.state.counters["cancelled"] += 1
        return self._respond(started, 200, body)

    async def unknown_url(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        await self._receive(request)
        error = _ApiError(404, f"Invalid URL ({request.method} {request.path})")
        return self._error(started, error)

    # -- control endpoints, for tests and demos; not part of the upstream, not counted

    def _control(self, status: int, payload: dict) -> web.Response:
        return self._respond(time.monotonic(), status, _json_body(payload), count=False)

    async def push_faults(self, request: web.Request) -> web.Response:
        try:
            payload = await request.json()
            faults = payload.get("faults") if isinstance(payload, dict) else None
            if not isinstance(faults, list):
                raise ValueError('Send {"faults": [...]}.')
            queued = self.state.push_faults(faults)
        except ValueError as exc:
            return self._control(400, _ApiError(400, str(exc), param="faults").payload)
        return self._control(200, {"queued": queued})

    async def get_session(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        session = self.state.get_session(session_id)
        if session is None:
            error = _ApiError(404, f"Chatkit Session with id '{session_id}' not found.")
            return self._control(404, error.payload)
        return self._control(200, session)

    async def stats(self, request: web.Request) -> web.Response:
        return self._control(200, self.state.stats())

    async def reset(self, request: web.Request) -> web.Response:
        self.state.reset()
        return self._control(200, {"reset": True})


def build_app(
    *,
    state: EmulatorState | None = None,
    api_keys: Iterable[str] = (),
    workflows: Iterable[str] = (),
    latency_ms: float = 0,
    fail_rate: float = 0.0,
    script: str | Iterable[dict | str] | None = None,
) -> web.Application:
    """The emulator as an aiohttp application; raises ValueError on a bad option."""
    if not 0 <= fail_rate <= 1:
        raise ValueError(f"fail_rate must be between 0 and 1, not {fail_rate}.")
    if latency_ms < 0:
        raise ValueError(f"latency_ms must be >= 0, not {latency_ms}.")
    state = state if state is not None else EmulatorState()
    if script:
        state.push_faults(parse_script(script) if isinstance(script, str) else script)
    emulator = _Emulator(state, api_keys, workflows, latency_ms, fail_rate)

    async def on_shutdown(app: web.Application) -> None:
        emulator.closing = True  # releases hanging handlers so shutdown is quick

    app = web.Application()
    app[STATE] = state
    app.on_shutdown.append(on_shutdown)
    app.router.add_post("/v1/chatkit/sessions", emulator.create)
    app.router.add_post("/v1/chatkit/sessions/{session_id}/cancel", emulator.cancel)
    app.router.add_route("*", "/v1/{tail:.*}", emulator.unknown_url)
    app.router.add_post("/_emulator/faults", emulator.push_faults)
    app.router.add_get("/_emulator/sessions/{session_id}", emulator.get_session)
    app.router.add_get("/_emulator/stats", emulator.stats)
    app.router.add_post("/_emulator/reset", emulator.reset)
    return app


async def _start(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]


def _base_url(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://{host}:{port}/v1"


def _server_ssl_context(tls_cert: str | None, tls_key: str | None) -> ssl.SSLContext | None:
    """HTTPS with this certificate chain and key (PEM files), or None for plain HTTP."""
    if not tls_cert and not tls_key:
        return None
    if not (tls_cert and tls_key):
        raise ValueError("tls_cert and tls_key go together: give both or neither.")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_cert, tls_key)  # OSError (ssl.SSLError) if unreadable
    return context


def run(
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    on_ready: Callable[[str], None] | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    **options,
) -> None:
    """Serve until Ctrl-C or SIGTERM. on_ready gets the base URL once the port is bound.

    With tls_cert (a PEM certificate chain, server certificate first) and tls_key (its PEM
    private key) it serves HTTPS instead of HTTP.
    """
    app = build_app(**options)  # bad options fail here, before anything is bound
    ssl_context = _server_ssl_context(tls_cert, tls_key)
    # What the process has loaded (Django, aiohttp) never becomes garbage. Frozen, it is out of
    # the cycle collector's full passes, each of which pauses every answer in flight: with it
    # and the sessions kept as bytes, none came under load (docs/benchmarks.md, "Long runs").
    # The gunicorn workers do the same.
    gc.collect()
    gc.freeze()

    async def serve() -> None:
        runner, bound_port = await _start(app, host, port, ssl_context)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            pass
        try:
            if on_ready is not None:
                on_ready(_base_url(host, bound_port, "https" if ssl_context else "http"))
            await stop.wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


class RunningEmulator:
    """An emulator serving from a daemon thread with its own event loop."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        state: EmulatorState,
        loop: asyncio.AbstractEventLoop,
        runner: web.AppRunner,
        thread: threading.Thread,
    ) -> None:
        self.host = host
        self.port = port
        self.state = state
        self.base_url = _base_url(host, port)
        self.control_url = f"http://{host}:{port}/_emulator"
        self._loop = loop
        self._runner = runner
        self._thread = thread

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        try:
            future.result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve_in_thread(*, host: str = "127.0.0.1", port: int = 0, **options) -> RunningEmulator:
    """Start serving and return once the port accepts connections (port 0 picks a free one)."""
    state = options.pop("state", None) or EmulatorState()
    app = build_app(state=state, **options)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    started: dict = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            started["runner"], started["port"] = loop.run_until_complete(_start(app, host, port))
        except BaseException as exc:  # handed to the caller below
            started["error"] = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    thread = threading.Thread(target=serve, name="chatkit-emulator", daemon=True)
    thread.start()
    ready.wait()
    if "error" in started:
        thread.join()
        raise started["error"]
    return RunningEmulator(
        host=host,
        port=started["port"],
        state=state,
        loop=loop,
        runner=started["runner"],
        thread=thread,
    )
