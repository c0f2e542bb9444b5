from django.conf import settings
from django.db import models
from django.utils import timezone


class SessionAttempt(models.Model):
    """One request for a ChatKit client secret, successful or not.

    Append-only, but for one thing: a caller the throttle refuses again and again gets one row
    per minute, whose `requests` counts those refusals, so that a flood does not become a flood
    of rows.
    """

    class Outcome(models.TextChoices):
        SUCCESS = "success", "Success"
        UPSTREAM_ERROR = "upstream_error", "Upstream error answer"
        TIMEOUT = "timeout", "Upstream timeout"
        NETWORK_ERROR = "network_error", "Network error"
        INVALID_RESPONSE = "invalid_response", "Invalid upstream response"
        NOT_CONFIGURED = "not_configured", "Not configured"
        REJECTED = "rejected", "Rejected before the upstream call"
        INTERNAL_ERROR = "internal_error", "Internal error (a bug of ours)"
        CIRCUIT_OPEN = "circuit_open", "Not called: the upstream circuit was open"

    class Kind(models.TextChoices):
        INITIAL = "initial", "Initial"
        REFRESH = "refresh", "Refresh"
        CHECK = "check", "Configuration check"

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
        help_text=(
            "Refresh when the browser passed its current client secret to get a new one; check "
            "for the operator's configuration check (never counted by alert rules)."
        ),
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
    # Not a PositiveIntegerField: adding its CHECK to a table of millions of rows would scan it
    # under a lock that stops every audit write. The database default lets processes of the
    # previous release, which do not know the column, keep writing during a deploy (so does
    # refusal_key's).
    request_id = models.CharField(
        "request id",
        max_length=32,
        blank=True,
        default="",
        db_default="",
        editable=False,
        help_text="The id the browser was shown (request_id): random, unlike the row's key, "
        "which would tell anyone the traffic volume.",
    )
    requests = models.IntegerField(
        "requests",
        default=1,
        db_default=1,
        help_text="Requests this row stands for: 1, or the throttled refusals of one caller "
        "in one minute.",
    )
    refusal_key = models.CharField(
        "refusal key",
        max_length=32,
        blank=True,
        default="",
        db_default="",
        editable=False,
        help_text="Which caller and minute a row of throttled refusals counts (a keyed hash).",
    )

    class Meta:
        verbose_name = "session attempt"
        verbose_name_plural = "session attempts"
        ordering = ["-created_at", "-id"]
        permissions = [("run_config_check", "Can run the configuration check")]
        indexes = [
            models.Index(fields=["created_at"], name="audit_attempt_created_idx"),
            models.Index(fields=["status_code", "created_at"], name="audit_attempt_status_idx"),
            # The alert rules match on the error code (audit/alerting/rules.py).
            models.Index(
                fields=["api_error_code", "created_at"], name="audit_attempt_errorcode_idx"
            ),
            models.Index(fields=["user_ref", "created_at"], name="audit_attempt_userref_idx"),
            # The admin's outcome filter: a rare outcome must not walk the whole time index.
            models.Index(fields=["outcome", "created_at"], name="audit_attempt_outcome_idx"),
            # The admin's exact search (audit/admin.py); rows without the value are left out.
            models.Index(
                fields=["upstream_request_id"],
                condition=~models.Q(upstream_request_id=""),
                name="audit_attempt_upstreamid_idx",
            ),
            models.Index(
                fields=["session_id"],
                condition=~models.Q(session_id=""),
                name="audit_attempt_session_idx",
            ),
            # Rows written before the column existed have none: they are left out.
            models.Index(
                fields=["request_id"],
                condition=~models.Q(request_id=""),
                name="audit_attempt_requestid_idx",
            ),
        ]
        constraints = [
            # Partial: the rows of throttled refusals only, so other writes never touch it.
            models.UniqueConstraint(
                fields=["refusal_key"],
                condition=~models.Q(refusal_key=""),
                name="audit_attempt_refusal_key_uniq",
            )
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.outcome} {self.status_code or ''}"


