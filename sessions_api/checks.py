"""System checks: catch a misconfigured broker at start-up instead of at the first chat."""

from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import Error, Warning, register

from sessions_api.identity import USER_ID_MODES


@register()
def chatkit_settings_check(app_configs=None, **kwargs) -> list:
    messages = []
    if not settings.OPENAI_API_KEY:
        messages.append(
            Warning(
                "OPENAI_API_KEY is not set: the session endpoint answers 503 not_configured.",
                hint="Set OPENAI_API_KEY, or run `make run` without it to use the local emulator.",
                id="sessions_api.W001",
            )
        )
    if not settings.OPENAI_WORKFLOW_ID:
        messages.append(
            Warning(
                "OPENAI_WORKFLOW_ID is not set: the session endpoint answers 503 not_configured.",
                hint="Set it to your Agent Builder workflow id (wf_…).",
                id="sessions_api.W002",
            )
        )
    for name, workflow in [
        ("OPENAI_WORKFLOW_ID", settings.OPENAI_WORKFLOW_ID),
        *(("CHATKIT_ALLOWED_WORKFLOWS", wf) for wf in settings.CHATKIT_ALLOWED_WORKFLOWS),
    ]:
        if workflow and not (workflow.startswith("wf_") and len(workflow) > 3):
            messages.append(
                Error(
                    f"{name} contains {workflow!r}, which is not a workflow id.",
                    hint="Workflow ids start with 'wf_'; copy it from Agent Builder.",
                    id="sessions_api.E003",
                )
            )
    url = urlsplit(settings.OPENAI_BASE_URL)
    loopback = url.hostname in ("127.0.0.1", "localhost", "::1")
    if url.scheme == "http" and not loopback and not settings.CHATKIT_ALLOW_HTTP_UPSTREAM:
        messages.append(
            Error(
                f"OPENAI_BASE_URL {settings.OPENAI_BASE_URL!r} is plain http to another host: "
                "the API key would cross the network in the clear.",
                hint=(
                    "Use https://; plain http is for the emulator on this machine, or on a "
                    "private network with a made-up key (CHATKIT_ALLOW_HTTP_UPSTREAM=true)."
                ),
                id="sessions_api.E009",
            )
        )
    if url.scheme not in ("http", "https") or not url.netloc:
        messages.append(
            Error(
                f"OPENAI_BASE_URL {settings.OPENAI_BASE_URL!r} is not an http(s) URL.",
                hint="Use https://api.openai.com/v1, or the emulator's http://127.0.0.1:8765/v1.",
                id="sessions_api.E004",
            )
        )
    if settings.CHATKIT_USER_ID_MODE == "hmac" and not settings.CHATKIT_USER_ID_SECRET:
        messages.append(
            Warning(
                "CHATKIT_USER_ID_SECRET is not set: signed-in users cannot be named to OpenAI, "
                "so their session requests fail. It no longer falls back to DJANGO_SECRET_KEY, "
                "whose rotation would silently re-key every user's chat history.",
                hint="Set it to a long random string, once, and keep it (.env.example).",
                id="sessions_api.W003",
            )
        )
    if settings.CHATKIT_USER_ID_MODE not in USER_ID_MODES:
        messages.append(
            Error(
                f"CHATKIT_USER_ID_MODE {settings.CHATKIT_USER_ID_MODE!r} is not one of "
                f"{', '.join(USER_ID_MODES)}.",
                id="sessions_api.E005",
            )
        )
    seconds = settings.CHATKIT_EXPIRES_AFTER_SECONDS
    if seconds is not None and not 1 <= seconds <= 600:
        messages.append(
            Error(
                f"CHATKIT_EXPIRES_AFTER_SECONDS is {seconds}; OpenAI accepts 1 to 600.",
                id="sessions_api.E006",
            )
        )
    for name in (
        "CHATKIT_THROTTLE_USER",
        "CHATKIT_THROTTLE_ANON",
        "CHATKIT_THROTTLE_ADDRESS",
        "CHATKIT_THROTTLE_ANON_BUDGET",
    ):
        rate = getattr(settings, name)
        count, _, period = rate.partition("/")
        if rate and not (count.isdigit() and period[:1] in ("s", "m", "h", "d")):
            messages.append(
                Error(
                    f"{name} is {rate!r}, not a rate.",
                    hint='Write it as requests/period, e.g. "30/min" or "500/hour"; empty: off.',
                    id="sessions_api.E008",
                )
            )
    sqlite = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
    if sqlite and not settings.DEBUG and not settings.ALLOW_SQLITE:
        messages.append(
            Error(
                "The database is SQLite while DEBUG is off: one file, one writer at a time, no "
                "backups or replicas; fine to try the broker, not to run it.",
                hint="Set DATABASE_URL to PostgreSQL, or DJANGO_ALLOW_SQLITE=true if this is on "
                "purpose.",
                id="sessions_api.E010",
            )
        )
    if any(db.get("ATOMIC_REQUESTS") for db in settings.DATABASES.values()):
        messages.append(
            Error(
                "ATOMIC_REQUESTS is on: a failing request would roll back its audit row.",
                hint="Leave ATOMIC_REQUESTS off; audit rows are written in their own transaction.",
                id="sessions_api.E007",
            )
        )
    return messages
