from django.contrib import admin

from audit.models import SessionAttempt


@admin.register(SessionAttempt)
class SessionAttemptAdmin(admin.ModelAdmin):
    """Read-only for everyone, superusers included: the audit log is append-only."""

    list_display = [
        "created_at",
        "outcome",
        "status_code",
        "api_error_code",
        "kind",
        "workflow_id",
        "user_ref",
        "username",
        "attempts",
        "latency_ms",
    ]
    list_filter = ["outcome", "status_code", "kind", "anonymous"]
    # Exact matches only: they use the indexes, a substring search would scan the table.
    search_fields = ["=user_ref", "=session_id", "=upstream_request_id", "=username"]
    date_hierarchy = "created_at"
    list_select_related = ["user"]
    show_full_result_count = False
    readonly_fields = [field.name for field in SessionAttempt._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