class PendingMinute(models.Model):
    """A minute whose statistics must be recomputed, because attempts were written in it.

    Written by the same statement as its SessionAttempt (audit/services.py), as an upsert that
    bumps `writes`: a writer either creates the row or updates it, and so locks it until it
    commits. The aggregator's claim deletes the row, which waits for that lock, and a writer
    arriving after the claim waits for the claim to commit and then creates the row afresh. So a
    committed attempt is either seen by the recompute that consumed its minute's row, or has
    left a new row for the next run (audit/stats.py). `slot` spreads the writers of one minute
    over a few rows, so they do not queue on a single row lock.
    """

    pk = models.CompositePrimaryKey("minute", "slot")
    minute = models.DateTimeField("minute", help_text="Start of the minute (UTC).")
    slot = models.PositiveSmallIntegerField(
        "slot", default=0, help_text="Which of the minute's rows (by database connection)."
    )
    writes = models.PositiveIntegerField(
        "attempts written", default=1, help_text="Attempts written since the last aggregation."
    )

    class Meta:
        verbose_name = "minute awaiting aggregation"
        verbose_name_plural = "minutes awaiting aggregation"

    def __str__(self) -> str:
        return f"{self.minute:%Y-%m-%d %H:%M} slot {self.slot}: {self.writes}"


class AttemptMinuteStat(models.Model):
    """Attempts per minute, workflow, outcome, upstream status and upstream error code.

    Survives the pruning of raw audit rows; hourly and daily figures are sums over these rows.
    """

    minute = models.DateTimeField("minute", help_text="Start of the minute (UTC).")
    workflow_id = models.CharField(
        "workflow", max_length=128, blank=True, help_text="The ChatKit workflow requested."
    )
    outcome = models.CharField(
        "outcome",
        max_length=32,
        choices=SessionAttempt.Outcome.choices,
        help_text="How the attempts ended.",
    )
    status_code = models.PositiveSmallIntegerField(
        "upstream status", default=0, help_text="Upstream HTTP status; 0 when there was none."
    )
    error_code = models.CharField(
        "upstream error code", max_length=64, blank=True, help_text="error.code from OpenAI."
    )
    attempts = models.PositiveIntegerField("attempts", help_text="Attempts in this bucket.")
    users = models.PositiveIntegerField(
        "distinct users", help_text="Distinct user refs among those attempts."
    )

    class Meta:
        verbose_name = "attempt statistic (per minute)"
        verbose_name_plural = "attempt statistics (per minute)"
        ordering = ["-minute"]
        constraints = [
            models.UniqueConstraint(
                fields=["minute", "workflow_id", "outcome", "status_code", "error_code"],
                name="audit_minutestat_bucket_uniq",
            )
        ]
        indexes = [
            models.Index(fields=["status_code", "minute"], name="audit_minutestat_status_idx")
        ]

    def __str__(self) -> str:
        return f"{self.minute:%Y-%m-%d %H:%M} {self.outcome} {self.status_code}: {self.attempts}"


