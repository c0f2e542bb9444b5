"""The broker's admin site: branded, with the operator's dashboard as its front page and the
configuration check behind a button. Part of the project, not of an app: it draws on both.

Installed as Django's default site (broker/admin_config.py), so every @admin.register lands here
and admin.site is this object. The figures come from audit/dashboard.py, the drawing from
audit/charts.py.
"""

from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.models import ADDITION, LogEntry
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone

from audit import dashboard
from audit.charts import bar_chart, column_chart
from audit.models import Alert, SessionAttempt
from sessions_api.config_check import chatkit_config_check

# Third-party tables an operator never needs in an incident: listed last, as internals.
INTERNAL_APPS = ("axes", "django_celery_results")
# The alert list's actions offered beside each firing alert, with their button labels. Only
# those AlertAdmin.get_actions() grants the user are shown, so its permissions decide.
ALERT_BUTTONS = {"acknowledge": "Acknowledge", "silence_rule_1h": "Silence rule 1 h"}
CHECK_PERMISSION = "audit.run_config_check"
OUTCOME_LABELS = dict(SessionAttempt.Outcome.choices)
TIME_FORMATS = {"1h": "%H:%M", "24h": "%H:%M", "7d": "%a %d %H:%M"}


class BrokerAdminSite(admin.AdminSite):
    site_header = "ChatKit session broker"
    site_title = "ChatKit session broker"
    index_title = "Dashboard"
    index_template = "admin/broker_dashboard.html"

    def get_app_list(self, request, app_label=None):
        apps = super().get_app_list(request, app_label)
        internals = [app for app in apps if app["app_label"] in INTERNAL_APPS]
        for app in internals:
            app["name"] = f"Internals: {app['name']}"
            for model in app["models"]:
                model["add_url"] = None  # written by the libraries, never by hand
        return [app for app in apps if app["app_label"] not in INTERNAL_APPS] + internals

    def index(self, request, extra_context=None):
        context = {**dashboard_context(request, self), **(extra_context or {})}
        return super().index(request, extra_context=context)

    def get_urls(self):
        check = path("chatkit-check/", self.admin_view(self.config_check), name="chatkit_check")
        return [check, *super().get_urls()]

    def config_check(self, request):
        """The dashboard's "Check the configuration" button: `manage.py chatkit_check`."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not request.user.has_perm(CHECK_PERMISSION):
            raise PermissionDenied
        result = chatkit_config_check()
        if result.attempt is not None:
            LogEntry.objects.log_actions(
                request.user.pk,
                [result.attempt],
                ADDITION,
                change_message=f"Ran the configuration check: {result.summary}",
                single_object=True,
            )
        report = messages.success if result.ok else messages.error
        report(request, result.summary)
        return HttpResponseRedirect(reverse("admin:index"))


def dashboard_context(request, site: admin.AdminSite) -> dict:
    """What the dashboard shows this user: each part only with the view permission it needs."""
    user = request.user
    window = dashboard.WINDOWS.get(request.GET.get("window", ""), dashboard.DEFAULT_WINDOW)
    now = timezone.now()
    since, until = window.bounds(now)
    context = {"window": window, "windows": dashboard.WINDOWS.values(), "since": since}
    context["may_check_config"] = user.has_perm(CHECK_PERMISSION)
    if user.has_perm("audit.view_attemptminutestat"):
        context.update(
            _traffic_context(window, since, until, user.has_perm("audit.view_sessionattempt"))
        )
        context["latency"] = dashboard.latency(since=since, until=now)
    if user.has_perm("audit.view_alert"):
        context.update(_alerts_context(request, site))
    if user.has_perm("audit.view_errorreport"):
        report = dashboard.last_error_report()
        rate = report.data.get("success_rate") if report else None
        context.update(show_report=True, report=report, report_success_percent=_percent(rate))
    return context


def _traffic_context(window, since, until, may_view_attempts: bool) -> dict:
    traffic = dashboard.traffic(since=since, until=until, bucket=window.bucket)
    time_format = TIME_FORMATS[window.key]
    by_outcome = [
        (OUTCOME_LABELS.get(outcome, outcome), count, _tone(outcome == dashboard.SUCCESS))
        for outcome, count in traffic["by_outcome"]
    ]
    by_status = [
        (_status_label(code), count, _tone(200 <= code < 300))
        for code, count in traffic["by_status"]
    ]
    return {
        "traffic": traffic,
        "success_percent": _percent(traffic["success_rate"]),
        "series_chart": column_chart(
            traffic["series"],
            until=until,
            chart_id="chart-series",
            title=f"Attempts and errors, {window.label.lower()}, per {_duration(window.bucket)}",
            time_format=time_format,
        ),
        "outcome_chart": bar_chart(
            by_outcome, chart_id="chart-outcome", title="Attempts by outcome"
        ),
        "status_chart": bar_chart(
            by_status, chart_id="chart-status", title="Attempts by upstream status"
        ),
        "top_errors": [
            _error_row(error, since, traffic["attempts"], may_view_attempts)
            for error in traffic["top_errors"]
        ],
    }


def _error_row(error: dashboard.ErrorGroup, since, attempts: int, may_view_attempts: bool) -> dict:
    row = {
        "outcome": OUTCOME_LABELS.get(error.outcome, error.outcome),
        "status": _status_label(error.status_code),
        "error_code": error.error_code,
        "attempts": error.attempts,
        "percent": _percent(error.attempts / attempts),
    }
    if may_view_attempts:
        status = (
            {"status_code__isnull": "True"}
            if error.status_code == 0
            else {"status_code__exact": error.status_code}
        )
        query = {
            "outcome__exact": error.outcome,
            **status,
            "error_code__exact": error.error_code,
            "created_at__gte": since.isoformat(),
        }
        row["sample"] = dashboard.error_sample(error)
        row["url"] = f"{reverse('admin:audit_sessionattempt_changelist')}?{urlencode(query)}"
    return row


def _alerts_context(request, site: admin.AdminSite) -> dict:
    alerts = dashboard.firing_alerts()
    granted = site.get_model_admin(Alert).get_actions(request)
    return {
        "show_alerts": True,
        "alerts": alerts[: dashboard.FIRING_ALERTS_SHOWN],
        "more_alerts": len(alerts) > dashboard.FIRING_ALERTS_SHOWN,
        "alert_buttons": [
            (name, label, granted[name][2])
            for name, label in ALERT_BUTTONS.items()
            if name in granted
        ],
    }


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else fraction * 100


def _status_label(code: int) -> str:
    return "none" if code == 0 else str(code)


def _tone(good: bool) -> str:
    return "chart-ok" if good else "chart-failed"


def _duration(delta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes % 60 == 0:
        return "hour" if minutes == 60 else f"{minutes // 60} hours"
    return "minute" if minutes == 1 else f"{minutes} minutes"
