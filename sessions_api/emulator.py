"""A local stand-in for OpenAI's ChatKit sessions API, for development, demos, tests and load tests.

It answers like https://api.openai.com/v1/chatkit/sessions as the OpenAPI spec, openai-python's
types and user reports describe it (same fields, same error envelope, same messages; unknown
parameters are refused, as OpenAI's newer endpoints do). It can also be told to misbehave (5xx,
429, HTML bodies, slowness, dropped or hanging connections) so that the broker's retries and
timeouts are exercised over a real socket.

Deliberately free of Django: the management command and the tests import it, and a load test can
run it with nothing but aiohttp installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import signal
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from aiohttp import web
from multidict import CIMultiDict

__all__ = [
    "EmulatorState",
    "RunningEmulator",
    "build_app",
    "parse_script",
    "run",
    "serve_in_thread",
]

DEFAULT_EXPIRES_SECONDS = 600
MAX_EXPIRES_SECONDS = 600
DEFAULT_MAX_REQUESTS_PER_MINUTE = 10
MAX_STATE_VARIABLES = 64
MAX_STATE_VARIABLE_KEY_LENGTH = 64
MAX_FILE_SIZE_MB = 512
RECORDED_BODY_BYTES = 4096

MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)
BAD_KEY_MESSAGE = (
    "Incorrect API key provided: {masked}. You can find your API key at "
    "https://platform.openai.com/account/api-keys."
)
BETA_MESSAGE = "You must provide the 'OpenAI-Beta' header to access the Chatkit API."
JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
    "valid JSON. If you have trouble figuring out how to fix this, please contact us through our "
    "help center at help.openai.com.)"
)
SERVER_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that!"
RATE_LIMIT_MESSAGE = (
    "Rate limit reached for chatkit sessions in organization org-emulator on requests per min "
    "(RPM): Limit 10, Used 10, Requested 1. Please try again in {seconds}s."
)
GARBAGE_BODY = b'<html><body>upstream sent something that is not JSON {"id": "cksess_'
SHORTHAND_HELP = "ok, hangup, hang, garbage, slow:MS, STATUS or STATUS:RETRY_AFTER (e.g. 429:1)"

_FAULT_KEYS = frozenset(
    "ok status retry_after body content_type latency_ms hangup garbage hang message type code "
    "headers".split()
)
_FLAG_FAULTS = frozenset({"ok", "hangup", "garbage", "hang"})


class EmulatorState:
    """Everything the emulator remembers, bounded so a long load test cannot exhaust memory.

    The server's event loop runs in another thread than the test that inspects it, hence the
    lock around anything that is iterated.
    """

    def __init__(self, *, max_sessions: int = 100_000, max_requests: int = 1_000) -> None:
        self.max_sessions = max_sessions
        self.sessions: OrderedDict[str, dict] = OrderedDict()
        self.requests: deque[dict] = deque(maxlen=max_requests)
        self.faults: deque[dict] = deque()
        self.counters: dict = {}
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget sessions, received requests, queued faults (scripted ones too) and counters."""
        with self._lock:
            self.sessions.clear()
            self.requests.clear()
            self.faults.clear()
            self.counters = dict.fromkeys(("requests", "created", "cancelled", "faults"), 0)
            self.counters.update(dropped=0, by_status={})

    def push_faults(self, faults: Iterable[dict | str]) -> int:
        """Queue faults, each consumed by one create request; returns the queue length."""
        normalised = [_normalise_fault(fault) for fault in faults]
        with self._lock:
            self.faults.extend(normalised)
            return len(self.faults)

    def next_fault(self) -> dict | None:
        if not self.faults:  # the common case, without raising
            return None
        try:
            return self.faults.popleft()
        except IndexError:
            return None

    def record_request(self, record: dict) -> None:
        with self._lock:
            self.requests.append(record)
            self.counters["requests"] += 1

    def received(self) -> list[dict]:
        """A snapshot of the received API requests, oldest first."""
        with self._lock:
            return list(self.requests)

    def count_status(self, status: int | str) -> None:
        key = str(status)
        with self._lock:
            by_status = self.counters["by_status"]
            by_status[key] = by_status.get(key, 0) + 1

    def store_session(self, session: dict) -> None:
        with self._lock:
            self.sessions[session["id"]] = session
            self.sessions.move_to_end(session["id"])
            while len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)

    def get_session(self, session_id: str) -> dict | None:
        """The stored session with its status as of now (an active session past expiry is
        reported as expired), or None."""
        session = self.sessions.get(session_id)
        if session is None:
            return None
        if session["status"] == "active" and time.time() >= session["expires_at"]:
            return {**session, "status": "expired"}
        return session

    def stats(self) -> dict:
        with self._lock:
            return {
                **self.counters,
                "by_status": dict(self.counters["by_status"]),
                "sessions_stored": len(self.sessions),
                "faults_queued": len(self.faults),
            }


