"""The DRF classes that settings.REST_FRAMEWORK names.

They live apart from the views: DRF reads its settings while rest_framework.views is imported,
so a view module cannot also hold them without an import cycle.
"""

import io

from django.conf import settings
from rest_framework import exceptions
from rest_framework.authentication import SessionAuthentication
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import JSONParser

from sessions_api import errors


class CsrfSessionAuthentication(SessionAuthentication):
    """DRF's session auth (CSRF enforced for logged-in users) with a recognisable CSRF error."""

    def enforce_csrf(self, request) -> None:
        try:
            super().enforce_csrf(request)
        except exceptions.PermissionDenied as exc:
            # The envelope says csrf_failed in its own words; DRF's reason stays in the cause.
            raise errors.CsrfRejected() from exc


class JSONOnlyNegotiation(DefaultContentNegotiation):
    """Answers in JSON whatever the Accept header asks: the API has no other format.

    DRF's negotiation parses Accept on every request only to pick between renderers, and with
    one renderer it can only choose it or answer 406; that cost 2 % of a request's CPU.
    """

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class LimitedJSONParser(JSONParser):
    """JSON parser that reads at most CHATKIT_MAX_BODY_BYTES, whatever Content-Length claims."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.CHATKIT_MAX_BODY_BYTES
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise errors.RequestTooLarge(f"The request body is larger than {limit} bytes.")
        return super().parse(io.BytesIO(body), media_type, parser_context)
