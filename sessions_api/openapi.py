"""The OpenAPI description of the session endpoint, drawn from the code that answers it.

The error responses are generated from the error vocabulary in errors.py: every ApplicationError
class, with its status, code and docstring. A new error class appears in the schema, and in the
README's table (tests/sessions_api/test_openapi.py holds them together), by itself.
"""

import inspect
from itertools import groupby

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse

from sessions_api import errors

LEGACY_PREFIX = "/api/api/"


def error_classes() -> list[type[errors.ApplicationError]]:
    """Every error the API answers with (the base class is internal_error), by status and code."""
    found, pending = [], [errors.ApplicationError]
    while pending:
        error_class = pending.pop()
        found.append(error_class)
        pending.extend(error_class.__subclasses__())
    return sorted(found, key=lambda error_class: (error_class.status_code, error_class.code))


def when(error_class: type[errors.ApplicationError]) -> str:
    """When a caller gets this error: its docstring, on one line."""
    return " ".join(inspect.cleandoc(error_class.__dict__["__doc__"]).split())


def error_envelope(codes: list[str]) -> dict:
    return {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "request_id"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "string", "enum": codes},
                    "message": {"type": "string", "description": "For people; may change."},
                    "request_id": {
                        "type": "string",
                        "nullable": True,
                        "pattern": "^brk_",
                        "description": "The audit row's id (quote it to an operator); null "
                        "when nothing was recorded.",
                    },
                    "upstream_message": {
                        "type": "string",
                        "description": "Only with DJANGO_DEBUG=true: the upstream's own words.",
                    },
                },
            }
        },
    }


def error_responses() -> dict[int, OpenApiResponse]:
    """One response per status: its codes (an enum) and, for each, when it is answered."""
    responses = {}
    for status, group in groupby(error_classes(), key=lambda error_class: error_class.status_code):
        group = list(group)
        lines = [f"- `{error_class.code}`: {when(error_class)}" for error_class in group]
        codes = sorted({error_class.code for error_class in group})
        responses[status] = OpenApiResponse(
            response=error_envelope(codes), description="\n".join(lines)
        )
    return responses


def retry_after_headers() -> list[OpenApiParameter]:
    """The Retry-After header, on each status some of whose errors send it."""
    sent_by = [error_class for error_class in error_classes() if error_class.sends_retry_after]
    headers = []
    for status, group in groupby(sent_by, key=lambda error_class: error_class.status_code):
        codes = ", ".join(f"`{error_class.code}`" for error_class in group)
        headers.append(
            OpenApiParameter(
                "Retry-After",
                OpenApiTypes.INT,
                location=OpenApiParameter.HEADER,
                response=[status],
                description=f"Seconds to wait before asking again; sent with {codes}.",
            )
        )
    return headers


def error_table() -> str:
    """The README's error table (Markdown), one row per error class."""
    rows = ["| status | code | when |", "|---|---|---|"]
    for error_class in error_classes():
        retry = " + `Retry-After`" if error_class.sends_retry_after else ""
        status = f"{error_class.status_code}{retry}"
        rows.append(f"| {status} | `{error_class.code}` | {when(error_class)} |")
    return "\n".join(rows) + "\n"


def exclude_legacy_path(endpoints, **kwargs):
    """Preprocessing hook: the guide's old path answers the same view; document it once."""
    return [endpoint for endpoint in endpoints if not endpoint[0].startswith(LEGACY_PREFIX)]


class CsrfSessionScheme(OpenApiAuthenticationExtension):
    """Signed-in callers: Django's session cookie, and the CSRF token beside it (both needed)."""

    target_class = "sessions_api.drf.CsrfSessionAuthentication"
    name = ["sessionCookie", "csrfToken"]

    def get_security_definition(self, auto_schema):
        return [
            {
                "type": "apiKey",
                "in": "cookie",
                "name": settings.SESSION_COOKIE_NAME,
                "description": "Django's session cookie, for signed-in users. Signed-out "
                "callers send none, and need no CSRF token.",
            },
            {
                "type": "apiKey",
                "in": "header",
                "name": "X-CSRFToken",
                "description": "The csrftoken cookie's value; required with a session cookie "
                "(403 `csrf_failed` otherwise).",
            },
        ]
