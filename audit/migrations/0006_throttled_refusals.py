from django.conf import settings
from django.db import migrations, models

from audit.migration_operations import AddUniqueIndexWithoutBlockingWrites


class Migration(migrations.Migration):
    atomic = False  # CONCURRENTLY cannot run inside a transaction

    dependencies = [
        ('audit', '0005_internal_error_and_error_code_index'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name='sessionattempt',
            name='refusal_key',
            field=models.CharField(blank=True, db_default='', default='', editable=False, help_text='Which caller and minute a row of throttled refusals counts (a keyed hash).', max_length=32, verbose_name='refusal key'),
        ),
        migrations.AddField(
            model_name='sessionattempt',
            name='requests',
            field=models.IntegerField(db_default=1, default=1, help_text='Requests this row stands for: 1, or the throttled refusals of one caller in one minute.', verbose_name='requests'),
        ),
        AddUniqueIndexWithoutBlockingWrites(
            model_name='sessionattempt',
            constraint=models.UniqueConstraint(condition=models.Q(('refusal_key', ''), _negated=True), fields=('refusal_key',), name='audit_attempt_refusal_key_uniq'),
        ),
    ]
