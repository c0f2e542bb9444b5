from django.conf import settings
from django.db import models
from django.utils import timezone


class SessionAttempt(models.Model):
    """One request for a ChatKit client secret, successful or not. Append-only."""

    class Outcome(models.TextChoices):
        SUCCESS = "success", "Success"
        UPSTREAM_ERROR = "upstream_error", "Upstream error answer"
        TIMEOUT = "timeout", "Upstream timeout"
        NETWORK_ERROR = "network_error", "Network error"
        INVALID_RESPONSE = "invalid_response", "Invalid upstream response"
        NOT_CONFIGURED = "not_configured", "Not configured"
        REJECTED = "rejected", "Rejected before the upstream call"

    class Kind(models.TextChoices):
        INITIAL = "initial", "Initial"
        REFRESH = "refresh", "Refresh"

    created_at = models.DateTimeField(
        "created at", default=timezone.now, help_text="When the attempt started (UTC)."
    )
    outcome = models.CharField(
        "outcome", max_length=32, choices=Outcome.choices, help_text="How the attempt ended."
    )
    kind = models.CharField(
        "kind",
        max_length=16,
        choices=Kind.choices,
        default=Kind.INITIAL,
        help_text="Refresh when the browser passed its current client secret to get a new one.",
    )
    status_code = models.PositiveSmallIntegerField(
        "upstream status",
        null=True,
        blank=True,
        help_text="HTTP status OpenAI answered with; empty when there was no answer.",
    )
    api_error_code = models.CharField(
        "broker error code",
        max_length=64,
        blank=True,
        help_text="The error code this service returned to the browser; empty on success.",
    )
    error_type = models.CharField(
        "upstream error type", max_length=64, blank=True, help_text="error.type from OpenAI."
    )
    error_code = models.CharField(
        "upstream error code", max_length=64, blank=True, help_text="error.code from OpenAI."
    )
    error_param = models.CharField(
        "upstream error param", max_length=128, blank=True, help_text="error.param from OpenAI."
    )
    error_message = models.TextField(
        "error message",
        blank=True,
        help_text="The upstream error text (or ours when there was none): one line, at most "
        "about 2 KB, key-like strings redacted.",
    )
    upstream_request_id = models.CharField(
        "upstream request id",
        max_length=128,
        blank=True,
        help_text="OpenAI's x-request-id; quote it to OpenAI support.",
    )
    session_id = models.CharField(
        "session id",
        max_length=128,
        blank=True,
        help_text="The ChatKit session (cksess_…) minted on success. Never the client secret.",
    )
    expires_at = models.DateTimeField(
        "expires at", null=True, blank=True, help_text="When the minted client secret expires."
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name="user",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="chatkit_attempts",
        help_text="The logged-in user, if any; kept empty when the user is deleted.",
    )
    username = models.CharField(
        "username",
        max_length=150,
        blank=True,
        help_text="The user's username at the time of the attempt.",
    )
    user_ref = models.CharField(
        "user ref",
        max_length=128,
        blank=True,
        help_text="The `user` value sent to OpenAI (pseudonymous unless configured otherwise).",
    )
    anonymous = models.BooleanField(
        "anonymous", default=False, help_text="The caller was not logged in."
    )
    workflow_id = models.CharField(
        "workflow", max_length=128, blank=True, help_text="The ChatKit workflow requested."
    )
    attempts = models.PositiveSmallIntegerField(
        "HTTP attempts", default=0, help_text="Requests sent upstream, retries included."
    )
    latency_ms = models.PositiveIntegerField(
        "latency (ms)",
        null=True,
        blank=True,
        help_text="Time spent on the upstream call, retries included.",
    )
    client_ip = models.GenericIPAddressField(
        "client IP",
        null=True,
        blank=True,
        help_text="Caller's address; recorded only when CHATKIT_AUDIT_CLIENT_IP is on.",
    )

    class Meta:
        verbose_name = "session attempt"
        verbose_name_plural = "session attempts"
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["created_at"], name="audit_attempt_created_idx"),
            models.Index(fields=["status_code", "created_at"], name="audit_attempt_status_idx"),
            models.Index(fields=["user_ref", "created_at"], name="audit_attempt_userref_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.outcome} {self.status_code or ''}"
