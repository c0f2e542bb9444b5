"""The upstream over HTTP: OpenAI's ChatKit sessions API, and nothing else.

With sessions_api/transport.py (its adapter and connections), the only module that imports
`requests`; it knows nothing of Django. Every call has a hard wall-clock budget (retries,
backoff and slow bodies included), retries only where a retry is safe and useful, and never lets
the API key or a client secret into a message or a log line.
"""

import contextlib
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import requests
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import MaxRetryError, NewConnectionError, ReadTimeoutError

from redaction import clean_text
from sessions_api.transport import SharedTLSAdapter

logger = logging.getLogger(__name__)

USER_AGENT = "chatkit-session-broker/1.0"
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_CHUNK_SIZE = 16_384
# Do not start a retry that would have less than this left: it could only time out.
_MIN_BUDGET_FOR_RETRY = 0.1
_SNIPPET_CHARS = 300


@dataclass(frozen=True)
class ClientConfig:
    base_url: str
    api_key: str = field(repr=False)
    connect_timeout: float = 3.0
    read_timeout: float = 8.0
    total_timeout: float = 10.0  # wall-clock budget per call, retries and backoff included
    max_retries: int = 2
    max_retry_after: float = 2.0  # a 429 is retried only when its Retry-After is <= this
    max_body_bytes: int = 1_048_576
    # Kept-alive connections shared by the process's calls; a call never waits for one (a
    # busier moment opens more, and closes after use those beyond this many). As many as a
    # gevent worker serves at once (gunicorn.conf.py, 1,000), so that a slow upstream, with
    # that many calls in flight, does not pay a new connection (over TLS, a handshake) per
    # call. Only connections that were once all in use at the same time are kept.
    pool_maxsize: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))


@dataclass(frozen=True)
class SessionResult:
    session_id: str
    client_secret: str = field(repr=False)
    expires_at: int | None
    status: str | None
    user: str | None
    workflow_id: str | None
    request_id: str | None  # the upstream's x-request-id, for OpenAI support
    attempts: int
    latency_ms: int  # the whole call, retries included


