from datetime import timedelta
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ORDER_VAR, PAGE_VAR, ChangeList
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import HttpResponseBadRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from audit.admin_filters import (
    AttemptDateFilter,
    DateRangeFilter,
    StatStatusCodeFilter,
    StatusCodeFilter,
)
from audit.alerting.rules import alert_rules
from audit.export import attempts_csv_response
from audit.models import (
    Alert,
    AlertNotification,
    AlertSilence,
    AttemptMinuteStat,
    ErrorReport,
    SessionAttempt,
)
from audit.paginator import CappedPaginator
from audit.selectors import alerts_for_attempt


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
    """Read-only for everyone, superusers included: the audit log is append-only.

    Built for tens of millions of rows: every filter is a fixed list or an index range, the
    search matches whole identifiers on indexed columns, the paging stops at CappedPaginator's
    last page (then "older" follows the created_at index), and only the time can be sorted on.
    """

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
    list_filter = [
        ("created_at", AttemptDateFilter),
        "outcome",
        ("status_code", StatusCodeFilter),
        "kind",
        "anonymous",
    ]
    # Documents the search box; get_search_results does the matching.
    search_fields = ["request_id", "upstream_request_id", "session_id", "user_ref", "username"]
    search_help_text = (
        "One whole identifier: request id (brk_…), OpenAI request id (req_…), session id "
        "(cksess_…), user ref, or a current username."
    )
    sortable_by = ["created_at"]
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # facets count every choice over the whole table
    paginator = CappedPaginator
    change_list_template = "admin/audit/sessionattempt/change_list.html"
    fieldsets = [
        (
            "Outcome",
            {"fields": ["created_at", "request_id", "outcome", "api_error_code", "kind"]},
        ),
        (
            "Upstream (OpenAI)",
            {
                "fields": [
                    "status_code",
                    "error_type",
                    "error_code",
                    "error_param",
                    "error_message",
                    "upstream_request_id",
                    "session_id",
                    "expires_at",
                    "attempts",
                    "latency_ms",
                ]
            },
        ),
        (
            "Caller",
            {
                "fields": [
                    "workflow_id",
                    "user",
                    "username",
                    "user_ref",
                    "anonymous",
                    "client_ip",
                    "requests",
                    "refusal_key",
                ]
            },
        ),
        ("Related", {"fields": ["same_user_attempts", "alerts"]}),
    ]

    def get_readonly_fields(self, request, obj=None):
        return [*super().get_readonly_fields(request, obj), "same_user_attempts", "alerts"]

    @admin.display(description="this user's attempts")
    def same_user_attempts(self, attempt: SessionAttempt) -> str:
        if not attempt.user_ref:
            return "— (refused before the caller had an identity)"
        url = reverse("admin:audit_sessionattempt_changelist")
        return format_html(
            '<a href="{}?{}">All attempts of {}</a>',
            url,
            urlencode({"user_ref": attempt.user_ref}),
            attempt.user_ref,
        )

    @admin.display(description="alerts")
    def alerts(self, attempt: SessionAttempt) -> str:
        incidents = alerts_for_attempt(attempt)
        if not incidents:
            return "— (no alert incident counted this attempt)"
        return format_html_join(
            mark_safe("<br>"),
            '<a href="{}">{}</a> (first seen {} UTC)',
            (
                (
                    reverse("admin:audit_alert_change", args=[alert.pk]),
                    alert,
                    f"{alert.first_seen:%Y-%m-%d %H:%M}",
                )
                for alert in incidents
            ),
        )

    def get_search_results(self, request, queryset, search_term):
        """Whole identifiers only, compared as they are: each arm of the OR has an index.

        Django's "=field" search compares UPPER(column) = UPPER(term), which no index answers:
        a scan of the whole table per search. Usernames go through the user table (unique
        index) to the user foreign key's index.
        """
        term = search_term.strip()
        if not term:
            return queryset, False
        user_ids = list(get_user_model().objects.filter(username=term).values_list("pk", flat=True))
        matches = (
            Q(request_id=term)
            | Q(upstream_request_id=term)
            | Q(session_id=term)
            | Q(user_ref=term)
            | Q(user_id__in=user_ids)
        )
        return queryset.filter(matches), False

    def get_urls(self):
        export = path(
            "export/",
            self.admin_site.admin_view(self.export_view),
            name="audit_sessionattempt_export",
        )
        return [export, *super().get_urls()]

    def get_changelist(self, request, **kwargs):
        if request.resolver_match.url_name == "audit_sessionattempt_export":
            return UnpagedChangeList
        return IndexedSortChangeList

    def export_view(self, request):
        """The current filtered view as CSV, for those who may view the audit log."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters as error:
            return HttpResponseBadRequest(f"Invalid filter: {error}", content_type="text/plain")
        filters = urlencode(sorted(request.GET.items()))
        return attempts_csv_response(request, changelist.queryset, filters=filters)

    def changelist_view(self, request, extra_context=None):
        page = request.GET.get(PAGE_VAR, "1")
        if page.isdigit() and int(page) > CappedPaginator.MAX_PAGES:
            query = request.GET.copy()
            del query[PAGE_VAR]
            self.message_user(
                request,
                f"Only the first {CappedPaginator.MAX_PAGES} pages are shown: page {page} would "
                "read and skip every row before it. Narrow the date range, or follow "
                "“Older attempts” at the foot of a page.",
                messages.WARNING,
            )
            return HttpResponseRedirect(
                f"{request.path}?{query.urlencode()}" if query else request.path
            )
        response = super().changelist_view(request, extra_context)
        if isinstance(response, TemplateResponse) and "cl" in response.context_data:
            changelist = response.context_data["cl"]
            response.context_data["export_url"] = (
                reverse("admin:audit_sessionattempt_export") + changelist.get_query_string()
            )
            response.context_data["older_url"] = self._older_url(changelist)
        return response

    @staticmethod
    def _older_url(changelist) -> str | None:
        """The keyset link past the last row shown, when the page is full."""
        rows = list(changelist.result_list)  # the page's own query, cached for the template
        if len(rows) < changelist.list_per_page:
            return None
        return changelist.get_query_string(
            {AttemptDateFilter.kwarg_before: rows[-1].pk}, remove=[PAGE_VAR]
        )


class IndexedSortChangeList(ChangeList):
    """Sorts only by the columns in sortable_by, even when `?o=` is typed into the URL: sorting
    tens of millions of rows by a column without an index is a full sort of the table."""

    def get_ordering(self, request, queryset):
        sortable = {
            str(index) for index, name in enumerate(self.list_display) if name in self.sortable_by
        }
        typed = self.params.get(ORDER_VAR, "").split(".")
        kept = [part for part in typed if part.rpartition("-")[2] in sortable]
        if kept:
            self.params[ORDER_VAR] = ".".join(kept)
        else:  # nothing sortable asked for: the default order, as without `o`
            self.params.pop(ORDER_VAR, None)
        return super().get_ordering(request, queryset)


class UnpagedChangeList(IndexedSortChangeList):
    """The changelist's filtered queryset without its page: what the CSV export streams."""

    def get_results(self, request) -> None:
        self.result_count = self.full_result_count = None
        self.result_list = []
        self.can_show_all = self.multi_page = False


@admin.register(AttemptMinuteStat)
class AttemptMinuteStatAdmin(ReadOnlyAdmin):
    list_display = ["minute", "workflow_id", "outcome", "status_code", "error_code", "attempts"]
    list_display += ["users"]
    list_filter = [("minute", DateRangeFilter), "outcome", ("status_code", StatStatusCodeFilter)]
    sortable_by = ["minute"]
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedPaginator

    def get_changelist(self, request, **kwargs):
        return IndexedSortChangeList


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
