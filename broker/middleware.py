import functools

import csp.middleware
from csp.constants import HEADER, HEADER_REPORT_ONLY
from csp.utils import build_policy
from django.conf import settings
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.messages.storage import default_storage
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.functional import SimpleLazyObject, empty

from logs import request_id


class RejectNulBytesMiddleware:
    """Answer 400 to a query string carrying a NUL byte.

    Nothing legitimate sends one, and PostgreSQL refuses NUL in text, so an admin filter or
    search with `%00` used to be a 500. Form and JSON fields are covered by the form and
    serializer fields, which already reject NUL.
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if any(
            "\x00" in key or any("\x00" in value for value in values)
            for key, values in request.GET.lists()
        ):
            message = "Query parameters must not contain NUL bytes."
            body = {"error": {"code": "invalid_request", "message": message, "request_id": None}}
            return JsonResponse(body, status=400)
        return self.get_response(request)


class LazyMessageMiddleware(MessageMiddleware):
    """Django's MessageMiddleware, with each request's storage built when it is first used.

    Django builds it for every request, with a cookie signer and a session storage: 1.2 % of a
    session request's CPU in a profile (docs/benchmarks.md), for messages that only admin pages
    add and show. A request that never touched its messages has none to save.
    """

    def process_request(self, request: HttpRequest) -> None:
        request._messages = SimpleLazyObject(lambda: default_storage(request))

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        messages = request.__dict__.get("_messages")
        if isinstance(messages, SimpleLazyObject) and messages._wrapped is empty:
            return response
        return super().process_response(request, response)


class ReleaseRequestMiddleware:
    """Break the reference cycles a request leaves, so that its objects go when it ends.

    Django's messages and auth middleware, and DRF's view, request and response, point back at
    one another. A request's whole graph, some 90 objects, used to wait for Python's cycle
    collector. At a 300 ms upstream each request outlives two young collections, so its graph
    reached the oldest generation, whose collections paused the worker, with every request it
    held, for 100–290 ms of CPU (docs/benchmarks.md). Outermost, so that every other
    middleware is done with the request. A streaming response may still read its request while
    it streams, so its cycles are left to the collector.
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.streaming:
            return response
        # The message storage (LazyMessageMiddleware's, built or not) and
        # AuthenticationMiddleware's auser hold the request.
        request.__dict__.pop("_messages", None)
        request.__dict__.pop("auser", None)
        # DRF: the response's context holds the view, which holds the response; the request's
        # parser context holds the request itself. Both are done with once it is rendered.
        context = getattr(response, "renderer_context", None)
        if context is not None:
            response.renderer_context = None
            if (drf_request := context.get("request")) is not None:
                drf_request.parser_context = None
        return response


class LogContextMiddleware:
    """Clear the request id a thread's previous request bound (logs.py), as a request starts.

    Cleared at the start rather than reset at the end: Django logs a response's status after
    the middleware has returned it, and that line must still carry the id.
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id.set(None)
        return self.get_response(request)


# What a view or decorator can set on a response to change or drop its policy (csp.decorators).
_CSP_PER_RESPONSE = tuple(
    f"_csp_{kind}{suffix}"
    for kind in ("config", "update", "replace", "exempt")
    for suffix in ("", "_ro")
)


class CSPMiddleware(csp.middleware.CSPMiddleware):
    """django-csp's middleware, with the settings' policies built once rather than per response.

    django-csp builds both headers (policy and report-only) for every response, which cost about
    0.1 ms, a fifteenth of a session request's CPU (docs/benchmarks.md). A response that no
    decorator touched, whose request made no nonce, on a path the settings do not exclude, gets
    the same headers every time: those are built once, until the settings change. Every other
    response goes through django-csp unchanged.
    """

    def process_response(self, request, response):
        if (
            getattr(request, "_csp_nonce", None) is not None
            or any(hasattr(response, name) for name in _CSP_PER_RESPONSE)
            or _csp_excluded_prefixes()
            or (settings.DEBUG and response.status_code in (500, 404))
        ):
            return super().process_response(request, response)
        for header, policy in _csp_headers():
            if header not in response:
                response[header] = policy
        # As django-csp does: a nonce asked for after the header is written is an error.
        request.csp_nonce = csp.middleware.CheckableLazyObject(self._csp_nonce_post_response)
        return response


@functools.cache
def _csp_headers() -> tuple[tuple[str, str], ...]:
    policies = ((HEADER, build_policy()), (HEADER_REPORT_ONLY, build_policy(report_only=True)))
    return tuple((header, policy) for header, policy in policies if policy)


@functools.cache
def _csp_excluded_prefixes() -> bool:
    return any(
        (getattr(settings, name, None) or {}).get("EXCLUDE_URL_PREFIXES")
        for name in ("CONTENT_SECURITY_POLICY", "CONTENT_SECURITY_POLICY_REPORT_ONLY")
    )


@receiver(setting_changed)
def _csp_forget(*, setting: str, **kwargs) -> None:
    if setting.startswith("CONTENT_SECURITY_POLICY"):
        _csp_headers.cache_clear()
        _csp_excluded_prefixes.cache_clear()