# Where build_app() leaves the state, for code that only holds the application.
STATE = web.AppKey("state", EmulatorState)


class _ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.payload = {"error": {"message": message, "type": type, "param": param, "code": code}}


def mask_key(key: str) -> str:
    """OpenAI's masking (first 8 characters, stars, last 4); short keys are masked harder so the
    whole key never appears."""
    if len(key) >= 20:
        return key[:8] + "*" * (len(key) - 12) + key[-4:]
    keep = len(key) // 4
    return key[:keep] + "*" * (len(key) - 2 * keep) + (key[-keep:] if keep else "")


# ---------------------------------------------------------------------------- validation


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _invalid_type(param: str, expected: str, value: object) -> _ApiError:
    got = _type_name(value)
    message = f"Invalid type for '{param}': expected {expected}, but got {got} instead."
    return _ApiError(400, message, param=param, code="invalid_type")


def _missing(param: str) -> _ApiError:
    return _ApiError(
        400,
        f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )


def _object(parent: dict, key: str, param: str, allowed: frozenset[str] | None) -> dict | None:
    value = parent.get(key)
    if key not in parent:
        return None
    if not isinstance(value, dict):
        raise _invalid_type(param, "an object", value)
    for name in value if allowed is not None else ():
        if name not in allowed:
            raise _ApiError(
                400,
                f"Unknown parameter: '{param}.{name}'.",
                param=f"{param}.{name}",
                code="unknown_parameter",
            )
    return value


def _string(parent: dict, key: str, param: str, *, required: bool = False) -> str | None:
    if key not in parent:
        if required:
            raise _missing(param)
        return None
    value = parent[key]
    if not isinstance(value, str):
        raise _invalid_type(param, "a string", value)
    if not value:
        raise _ApiError(
            400,
            f"Invalid '{param}': empty string. Expected a string with minimum length 1, "
            "but got an empty string instead.",
            param=param,
            code="empty_string",
        )
    return value


def _bool(parent: dict, key: str, param: str) -> bool | None:
    value = parent.get(key)
    if key in parent and not isinstance(value, bool):
        raise _invalid_type(param, "a boolean", value)
    return value