class UpstreamError(Exception):
    """A failed call. Safe to log: messages are redacted before they get here."""

    def __init__(
        self,
        *,
        status_code: int | None = None,
        error_type: str | None = None,
        error_code: str | None = None,
        error_param: str | None = None,
        error_message: str = "",
        request_id: str | None = None,
        attempts: int = 0,
        latency_ms: int = 0,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(error_message)
        self.status_code = status_code
        self.error_type = error_type
        self.error_code = error_code
        self.error_param = error_param
        self.error_message = error_message
        self.request_id = request_id
        self.attempts = attempts
        self.latency_ms = latency_ms
        self.retry_after = retry_after

    def __str__(self) -> str:
        parts = [type(self).__name__]
        if self.status_code is not None:
            parts.append(f"status={self.status_code}")
        if self.error_code:
            parts.append(f"code={self.error_code}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        parts.append(f"attempts={self.attempts}:")
        # Redacted again in case a caller built one by hand with raw upstream text.
        parts.append(clean_text(self.error_message, limit=500))
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"<{self}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only __init__ defeats Exception's default pickling (multiprocessing, Celery).
        return _restore_error, (type(self), self.__dict__)


def _restore_error(cls: type[UpstreamError], state: dict[str, Any]) -> UpstreamError:
    error = cls()
    error.__dict__.update(state)
    error.args = (error.error_message,)
    return error


class UpstreamHTTPError(UpstreamError):
    """The upstream answered with a non-2xx status."""


class UpstreamTimeout(UpstreamError):
    """A read timed out, or the call's wall-clock budget ran out."""


class UpstreamNetworkError(UpstreamError):
    """Refused, DNS, connect timeout, TLS, or the connection dropped mid-exchange."""


class UpstreamInvalidResponse(UpstreamError):
    """A 2xx we cannot use: not a JSON object, no id / client_secret, or too large."""


class ChatKitClient:
    def __init__(
        self,
        config: ClientConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._sleep = sleep
        self._clock = clock
        # requests.Session is not documented as safe to share: each call borrows one no other
        # call is using, so there are as many as calls were ever in flight at once. Borrowed,
        # not one per thread: under gunicorn's gevent worker each request is a greenlet of its
        # own, and would have made a session per call. They share one adapter, whose urllib3
        # pool is: connections follow the calls in flight, not the number of sessions.
        self._lock = threading.Lock()
        self._sessions: list[requests.Session] = []  # all of them, for close()
        self._idle: list[requests.Session] = []
        self._adapter: SharedTLSAdapter | None = None
        self._generation = 0  # bumped by close(), so a session borrowed before is not kept
        # What requests looks up in the environment on every call, looked up once, as requests
        # does it: the proxy for our one host unless NO_PROXY exempts it, and a CA bundle.
        self._proxies = requests.utils.get_environ_proxies(config.base_url)
        self._ca_bundle = (
            os.environ.get("REQUESTS_CA_BUNDLE")
            or os.environ.get("CURL_CA_BUNDLE")
            or requests.certs.where()
            if config.base_url.lower().startswith("https:")
            else None  # plain HTTP (the local emulator): nothing to verify, nothing to load
        )
        self._create_url = f"{config.base_url}/chatkit/sessions"
        self._create: requests.PreparedRequest | None = None

    def create_session(
        self,
        *,
        workflow_id: str,
        user: str,
        expires_after_seconds: int | None = None,
        rate_limit_per_minute: int | None = None,
        chatkit_configuration: dict | None = None,
    ) -> SessionResult:
        body: dict[str, Any] = {"workflow": {"id": workflow_id}, "user": user}
        if expires_after_seconds is not None:
            body["expires_after"] = {"anchor": "created_at", "seconds": expires_after_seconds}
        if rate_limit_per_minute is not None:
            body["rate_limits"] = {"max_requests_per_1_minute": rate_limit_per_minute}
        if chatkit_configuration is not None:
            body["chatkit_configuration"] = chatkit_configuration
        return self._call("create", self._create_url, json.dumps(body).encode(), need_secret=True)

    def cancel_session(self, session_id: str) -> SessionResult:
        url = f"{self._config.base_url}/chatkit/sessions/{quote(session_id, safe='')}/cancel"
        return self._call("cancel", url, None, need_secret=False)

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions, self._idle = self._sessions, [], []
            adapter, self._adapter = self._adapter, None
            self._generation += 1
        for session in sessions:
            session.close()
        if adapter is not None:
            adapter.close()

    def _prepare(self, url: str, payload: bytes | None) -> requests.PreparedRequest:
        # Every create is the same request but for its body: its URL and headers are prepared
        # once and copied. Preparing raises for a malformed URL, so it happens inside _call.
        if url != self._create_url:
            return requests.Request("POST", url, data=payload, headers=self._headers()).prepare()
        if self._create is None:
            self._create = requests.Request("POST", url, headers=self._headers()).prepare()
        request = self._create.copy()
        request.prepare_body(payload, None)
        return request

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._config.api_key}",
            "OpenAI-Beta": "chatkit_beta=v1",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }

    @contextlib.contextmanager
    def _session(self) -> Iterator[requests.Session]:
        """A session for one call, no other call's meanwhile."""
        with self._lock:
            generation = self._generation
            session = self._idle.pop() if self._idle else self._session_new()
        try:
            yield session
        finally:
            with self._lock:
                if generation == self._generation:  # not closed meanwhile
                    self._idle.append(session)

    def _session_new(self) -> requests.Session:
        # Only send() is called on it: the environment, read once in __init__, is passed in,
        # and no per-call merging of settings (half of requests' CPU per call) happens.
        session = requests.Session()
        if self._adapter is None:
            self._adapter = SharedTLSAdapter(self._ca_bundle, self._config.pool_maxsize)
        session.mount("https://", self._adapter)
        session.mount("http://", self._adapter)
        self._sessions.append(session)
        return session

    def _call(
        self, op: str, url: str, payload: bytes | None, *, need_secret: bool
    ) -> SessionResult:
        # Our own loop rather than urllib3's Retry: Retry cannot keep a wall-clock budget across
        # attempts, nor express "retry a 429 only when Retry-After <= 2 s" (it would wait hours).
        cfg = self._config
        started = self._clock()
        deadline = started + cfg.total_timeout
        attempt = 0
        while True:
            attempt += 1
            wait: float | None = None
            try:
                result = self._attempt(url, payload, deadline, need_secret=need_secret)
            except requests.RequestException as exc:
                error, sent = _from_requests(exc, cfg.api_key)
                if not sent:
                    wait = _backoff(attempt)
            except UpstreamError as exc:
                error = exc
                wait = self._http_retry_wait(exc, attempt)
            else:
                latency_ms = _ms(self._clock() - started)
                if attempt > 1:
                    logger.info("chatkit %s succeeded after %d attempts", op, attempt)
                return replace(result, attempts=attempt, latency_ms=latency_ms)

            now = self._clock()
            error.attempts, error.latency_ms = attempt, _ms(now - started)
            retry = (
                wait is not None
                and attempt <= cfg.max_retries
                and now + wait <= deadline - _MIN_BUDGET_FOR_RETRY
            )
            # str(error) carries status, request id and the redacted upstream message.
            logger.warning(
                "chatkit %s attempt %d failed, %d ms into the call: %s; %s",
                op,
                attempt,
                error.latency_ms,
                error,
                f"retrying in {wait:.2f}s" if retry else "giving up",
            )
            if not retry:
                try:
                    raise error
                finally:
                    # The traceback holds this frame, which would hold the error: a cycle that
                    # keeps the failed request's objects for the collector.
                    del error
            self._sleep(wait)

    def _http_retry_wait(self, error: UpstreamError, attempt: int) -> float | None:
        """Seconds to wait before retrying this error, or None when it must not be retried."""
        if not isinstance(error, UpstreamHTTPError):
            return None
        limit, after = self._config.max_retry_after, error.retry_after
        if error.status_code == 429:
            return after if after is not None and after <= limit else None
        if error.status_code in _RETRY_STATUSES:
            if after is None:
                return _backoff(attempt)
            # A 503 asking for longer than we would wait: retrying early only adds load.
            return max(after, _backoff(attempt)) if after <= limit else None
        return None

    def _attempt(
        self, url: str, payload: bytes | None, deadline: float, *, need_secret: bool
    ) -> SessionResult:
        cfg = self._config
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise UpstreamTimeout(error_message="time budget spent before the request was sent")
        with self._session() as session:
            response = session.send(
                self._prepare(url, payload),
                timeout=(min(cfg.connect_timeout, remaining), min(cfg.read_timeout, remaining)),
                stream=True,  # read the body ourselves, under the deadline
                allow_redirects=False,
                proxies=self._proxies,
            )
        try:
            status = response.status_code
            request_id = response.headers.get("x-request-id")
            body = self._read_body(response, deadline, status=status, request_id=request_id)
        finally:
            response.close()

        if not 200 <= status < 300:
            raise _http_error(status, response.headers, body, cfg.api_key, request_id)
        if len(body) > cfg.max_body_bytes:
            raise UpstreamInvalidResponse(
                status_code=status,
                request_id=request_id,
                error_message=f"HTTP {status} body larger than {cfg.max_body_bytes} bytes",
            )
        return _parse_session(body, status, request_id, cfg.api_key, need_secret=need_secret)

    def _read_body(
        self, response: requests.Response, deadline: float, *, status: int, request_id: str | None
    ) -> bytes:
        """Read up to max_body_bytes + 1 bytes; a slow drip cannot outlast the deadline."""
        cfg = self._config
        raw = response.raw
        chunks: list[bytes] = []
        size = 0
        try:
            while size <= cfg.max_body_bytes:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise UpstreamTimeout(
                        status_code=status,
                        request_id=request_id,
                        error_message=f"time budget spent while reading the HTTP {status} body",
                    )
                # The read timeout bounds each gap between bytes, not the whole body: shrink
                # it to what is left of the budget, so one last wait cannot overshoot it.
                sock = getattr(raw.connection, "sock", None)
                if sock is not None:
                    sock.settimeout(min(cfg.read_timeout, remaining))
                # read1: return whatever arrived, instead of blocking until a full chunk.
                chunk = raw.read1(_CHUNK_SIZE, decode_content=True)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except ReadTimeoutError as exc:
            raise UpstreamTimeout(
                status_code=status,
                request_id=request_id,
                error_message=f"read timed out in the HTTP {status} body",
            ) from exc
        except (Urllib3HTTPError, OSError) as exc:
            raise UpstreamNetworkError(
                status_code=status,
                request_id=request_id,
                error_message=_describe(exc, cfg.api_key),
            ) from exc
        return b"".join(chunks)


def _from_requests(exc: requests.RequestException, api_key: str) -> tuple[UpstreamError, bool]:
    """Map a requests failure to our error, and say whether the request may have been sent."""
    # requests wraps urllib3's error as args[0]; its own errors (bad URL, bad header) hold text.
    inner: Any = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
    if isinstance(inner, MaxRetryError) and inner.reason is not None:
        inner = inner.reason
    message = _describe(inner, api_key)
    if isinstance(exc, requests.ConnectTimeout) or (
        isinstance(exc, requests.ConnectionError)
        and not isinstance(exc, requests.exceptions.SSLError)
        # NameResolutionError is a NewConnectionError: DNS, refused, unreachable.
        and isinstance(inner, (NewConnectionError, ConnectionRefusedError))
    ):
        error: UpstreamError = UpstreamNetworkError(error_message=message)
        sent = False
    elif isinstance(exc, requests.ReadTimeout) or isinstance(inner, ReadTimeoutError):
        # The request may have been processed: a retried create could mint a second session.
        error, sent = UpstreamTimeout(error_message=message), True
    else:
        # Hang-up after sending (RemoteDisconnected, reset), TLS, proxy, bad URL: no retry.
        error, sent = UpstreamNetworkError(error_message=message), True
    # A refused header's message quotes its value, key included: a traceback must not show it.
    error.__cause__ = None if isinstance(exc, requests.exceptions.InvalidHeader) else exc
    return error, sent


def _describe(exc: BaseException, api_key: str) -> str:
    return clean_text(f"{type(exc).__name__}: {exc}", limit=_SNIPPET_CHARS, secrets=(api_key,))


def _http_error(
    status: int, headers: Any, body: bytes, api_key: str, request_id: str | None
) -> UpstreamHTTPError:
    envelope = _json_or_none(body)
    err = envelope.get("error") if isinstance(envelope, dict) else None
    if isinstance(err, str):
        err = {"message": err}
    if isinstance(err, dict) and err.get("message"):
        message = clean_text(str(err["message"]), secrets=(api_key,))
    else:
        err = err if isinstance(err, dict) else {}
        snippet = " ".join(body[: _SNIPPET_CHARS * 4].decode("utf-8", "replace").split())
        message = clean_text(
            snippet or f"HTTP {status} with empty body", limit=_SNIPPET_CHARS, secrets=(api_key,)
        )
    return UpstreamHTTPError(
        status_code=status,
        error_type=_error_field(err.get("type"), api_key),
        error_code=_error_field(err.get("code"), api_key),
        error_param=_error_field(err.get("param"), api_key),
        error_message=message,
        request_id=request_id,
        retry_after=_retry_after(headers) if status in (429, 503) else None,
    )


def _parse_session(
    body: bytes, status: int, request_id: str | None, api_key: str, *, need_secret: bool
) -> SessionResult:
    def invalid(message: str) -> UpstreamInvalidResponse:
        return UpstreamInvalidResponse(
            status_code=status, request_id=request_id, error_message=message
        )

    data = _json_or_none(body)
    if data is None:
        # The ek_ pattern in clean_text keeps a ChatKit secret out of the snippet.
        snippet = " ".join(body[: _SNIPPET_CHARS * 4].decode("utf-8", "replace").split())
        message = f"HTTP {status} body is not JSON: {snippet}"
        raise invalid(clean_text(message, limit=_SNIPPET_CHARS, secrets=(api_key,)))
    if not isinstance(data, dict):
        raise invalid(f"HTTP {status} body is a JSON {type(data).__name__}, not an object")
    session_id, secret = data.get("id"), data.get("client_secret")
    # Describe what is missing, never the content: the body may hold a client secret.
    if not isinstance(session_id, str) or not session_id:
        raise invalid(f"HTTP {status} body has no session 'id'")
    if need_secret and (not isinstance(secret, str) or not secret):
        raise invalid(f"HTTP {status} body has no 'client_secret'")
    workflow = data.get("workflow")
    return SessionResult(
        session_id=session_id,
        client_secret=secret if isinstance(secret, str) else "",
        expires_at=_int_or_none(data.get("expires_at")),
        status=_str_or_none(data.get("status")),
        user=_str_or_none(data.get("user")),
        workflow_id=_str_or_none(workflow.get("id")) if isinstance(workflow, dict) else None,
        request_id=request_id,
        attempts=0,
        latency_ms=0,
    )


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, or absurdly deep nesting
        return None


def _retry_after(headers: Any) -> float | None:
    """Seconds from retry-after-ms (OpenAI's, more precise) or Retry-After (seconds or a date)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = (headers.get(name) or "").strip()
        if not value:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            try:
                when = parsedate_to_datetime(value)
            except (TypeError, ValueError):
                continue
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - datetime.now(UTC)).total_seconds()
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    return None


def _backoff(attempt: int) -> float:
    # Full-ish jitter, so a burst of web workers does not retry in lockstep.
    return min(0.25 * 2 ** (attempt - 1), 1.0) * random.uniform(0.5, 1.0)


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _error_field(value: Any, api_key: str) -> str | None:
    """error.type, .code or .param, cleaned like the message: the error's str() quotes them, so
    an upstream that echoes the key there would otherwise put it in the log line."""
    if value is None:
        return None
    return clean_text(str(value), limit=_SNIPPET_CHARS, secrets=(api_key,))


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 0)
