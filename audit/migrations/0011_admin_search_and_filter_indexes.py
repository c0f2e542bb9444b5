from django.db import migrations, models

from audit.migration_operations import AddIndexWithoutBlockingWrites


class Migration(migrations.Migration):
    atomic = False  # CONCURRENTLY cannot run inside a transaction

    dependencies = [
        ("audit", "0010_config_check"),
    ]

    operations = [
        AddIndexWithoutBlockingWrites(
            model_name="sessionattempt",
            index=models.Index(fields=["outcome", "created_at"], name="audit_attempt_outcome_idx"),
        ),
        AddIndexWithoutBlockingWrites(
            model_name="sessionattempt",
            index=models.Index(
                condition=models.Q(("upstream_request_id", ""), _negated=True),
                fields=["upstream_request_id"],
                name="audit_attempt_upstreamid_idx",
            ),
        ),
        AddIndexWithoutBlockingWrites(
            model_name="sessionattempt",
            index=models.Index(
                condition=models.Q(("session_id", ""), _negated=True),
                fields=["session_id"],
                name="audit_attempt_session_idx",
            ),
        ),
    ]
