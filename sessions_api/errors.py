"""One error vocabulary for the API, and the DRF exception handler that renders it.

Every error leaves as `{"error": {"code", "message", "request_id"}}`, where request_id is the
audit row's opaque id (`brk_…`; null when nothing was recorded, e.g. a wrong method).

Each class's docstring says when a caller gets it: the OpenAPI schema (sessions_api/openapi.py)
and the README's error table are generated from these classes, so a new one documents itself.
"""

import logging

from django.conf import settings
from django.db import DatabaseError
from rest_framework import exceptions, status
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class ApplicationError(Exception):
    """A bug of ours; the attempt is still recorded, with the outcome `internal_error`."""

    status_code = status.HTTP_500_INTERNAL_SERVER_ERROR
    code = "internal_error"
    message = "Something went wrong on our side."
    # Whether this error's responses carry a Retry-After header (in seconds): what the schema
    # promises. The raiser supplies the value.
    sends_retry_after = False

    def __init__(
        self,
        message: str | None = None,
        *,
        request_id: str | None = None,
        retry_after: int | None = None,
        debug_detail: str = "",
        refusal_key: str = "",
    ) -> None:
        self.message = message or self.message
        self.request_id = request_id
        self.retry_after = retry_after
        # Refusals that share this key share one audit row, which counts them (throttled
        # callers: one row per caller per minute, however fast they retry).
        self.refusal_key = refusal_key
        # Only shown when DEBUG is on: the upstream's own words, to help a developer.
        self.debug_detail = debug_detail
        super().__init__(self.message)


class InvalidRequest(ApplicationError):
    """The body is not valid: malformed JSON, a value of the wrong type, or too long."""

    status_code = status.HTTP_400_BAD_REQUEST
    code = "invalid_request"
    message = "The request body is not valid."


class RequestTooLarge(ApplicationError):
    """The body is larger than `CHATKIT_MAX_BODY_BYTES` (16 KB)."""

    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    code = "invalid_request"
    message = "The request body is too large."


class UnsupportedMediaType(InvalidRequest):
    """The body is sent as something other than `application/json`."""

    status_code = status.HTTP_415_UNSUPPORTED_MEDIA_TYPE
    message = "Send the body as application/json."


class WorkflowNotAllowed(ApplicationError):
    """The body names a workflow other than `OPENAI_WORKFLOW_ID` or one of
    `CHATKIT_ALLOWED_WORKFLOWS`.
    """

    status_code = status.HTTP_400_BAD_REQUEST
    code = "workflow_not_allowed"
    message = "This workflow is not available here."


class AuthenticationRequired(ApplicationError):
    """The caller is signed out while `CHATKIT_ALLOW_ANONYMOUS` is false."""

    status_code = status.HTTP_401_UNAUTHORIZED
    code = "authentication_required"
    message = "Log in to start a chat."


class MethodNotAllowed(ApplicationError):
    """A method other than POST (OPTIONS aside); nothing is recorded, so `request_id` is null."""

    status_code = status.HTTP_405_METHOD_NOT_ALLOWED
    code = "method_not_allowed"
    message = "Method not allowed."


class CsrfRejected(exceptions.PermissionDenied):
    """Raised by our SessionAuthentication; a DRF exception so DRF resets request.user."""


class CsrfFailed(ApplicationError):
    """A signed-in caller (session cookie) sent no valid CSRF token in `X-CSRFToken`."""

    status_code = status.HTTP_403_FORBIDDEN
    code = "csrf_failed"
    message = "CSRF check failed: send the X-CSRFToken header with the csrftoken cookie's value."


class RateLimited(ApplicationError):
    """Too many sessions from one user, browser or address (the throttles)."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    sends_retry_after = True
    code = "rate_limited"
    message = "Too many chat sessions requested. Try again shortly."


class AnonymousBudgetSpent(ApplicationError):
    """The budget for all signed-out callers together is spent."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    sends_retry_after = True
    code = "anonymous_budget_spent"
    message = "Too many chats for signed-out visitors right now. Sign in, or try again shortly."


class NotConfigured(ApplicationError):
    """The OpenAI key or workflow is not configured on this server."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "not_configured"
    message = "Chat is not configured on this server."


class AuditUnavailable(ApplicationError):
    """The attempt could not be recorded (the database is down); a session minted meanwhile
    is cancelled.
    """

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "audit_unavailable"
    message = (
        "This request could not be recorded, so no chat session was handed out. Try again shortly."
    )


class UpstreamAuthFailed(ApplicationError):
    """OpenAI answered 401 or 403: this server's key or project is wrong."""

    # 502, never 401: the browser would take a 401 to mean that *it* is logged out.
    status_code = status.HTTP_502_BAD_GATEWAY
    code = "upstream_auth_failed"
    message = "The chat service refused this server's credentials."


