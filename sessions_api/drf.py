"""The DRF classes that settings.REST_FRAMEWORK names.

They live apart from the views: DRF reads its settings while rest_framework.views is imported,
so a view module cannot also hold them without an import cycle.
"""

import io

from django.conf import settings
from rest_framework import exceptions
from rest_framework.authentication import SessionAuthentication
from rest_framework.parsers import JSONParser

from sessions_api import errors


class CsrfSessionAuthentication(SessionAuthentication):
    """DRF's session auth (CSRF enforced for logged-in users) with a recognisable CSRF error."""

    def enforce_csrf(self, request) -> None:
        try:
            super().enforce_csrf(request)
        except exceptions.PermissionDenied as exc:
            raise errors.CsrfRejected(exc.detail) from exc


class LimitedJSONParser(JSONParser):
    """JSON parser that reads at most CHATKIT_MAX_BODY_BYTES, whatever Content-Length claims."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.CHATKIT_MAX_BODY_BYTES
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise errors.RequestTooLarge(f"The request body is larger than {limit} bytes.")
        return super().parse(io.BytesIO(body), media_type, parser_context)
