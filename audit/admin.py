from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.utils import timezone

from audit.alerting.rules import alert_rules
from audit.models import (
    Alert,
    AlertNotification,
    AlertSilence,
    AttemptMinuteStat,
    ErrorReport,
    SessionAttempt,
)
from audit.paginator import EstimatedCountPaginator


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records written by the service: viewable, never added, edited or deleted by hand."""

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(SessionAttempt)
class SessionAttemptAdmin(ReadOnlyAdmin):
    """Read-only for everyone, superusers included: the audit log is append-only."""

    list_display = [
        "created_at",
        "outcome",
        "status_code",
        "api_error_code",
        "requests",
        "kind",
        "workflow_id",
        "user_ref",
        "username",
        "attempts",
        "latency_ms",
    ]
    list_filter = ["outcome", "status_code", "kind", "anonymous"]
    # Exact matches only: they use the indexes, a substring search would scan the table.
    search_fields = [
        "=request_id",
        "=user_ref",
        "=session_id",
        "=upstream_request_id",
        "=username",
    ]
    date_hierarchy = "created_at"
    list_select_related = ["user"]
    show_full_result_count = False
    paginator = EstimatedCountPaginator

    def lookup_allowed(self, lookup, value, request=None) -> bool:
        # The pre-filtered links in alert notifications narrow by workflow and start time.
        if lookup in ("workflow_id", "created_at__gte", "created_at__lt"):
            return True
        return super().lookup_allowed(lookup, value, request)


@admin.register(AttemptMinuteStat)
class AttemptMinuteStatAdmin(ReadOnlyAdmin):
    list_display = ["minute", "workflow_id", "outcome", "status_code", "error_code", "attempts"]
    list_display += ["users"]
    list_filter = ["outcome", "status_code"]
    date_hierarchy = "minute"
    show_full_result_count = False
    paginator = EstimatedCountPaginator


class AlertNotificationInline(admin.TabularInline):
    model = AlertNotification
    fields = ["event", "sequence", "channel", "status", "attempts", "sent_at", "last_error"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ["first_seen", "rule", "severity", "state", "status_code", "workflow_id"]
    list_display += ["count", "last_seen", "acknowledged_at", "resolved_at"]
    list_filter = ["state", "severity", "rule"]
    date_hierarchy = "first_seen"
    inlines = [AlertNotificationInline]
    actions = ["acknowledge", "silence_rule_1h", "silence_rule_24h"]

    # Actions change only the acknowledgement or add a silence, never the incident itself.
    def get_actions(self, request):
        actions = super().get_actions(request)
        return {name: action for name, action in actions.items() if name != "delete_selected"}

    def has_acknowledge_permission(self, request) -> bool:
        return request.user.has_perm("audit.acknowledge_alert")

    def has_silence_permission(self, request) -> bool:
        return request.user.has_perm("audit.add_alertsilence")

    @admin.action(
        description="Acknowledge (stop repeat notifications)", permissions=["acknowledge"]
    )
    def acknowledge(self, request, queryset) -> None:
        count = queryset.filter(acknowledged_at__isnull=True).update(
            acknowledged_at=timezone.now(), acknowledged_by=request.user.get_username()
        )
        self.message_user(request, f"Acknowledged {count} alert(s).", messages.SUCCESS)

    def _silence(self, request, queryset, hours: int) -> None:
        hours = min(hours, settings.ALERT_SILENCE_MAX_HOURS)
        until = timezone.now() + timedelta(hours=hours)
        rules = sorted(set(queryset.values_list("rule", flat=True)))
        for rule in rules:
            AlertSilence.objects.create(
                rule=rule,
                until=until,
                reason="Silenced from the alert list",
                created_by=request.user.get_username(),
            )
        self.message_user(request, f"Silenced {', '.join(rules)} for {hours} h.", messages.SUCCESS)

    @admin.action(description="Silence these rules for 1 hour", permissions=["silence"])
    def silence_rule_1h(self, request, queryset) -> None:
        self._silence(request, queryset, 1)

    @admin.action(description="Silence these rules for 24 hours", permissions=["silence"])
    def silence_rule_24h(self, request, queryset) -> None:
        self._silence(request, queryset, 24)


class AlertSilenceForm(forms.ModelForm):
    """A new silence: a rule that exists, ending in the future and within the longest allowed."""

    rule = forms.ChoiceField(choices=lambda: [(rule.name, rule.name) for rule in alert_rules()])

    class Meta:
        model = AlertSilence
        fields = ["rule", "until", "reason"]

    def clean_until(self):
        until = self.cleaned_data["until"]
        now = timezone.now()
        longest = timedelta(hours=settings.ALERT_SILENCE_MAX_HOURS)
        if until <= now:
            raise forms.ValidationError("A silence must end in the future.")
        if until > now + longest:
            raise forms.ValidationError(
                f"A silence lasts at most {settings.ALERT_SILENCE_MAX_HOURS} hours "
                "(ALERT_SILENCE_MAX_HOURS); set a new one when it ends if you still need it."
            )
        return until


@admin.register(AlertSilence)
class AlertSilenceAdmin(admin.ModelAdmin):
    """Silences are set and ended early, never edited or deleted: the history stays."""

    form = AlertSilenceForm
    list_display = ["rule", "until", "reason", "created_by", "created_at", "ended_at", "ended_by"]
    actions = ["end_now"]

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_end_permission(self, request) -> bool:
        return request.user.has_perm("audit.add_alertsilence")

    def save_model(self, request, obj, form, change) -> None:
        obj.created_by = request.user.get_username()
        super().save_model(request, obj, form, change)

    @admin.action(description="End these silences now", permissions=["end"])
    def end_now(self, request, queryset) -> None:
        now = timezone.now()
        count = queryset.filter(until__gt=now).update(
            until=now, ended_at=now, ended_by=request.user.get_username()
        )
        self.message_user(request, f"Ended {count} silence(s).", messages.SUCCESS)


@admin.register(AlertNotification)
class AlertNotificationAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "alert", "event", "sequence", "channel", "status", "attempts"]
    list_filter = ["status", "channel", "event"]


@admin.register(ErrorReport)
class ErrorReportAdmin(ReadOnlyAdmin):
    list_display = ["period_start", "period_end", "emailed_at", "created_at"]
    date_hierarchy = "period_start"
