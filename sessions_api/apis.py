"""HTTP in and out for the session endpoint. The decisions live in services.py."""

import ipaddress

from django.conf import settings
from django.contrib.auth import get_user
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from sessions_api import errors
from sessions_api.drf import SessionCreateThrottle
from sessions_api.identity import ChatKitIdentity, anon_cookie_set, identity_resolve
from sessions_api.services import chatkit_attempt_reject, chatkit_session_create


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers and booleans instead of quietly turning them into text."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


def client_ip_of(request) -> str | None:
    if not settings.CHATKIT_AUDIT_CLIENT_IP:
        return None
    address = request.META.get("REMOTE_ADDR", "")
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if api_settings.NUM_PROXIES and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",")]
        address = hops[-min(api_settings.NUM_PROXIES, len(hops))]
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


class ChatKitSessionCreateApi(APIView):
    """POST → a fresh ChatKit client secret for the caller."""

    class InputSerializer(serializers.Serializer):
        workflow_id = StrictCharField(required=False, max_length=128)
        # ChatKit JS passes the secret it holds when it wants a new one; only its presence matters.
        current_client_secret = StrictCharField(
            required=False, allow_null=True, allow_blank=True, max_length=4096
        )

    class OutputSerializer(serializers.Serializer):
        client_secret = serializers.CharField()
        expires_at = serializers.IntegerField(allow_null=True)

    throttle_classes = [SessionCreateThrottle]
    identity: ChatKitIdentity | None = None

    def post(self, request):
        if not request.user.is_authenticated and not settings.CHATKIT_ALLOW_ANONYMOUS:
            raise errors.AuthenticationRequired()
        self.identity = identity_resolve(request)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        grant = chatkit_session_create(
            user=request.user,
            identity=self.identity,
            workflow_id=serializer.validated_data.get("workflow_id"),
            refresh=bool(serializer.validated_data.get("current_client_secret")),
            client_ip=client_ip_of(request),
        )
        return Response(self.OutputSerializer(grant).data)

    def handle_exception(self, exc):
        error = errors.as_application_error(exc)
        if (
            error is not None
            and error.request_id is None
            and self.request.method == "POST"
            and not isinstance(exc, exceptions.MethodNotAllowed)
        ):
            # Refused before the service ran: still one audit row, so nothing is lost.
            # get_user reads the session: DRF has reset request.user if its CSRF check failed.
            attempt = chatkit_attempt_reject(
                user=get_user(self.request._request),
                identity=self.identity,
                error=error,
                client_ip=client_ip_of(self.request),
            )
            exc.request_id = error.request_id = attempt.id
        return super().handle_exception(exc)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if self.identity is not None and self.identity.new_anon_id:
            anon_cookie_set(response, self.identity.new_anon_id)
        # A client secret must never be cached by a browser or a proxy.
        response["Cache-Control"] = "no-store"
        return response