class Alert(models.Model):
    """One incident of one alert rule for one key (e.g. upstream 401 on one workflow)."""

    class State(models.TextChoices):
        FIRING = "firing", "Firing"
        RESOLVED = "resolved", "Resolved"

    class Severity(models.TextChoices):
        CRITICAL = "critical", "Critical"
        WARNING = "warning", "Warning"

    rule = models.CharField("rule", max_length=64, help_text="Name of the alert rule.")
    fingerprint = models.CharField(
        "fingerprint",
        max_length=64,
        help_text="Stable id of rule + key; the same for every incident of that pair.",
    )
    state = models.CharField(
        "state",
        max_length=16,
        choices=State.choices,
        default=State.FIRING,
        help_text="Firing until the condition has been false for the quiet period.",
    )
    severity = models.CharField(
        "severity", max_length=16, choices=Severity.choices, help_text="From the rule."
    )
    status_code = models.PositiveSmallIntegerField(
        "upstream status",
        null=True,
        blank=True,
        help_text="The upstream status this incident is about; empty for rules that span several.",
    )
    workflow_id = models.CharField(
        "workflow", max_length=128, blank=True, help_text="The workflow this incident is about."
    )
    error_code = models.CharField(
        "upstream error code", max_length=64, blank=True, help_text="Most recent error.code seen."
    )
    first_seen = models.DateTimeField("first seen", help_text="First matching attempt.")
    last_seen = models.DateTimeField("last seen", help_text="Latest matching attempt.")
    count = models.PositiveIntegerField(
        "count", help_text="Matching attempts from first seen to last seen."
    )
    settled_count = models.PositiveIntegerField(
        "settled count",
        default=0,
        help_text="Matching attempts before settled until, counted once and never again.",
    )
    settled_until = models.DateTimeField(
        "settled until",
        null=True,
        blank=True,
        help_text="Attempts started before this were all committed when last counted.",
    )
    threshold = models.PositiveIntegerField(
        "threshold", help_text="Matching attempts within the window that fire the rule."
    )
    window_seconds = models.PositiveIntegerField("window (s)", help_text="The rule's window.")
    min_ratio = models.FloatField(
        "minimum ratio",
        null=True,
        blank=True,
        help_text="Share of all attempts that must match too, if the rule has one.",
    )
    sample_message = models.TextField(
        "sample upstream message", blank=True, help_text="From the latest matching attempt."
    )
    sample_attempt_ids = models.JSONField(
        "sample attempts", default=list, blank=True, help_text="Ids of recent matching attempts."
    )
    condition_false_since = models.DateTimeField(
        "condition false since",
        null=True,
        blank=True,
        help_text="When the rule stopped matching; resolved once this is a quiet period old.",
    )
    last_notified_at = models.DateTimeField(
        "last notified", null=True, blank=True, help_text="Last firing notification queued."
    )
    notifications_sent = models.PositiveIntegerField(
        "firing notifications", default=0, help_text="Firing notifications queued so far."
    )
    acknowledged_at = models.DateTimeField(
        "acknowledged at", null=True, blank=True, help_text="Acknowledged: no more repeats."
    )
    acknowledged_by = models.CharField(
        "acknowledged by", max_length=150, blank=True, help_text="Who acknowledged it."
    )
    resolved_at = models.DateTimeField(
        "resolved at", null=True, blank=True, help_text="When the incident resolved."
    )
    created_at = models.DateTimeField(
        "created at", default=timezone.now, help_text="When the incident was recorded."
    )

    class Meta:
        verbose_name = "alert"
        verbose_name_plural = "alerts"
        ordering = ["-first_seen"]
        permissions = [("acknowledge_alert", "Can acknowledge alerts")]
        constraints = [
            models.UniqueConstraint(
                fields=["fingerprint"],
                condition=models.Q(state="firing"),
                name="audit_alert_one_firing_uniq",
            )
        ]
        indexes = [models.Index(fields=["state", "rule"], name="audit_alert_state_idx")]

    def __str__(self) -> str:
        return f"{self.rule} {self.status_code or ''} {self.workflow_id} ({self.state})"


class AlertSilence(models.Model):
    """Mutes one rule's notifications until a time; incidents are still recorded.

    Never edited once set (the admin validates the rule and the length): it can only be ended
    early, which moves `until` to that moment and records who ended it.
    """

    rule = models.CharField("rule", max_length=64, help_text="Name of the alert rule to mute.")
    until = models.DateTimeField("until", help_text="Notifications resume after this time.")
    reason = models.CharField("reason", max_length=255, blank=True, help_text="Why, for others.")
    created_by = models.CharField(
        "created by", max_length=150, blank=True, help_text="The operator who set it."
    )
    created_at = models.DateTimeField(
        "created at", default=timezone.now, help_text="When the silence was set."
    )
    ended_at = models.DateTimeField(
        "ended at", null=True, blank=True, help_text="When it was ended early, if it was."
    )
    ended_by = models.CharField(
        "ended by", max_length=150, blank=True, help_text="The operator who ended it early."
    )

    class Meta:
        verbose_name = "alert silence"
        verbose_name_plural = "alert silences"
        ordering = ["-until"]
        indexes = [models.Index(fields=["rule", "until"], name="audit_silence_rule_idx")]

    def __str__(self) -> str:
        return f"{self.rule} until {self.until:%Y-%m-%d %H:%M}"