def _integer(
    parent: dict,
    key: str,
    param: str,
    *,
    minimum: int,
    maximum: int | None = None,
    required: bool = False,
) -> int | None:
    if key not in parent:
        if required:
            raise _missing(param)
        return None
    value = parent[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid_type(param, "an integer", value)
    if value < minimum:
        raise _ApiError(
            400,
            f"Invalid '{param}': integer below minimum value. Expected a value >= {minimum}, "
            f"but got {value} instead.",
            param=param,
            code="integer_below_min_value",
        )
    if maximum is not None and value > maximum:
        raise _ApiError(
            400,
            f"Invalid '{param}': integer above maximum value. Expected a value <= {maximum}, "
            f"but got {value} instead.",
            param=param,
            code="integer_above_max_value",
        )
    return value


_TOP_KEYS = frozenset({"workflow", "user", "expires_after", "rate_limits", "chatkit_configuration"})
_WORKFLOW_KEYS = frozenset({"id", "version", "state_variables", "tracing"})
_ENABLED = frozenset({"enabled"})


def _validate_create(body: dict) -> dict:
    """Check a create body in the upstream's order and return the resolved session fields."""
    for name in body:
        if name not in _TOP_KEYS:
            raise _ApiError(
                400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter"
            )
    if "workflow" not in body:
        raise _missing("workflow")
    workflow = _object(body, "workflow", "workflow", _WORKFLOW_KEYS)
    workflow_id = _string(workflow, "id", "workflow.id", required=True)
    user = _string(body, "user", "user", required=True)

    expires_in = DEFAULT_EXPIRES_SECONDS
    expires_after = _object(
        body, "expires_after", "expires_after", frozenset({"anchor", "seconds"})
    )
    if expires_after is not None:
        anchor = _string(expires_after, "anchor", "expires_after.anchor", required=True)
        if anchor != "created_at":
            raise _ApiError(
                400,
                f"Invalid value: '{anchor}'. Supported values are: 'created_at'.",
                param="expires_after.anchor",
                code="invalid_value",
            )
        expires_in = _integer(
            expires_after,
            "seconds",
            "expires_after.seconds",
            minimum=1,
            maximum=MAX_EXPIRES_SECONDS,
            required=True,
        )

    per_minute = DEFAULT_MAX_REQUESTS_PER_MINUTE
    rate_limits = _object(
        body, "rate_limits", "rate_limits", frozenset({"max_requests_per_1_minute"})
    )
    if rate_limits is not None:
        per_minute = (
            _integer(
                rate_limits,
                "max_requests_per_1_minute",
                "rate_limits.max_requests_per_1_minute",
                minimum=1,
            )
            or per_minute
        )

    version = _string(workflow, "version", "workflow.version")
    state_variables = _object(workflow, "state_variables", "workflow.state_variables", None)
    if state_variables is not None:
        _check_state_variables(state_variables)
    tracing = _object(workflow, "tracing", "workflow.tracing", _ENABLED) or {}
    tracing_enabled = _bool(tracing, "enabled", "workflow.tracing.enabled")

    return {
        "workflow": {
            "id": workflow_id,
            "version": version,
            "state_variables": state_variables,
            "tracing": {"enabled": True if tracing_enabled is None else tracing_enabled},
        },
        "user": user,
        "expires_in": expires_in,
        "max_requests_per_1_minute": per_minute,
        "chatkit_configuration": _resolve_configuration(body),
    }


def _check_state_variables(variables: dict) -> None:
    param = "workflow.state_variables"
    if len(variables) > MAX_STATE_VARIABLES:
        raise _ApiError(
            400,
            f"Invalid '{param}': too many properties. Expected an object with at most "
            f"{MAX_STATE_VARIABLES} properties, but got an object with {len(variables)} "
            "properties instead.",
            param=param,
            code="object_above_max_properties",
        )
    for key, value in variables.items():
        if len(key) > MAX_STATE_VARIABLE_KEY_LENGTH:
            raise _ApiError(
                400,
                f"Invalid '{param}': string too long. Expected a key with maximum length "
                f"{MAX_STATE_VARIABLE_KEY_LENGTH}, but got a key with length {len(key)} instead.",
                param=param,
                code="string_above_max_length",
            )
        if value is None or not isinstance(value, str | bool | int | float):
            raise _invalid_type(f"{param}.{key}", "a string, a boolean or a number", value)


def _resolve_configuration(body: dict) -> dict:
    titling = {"enabled": True}
    upload = {"enabled": False, "max_file_size": None, "max_files": None}
    history = {"enabled": True, "recent_threads": None}
    sent = _object(
        body,
        "chatkit_configuration",
        "chatkit_configuration",
        frozenset({"automatic_thread_titling", "file_upload", "history"}),
    )
    if sent is not None:
        p = "chatkit_configuration"
        part = _object(sent, "automatic_thread_titling", f"{p}.automatic_thread_titling", _ENABLED)
        if part is not None:
            _merge(titling, enabled=_bool(part, "enabled", f"{p}.automatic_thread_titling.enabled"))
        part = _object(
            sent,
            "file_upload",
            f"{p}.file_upload",
            frozenset({"enabled", "max_file_size", "max_files"}),
        )
        if part is not None:
            _merge(
                upload,
                enabled=_bool(part, "enabled", f"{p}.file_upload.enabled"),
                max_file_size=_integer(
                    part,
                    "max_file_size",
                    f"{p}.file_upload.max_file_size",
                    minimum=1,
                    maximum=MAX_FILE_SIZE_MB,
                ),
                max_files=_integer(part, "max_files", f"{p}.file_upload.max_files", minimum=1),
            )
        part = _object(sent, "history", f"{p}.history", frozenset({"enabled", "recent_threads"}))
        if part is not None:
            _merge(
                history,
                enabled=_bool(part, "enabled", f"{p}.history.enabled"),
                recent_threads=_integer(
                    part, "recent_threads", f"{p}.history.recent_threads", minimum=1
                ),
            )
    return {"automatic_thread_titling": titling, "file_upload": upload, "history": history}


def _merge(target: dict, **values: object) -> None:
    target.update((key, value) for key, value in values.items() if value is not None)


# ---------------------------------------------------------------------------- faults


def _normalise_fault(fault: dict | str) -> dict:
    if isinstance(fault, str):
        return _parse_token(fault)
    if not isinstance(fault, dict):
        raise ValueError(f"A fault is a dict or a shorthand string, not {fault!r}.")
    unknown = set(fault) - _FAULT_KEYS
    if unknown:
        raise ValueError(f"Unknown fault keys {sorted(unknown)}; known: {sorted(_FAULT_KEYS)}.")
    status = fault.get("status")
    if status is not None and (
        isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599
    ):
        raise ValueError(f"Fault status must be an HTTP status code, not {status!r}.")
    for key in ("latency_ms", "retry_after"):
        value = fault.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value < 0
        ):
            raise ValueError(f"Fault {key} must be a number >= 0, not {value!r}.")
    if "body" in fault and not isinstance(fault["body"], str):
        raise ValueError("Fault body must be a string (the raw response body).")
    if "headers" in fault and not isinstance(fault["headers"], dict):
        raise ValueError("Fault headers must be an object of header names to values.")
    return dict(fault)


