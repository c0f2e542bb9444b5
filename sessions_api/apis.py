"""HTTP in and out for the session endpoint. The decisions live in services.py."""

import copy
import functools
import ipaddress
import logging

from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.models import AnonymousUser
from django.db import DatabaseError
from django.middleware.csrf import get_token
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from audit.models import SessionAttempt
from sessions_api import errors, openapi
from sessions_api.identity import anon_cookie_set, anon_identity_of, identity_resolve
from sessions_api.services import SessionRequest, chatkit_session_create
from sessions_api.throttle import SessionCreateThrottle, client_address

logger = logging.getLogger(__name__)


class LightSerializer(serializers.Serializer):
    """A serializer whose instances copy its declared fields shallowly.

    DRF deep-copies them for every instance, which builds each field and its validators anew:
    20 of the input serializer's 44 µs a request. A shallow copy is enough here: binding sets
    the copy's own name and parent, and nothing else of a field changes while it validates.
    """

    def get_fields(self):
        return {name: copy.copy(field) for name, field in self._declared_fields.items()}

    def is_valid(self, *, raise_exception=False):
        try:
            return super().is_valid(raise_exception=raise_exception)
        finally:
            # Each bound field points back at its serializer: dropping them once validated
            # frees the serializer when the request ends (ReleaseRequestMiddleware says why).
            self.__dict__.pop("fields", None)


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers and booleans instead of quietly turning them into text."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


def client_ip_of(request) -> str | None:
    if request.META.get("HTTP_X_FORWARDED_FOR") and not api_settings.NUM_PROXIES:
        _warn_forwarded_ignored()
    if not settings.CHATKIT_AUDIT_CLIENT_IP:
        return None
    try:
        return str(ipaddress.ip_address(client_address(request)))
    except ValueError:
        return None


@functools.cache
def _warn_forwarded_ignored() -> None:
    # Once per process: behind a proxy that would be every request.
    logger.warning(
        "A request came with X-Forwarded-For, but DJANGO_NUM_PROXIES is 0, so the header is "
        "ignored and every caller behind a proxy shares the proxy's address (and its throttle "
        "limit). Behind a proxy, set DJANGO_NUM_PROXIES to the number of proxies in front of "
        "gunicorn; otherwise the header is forged and rightly ignored."
    )


class ChatKitSessionCreateApi(APIView):
    """POST → a fresh ChatKit client secret for the caller."""

    @extend_schema_serializer(component_name="SessionRequest")
    class InputSerializer(LightSerializer):
        workflow_id = StrictCharField(
            required=False,
            max_length=128,
            help_text="A workflow other than the configured one; only allowed ids are accepted.",
        )
        # ChatKit JS passes the secret it holds when it wants a new one; only its presence matters.
        current_client_secret = StrictCharField(
            required=False,
            allow_null=True,
            allow_blank=True,
            max_length=4096,
            help_text="The secret ChatKit holds when it asks for a new one: marks a refresh.",
        )

    @extend_schema_serializer(component_name="Session")
    class OutputSerializer(serializers.Serializer):
        # For the schema only: post() answers with a plain dict (see there).
        client_secret = serializers.CharField(help_text="The ChatKit client secret (`ek_…`).")
        expires_at = serializers.IntegerField(help_text="When it expires, in Unix seconds.")

    throttle_classes = [SessionCreateThrottle]

    def setup(self, request, *args, **kwargs):
        super().setup(request, *args, **kwargs)
        # Made before DRF runs authentication, CSRF and throttling, so that a request they
        # refuse is recorded by the same one writer as every other request.
        self.attempt = SessionRequest(client_ip=client_ip_of(request))
        self.django_request = request

    @extend_schema(
        operation_id="chatkit_session_create",
        summary="Mint a ChatKit client secret for the caller",
        description=(
            "Creates a ChatKit session upstream for the caller (a signed-in user, or the "
            "signed-out browser named by its `chatkit_anon` cookie, set on its first call) and "
            "answers with its client secret. Every call, answered or refused, is recorded in "
            "the audit log; an error's `request_id` finds its row. Responses are never cached "
            "(`Cache-Control: no-store`)."
        ),
        request=InputSerializer,
        responses={200: OutputSerializer, **openapi.error_responses()},
        parameters=openapi.retry_after_headers(),
        tags=["sessions"],
    )
    def post(self, request):
        attempt = self.attempt
        attempt.user = request.user
        if not request.user.is_authenticated and not settings.CHATKIT_ALLOW_ANONYMOUS:
            raise errors.AuthenticationRequired()
        attempt.identity = identity_resolve(request)
        _describe(attempt, request.data)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        grant = chatkit_session_create(attempt)
        # Two fields of known types: a dict, not an output serializer, whose per-request copy
        # of its fields cost 5 % of a request's CPU (docs/benchmarks.md).
        return Response({"client_secret": grant.client_secret, "expires_at": grant.expires_at})

    def handle_exception(self, exc):
        if self.request.method != "POST" or isinstance(exc, exceptions.MethodNotAllowed):
            return super().handle_exception(exc)
        error = errors.as_application_error(exc) or errors.ApplicationError()
        if self.attempt.user is None:
            # Refused before post() ran. Read the user from the session: DRF has reset
            # request.user to anonymous if its CSRF check failed.
            try:
                self.attempt.user = get_user(self.django_request)
            except DatabaseError:  # the refusal is the database itself: record who we can
                self.attempt.user = AnonymousUser()
        if self.attempt.identity is None and not self.attempt.user.is_authenticated:
            # A browser refused early (throttled, say) is still named by its cookie; a caller
            # without one is given no new id by a refusal.
            self.attempt.identity = anon_identity_of(self.django_request)
        outcome = SessionAttempt.Outcome.REJECTED
        if error.code == errors.ApplicationError.code:
            outcome = SessionAttempt.Outcome.INTERNAL_ERROR
        try:
            self.attempt.refuse(error, outcome=outcome)
        except errors.AuditUnavailable as unavailable:
            return super().handle_exception(unavailable)
        exc.request_id = error.request_id
        return super().handle_exception(exc)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        identity = self.attempt.identity
        if identity is not None and identity.new_anon_id:
            anon_cookie_set(response, identity.new_anon_id)
        # A client secret must never be cached by a browser or a proxy.
        response["Cache-Control"] = "no-store"
        return response


def _describe(attempt: SessionRequest, data) -> None:
    """What the body asks for, read before validation, so that a refused row keeps it too."""
    if not isinstance(data, dict):
        return
    workflow_id = data.get("workflow_id")
    attempt.workflow_id = workflow_id if isinstance(workflow_id, str) else ""
    attempt.refresh = bool(data.get("current_client_secret"))


class CsrfTokenApi(APIView):
    """The CSRF token (and its cookie), for a frontend on another origin: its script cannot read
    this site's csrftoken cookie. Only origins in CORS_ALLOWED_ORIGINS may read the answer."""

    authentication_classes = []  # the token is for whoever asks; it is bound to their cookie
    permission_classes = []

    @extend_schema_serializer(component_name="CsrfToken")
    class OutputSerializer(serializers.Serializer):
        csrf_token = serializers.CharField(
            help_text="Send it as X-CSRFToken with each POST, with credentials: 'include'."
        )

    @extend_schema(
        summary="Get a CSRF token (frontends on another origin)",
        responses={200: OutputSerializer},
        auth=[],
    )
    def get(self, request):
        response = Response({"csrf_token": get_token(request)})
        response["Cache-Control"] = "no-store"
        return response