class AlertNotification(models.Model):
    """One message about one alert event on one channel; delivered by a Celery task.

    The unique constraint makes creating it idempotent; the claim (status + claimed_until)
    makes one worker at a time deliver it, and `sent` is set only after a successful delivery.
    """

    class Event(models.TextChoices):
        FIRING = "firing", "Firing"
        RESOLVED = "resolved", "Resolved"

    class Channel(models.TextChoices):
        WEBHOOK = "webhook", "Webhook"
        EMAIL = "email", "Email"
        LOG = "log", "Log"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed (gave up)"

    alert = models.ForeignKey(
        Alert,
        verbose_name="alert",
        on_delete=models.CASCADE,
        related_name="notifications",
        help_text="The incident this is about.",
    )
    event = models.CharField(
        "event",
        max_length=16,
        choices=Event.choices,
        help_text="Firing (first or repeat) or resolved.",
    )
    sequence = models.PositiveIntegerField(
        "sequence", help_text="0 for the first firing message, then 1, 2… for repeats."
    )
    channel = models.CharField(
        "channel", max_length=16, choices=Channel.choices, help_text="Where it is delivered."
    )
    status = models.CharField(
        "status",
        max_length=16,
        choices=Status.choices,
        default=Status.PENDING,
        help_text="Pending until delivered; failed after the last retry.",
    )
    payload = models.JSONField("payload", help_text="What is sent; never secrets or usernames.")
    attempts = models.PositiveSmallIntegerField(
        "delivery attempts", default=0, help_text="Deliveries tried so far."
    )
    claimed_until = models.DateTimeField(
        "claimed until",
        null=True,
        blank=True,
        help_text="A worker is delivering it until then; after that another may retry.",
    )
    sent_at = models.DateTimeField(
        "sent at", null=True, blank=True, help_text="When delivery succeeded."
    )
    queued_at = models.DateTimeField(
        "queued at",
        null=True,
        blank=True,
        help_text="When a delivery task was last queued; the sweep does not queue another soon.",
    )
    last_error = models.TextField("last error", blank=True, help_text="Why the last try failed.")
    created_at = models.DateTimeField(
        "created at", default=timezone.now, help_text="When it was queued."
    )

    class Meta:
        verbose_name = "alert notification"
        verbose_name_plural = "alert notifications"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["alert", "event", "sequence", "channel"],
                name="audit_notification_once_uniq",
            )
        ]
        indexes = [models.Index(fields=["status", "created_at"], name="audit_notif_status_idx")]

    def __str__(self) -> str:
        return f"{self.event} #{self.sequence} via {self.channel}: {self.status}"


class ErrorReport(models.Model):
    """A scheduled (or on-demand) summary of one period of session attempts."""

    period_start = models.DateTimeField("period start", help_text="Inclusive (UTC).")
    period_end = models.DateTimeField("period end", help_text="Exclusive (UTC).")
    data = models.JSONField("data", help_text="The report's figures, as the JSON format shows.")
    text = models.TextField("text", help_text="The report as emailed.")
    emailed_at = models.DateTimeField(
        "emailed at", null=True, blank=True, help_text="When it was emailed to ALERT_EMAIL_TO."
    )
    email_attempts = models.PositiveSmallIntegerField(
        "email attempts", default=0, help_text="Tries to email it, successful or not."
    )
    email_retry_at = models.DateTimeField(
        "email due at",
        null=True,
        blank=True,
        help_text="When the minute sweep (re)tries the email; empty once sent or not to be sent.",
    )
    email_error = models.TextField(
        "email error", blank=True, help_text="Why the last try to email it failed."
    )
    created_at = models.DateTimeField(
        "created at", default=timezone.now, help_text="When the report was built."
    )

    class Meta:
        verbose_name = "error report"
        verbose_name_plural = "error reports"
        ordering = ["-period_start"]
        constraints = [
            models.UniqueConstraint(
                fields=["period_start", "period_end"], name="audit_report_period_uniq"
            )
        ]

    def __str__(self) -> str:
        return f"{self.period_start:%Y-%m-%d %H:%M} – {self.period_end:%Y-%m-%d %H:%M}"


class Heartbeat(models.Model):
    """When a scheduled job last ran, so that /healthz can tell that beat or the worker stopped."""

    name = models.CharField("name", max_length=64, primary_key=True, help_text="The job.")
    beat_at = models.DateTimeField("last run", help_text="When the job last started (UTC).")

    class Meta:
        verbose_name = "heartbeat"
        verbose_name_plural = "heartbeats"

    def __str__(self) -> str:
        return f"{self.name} at {self.beat_at:%Y-%m-%d %H:%M:%S}"
