"""`manage.py chatkit_check`: verify the live configuration end to end."""

from django.core.management.base import BaseCommand, CommandError

from sessions_api.config_check import CHECK_USER_REF, chatkit_config_check


class Command(BaseCommand):
    help = (
        "Mint one real ChatKit session with the configured key and workflow, for the synthetic "
        f"user {CHECK_USER_REF!r}, and cancel it at once. Prints the outcome, the upstream "
        "request id and the latency; exits non-zero on failure, for deploy pipelines. Run it "
        "after rotating the key or changing the workflow. The attempt is audited, marked as a "
        "check, and never counted by the alert rules."
    )

    def handle(self, *args, **options):
        result = chatkit_config_check()
        if not result.ok:
            raise CommandError(result.summary)
        self.stdout.write(self.style.SUCCESS(result.summary))