def _parse_token(token: str) -> dict:
    token = token.strip().lower()
    if token in _FLAG_FAULTS:
        return {token: True}
    name, _, argument = token.partition(":")
    try:
        if name == "slow" and argument:
            return _normalise_fault({"latency_ms": int(argument)})
        if name.isdigit():
            fault = {"status": int(name)}
            if argument:
                fault["retry_after"] = int(argument)
            return _normalise_fault(fault)
    except ValueError as exc:
        raise ValueError(f"Bad fault {token!r}: {exc}") from None
    raise ValueError(f"Unknown fault {token!r}; use {SHORTHAND_HELP}.")


def parse_script(value: str) -> list[dict]:
    """Faults from a JSON file (a list of fault objects or shorthand strings), an inline JSON list,
    or an inline shorthand such as "500,500,ok,hangup,garbage,hang,429:1,slow:3000"."""
    text = value.strip()
    if not text:
        return []
    if text.startswith("[") or text.endswith(".json") or os.path.isfile(text):
        try:
            if text.startswith("["):
                items = json.loads(text)
            else:
                with open(text, encoding="utf-8") as handle:
                    items = json.load(handle)
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"Cannot read the fault script {text!r}: {exc}") from None
        if not isinstance(items, list):
            raise ValueError("A fault script file must hold a JSON list.")
    else:
        items = [token for token in text.split(",") if token.strip()]
    return [_normalise_fault(item) for item in items]


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
        self.state.store_session(session)
        self.state.counters["created"] += 1
        return self._respond(started, 200, _json_body(session))

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
        session = {**session, "status": "cancelled"}
        self.state.store_session(session)
        self.state.counters["cancelled"] += 1
        return self._respond(started, 200, _json_body(session))

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


async def _start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]


def _base_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/v1"


def run(
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    on_ready: Callable[[str], None] | None = None,
    **options,
) -> None:
    """Serve until Ctrl-C or SIGTERM. on_ready gets the base URL once the port is bound."""
    app = build_app(**options)  # bad options fail here, before anything is bound

    async def serve() -> None:
        runner, bound_port = await _start(app, host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            pass
        try:
            if on_ready is not None:
                on_ready(_base_url(host, bound_port))
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
