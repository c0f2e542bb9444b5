from django.apps import AppConfig


class SessionsApiConfig(AppConfig):
    name = "sessions_api"
    verbose_name = "ChatKit sessions"

    def ready(self) -> None:
        from sessions_api import checks, signals  # noqa: F401 - registers checks and receivers