class UpstreamWorkflowNotFound(ApplicationError):
    """OpenAI answered 404: the workflow is not found for this server's key."""

    status_code = status.HTTP_502_BAD_GATEWAY
    code = "upstream_workflow_not_found"
    message = "The chat workflow was not found for this server's credentials."


class UpstreamRejected(ApplicationError):
    """OpenAI answered another 4xx (400, 409, 422…): it rejects what was sent."""

    status_code = status.HTTP_502_BAD_GATEWAY
    code = "upstream_rejected"
    message = "The chat service rejected the session request."


class UpstreamRateLimited(ApplicationError):
    """OpenAI answered 429."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    sends_retry_after = True
    code = "upstream_rate_limited"
    message = "The chat service is busy. Try again shortly."


class UpstreamUnavailable(ApplicationError):
    """OpenAI answered 5xx or an unexpected status, or could not be reached, after retries."""

    status_code = status.HTTP_502_BAD_GATEWAY
    code = "upstream_unavailable"
    message = "The chat service is unavailable. Try again shortly."


class UpstreamCircuitOpen(UpstreamUnavailable):
    """The last calls to OpenAI failed, in a row (the circuit is open): answered at once,
    without calling.
    """

    # 503, not 502: we did not call; the upstream failed too often just now (Retry-After says
    # when the next call will be tried).
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    sends_retry_after = True


class UpstreamTimedOut(ApplicationError):
    """OpenAI was too slow: the time budget (`CHATKIT_TOTAL_TIMEOUT`) is spent."""

    status_code = status.HTTP_504_GATEWAY_TIMEOUT
    code = "upstream_timeout"
    message = "The chat service took too long to answer."


class UpstreamInvalidResponse(ApplicationError):
    """OpenAI answered 200 with a body that cannot be used."""

    status_code = status.HTTP_502_BAD_GATEWAY
    code = "upstream_invalid_response"
    message = "The chat service sent an answer we could not use."


def as_application_error(exc: Exception) -> ApplicationError | None:
    """Translate DRF's and Django's own exceptions into our vocabulary."""
    if isinstance(exc, ApplicationError):
        return exc
    request_id = getattr(exc, "request_id", None)
    if isinstance(exc, exceptions.MethodNotAllowed):
        return MethodNotAllowed(str(exc.detail), request_id=request_id)
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return UnsupportedMediaType(request_id=request_id)
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        return AuthenticationRequired(request_id=request_id)
    if isinstance(exc, CsrfRejected):
        return CsrfFailed(request_id=request_id)
    if isinstance(exc, exceptions.ValidationError):
        return InvalidRequest(_validation_message(exc.detail), request_id=request_id)
    if isinstance(exc, exceptions.ParseError):
        return InvalidRequest(f"Malformed JSON: {exc.detail}", request_id=request_id)
    if isinstance(exc, DatabaseError):
        # No session is handed out that cannot be recorded, so the database being down or
        # overloaded (a pool that lent every connection) is this error too.
        return AuditUnavailable(request_id=request_id)
    if isinstance(exc, exceptions.APIException):
        error = ApplicationError(str(exc.detail), request_id=request_id)
        error.status_code, error.code = exc.status_code, exc.default_code
        return error
    return None


def _validation_message(detail) -> str:
    if isinstance(detail, dict):
        parts = [f"{field}: {' '.join(map(str, errors))}" for field, errors in detail.items()]
        return "; ".join(parts)
    if isinstance(detail, list):
        return " ".join(map(str, detail))
    return str(detail)


def render_error(error: ApplicationError) -> Response:
    body = {"code": error.code, "message": error.message, "request_id": error.request_id}
    if settings.DEBUG and error.debug_detail:
        body["upstream_message"] = error.debug_detail
    response = Response({"error": body}, status=error.status_code)
    if error.retry_after is not None:
        response["Retry-After"] = str(error.retry_after)
    return response


def exception_handler(exc: Exception, context: dict) -> Response:
    error = as_application_error(exc)
    if error is None:
        # An unexpected bug: still a JSON envelope, never a traceback page.
        logger.exception("Unhandled error in %s", context.get("view").__class__.__name__)
        error = ApplicationError(request_id=getattr(exc, "request_id", None))
    elif isinstance(exc, DatabaseError):
        # Logged here, where each error is rendered once (the view translates it too).
        logger.error("Database error while serving a session request: %s", exc)
    return render_error(error)
