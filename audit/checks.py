from django.conf import settings
from django.core.checks import Error, register

from audit.alerting.notify import webhook_url_valid
from audit.alerting.rules import alert_rules_resolve


@register()
def alerting_settings_check(app_configs=None, **kwargs) -> list:
    messages = []
    _, errors = alert_rules_resolve()
    messages += [Error(error, id="audit.E001") for error in errors]
    url = settings.ALERT_WEBHOOK_URL
    if url and not webhook_url_valid(url):
        # Never the URL itself: a Slack webhook's path is its secret.
        messages.append(Error("ALERT_WEBHOOK_URL is not an http(s) URL.", id="audit.E002"))
    for address in settings.ALERT_EMAIL_TO:
        if "@" not in address:
            messages.append(
                Error(f"ALERT_EMAIL_TO contains {address!r}, not an address.", id="audit.E003")
            )
    if settings.AUDIT_RETENTION_DAYS < 1:
        messages.append(
            Error(
                f"AUDIT_RETENTION_DAYS is {settings.AUDIT_RETENTION_DAYS}: the nightly prune would "
                "empty the audit log.",
                hint="Set it to the number of days to keep audit rows, at least 1 (default 90).",
                id="audit.E004",
            )
        )
    return messages
