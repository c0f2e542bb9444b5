import pytest


@pytest.fixture
def alert_settings(settings):
    """The default rules and timings, a webhook nobody answers, no email: for tests of what the
    alerts decide and say, not of their delivery."""
    settings.ALERT_WEBHOOK_URL = "http://127.0.0.1:9/hook"
    settings.ALERT_EMAIL_TO = []
    settings.ALERT_RULES = {}
    settings.ALERT_REPEAT_INTERVAL_SECONDS = 3600
    settings.ALERT_QUIET_PERIOD_SECONDS = 600
    return settings
