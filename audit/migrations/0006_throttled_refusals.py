from django.conf import settings
from django.db import migrations, models


class AddUniqueIndexWithoutBlockingWrites(migrations.AddConstraint):
    """CREATE UNIQUE INDEX CONCURRENTLY on PostgreSQL: a plain one would stop every audit write,
    so every session, while it scans a table of perhaps millions of rows."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            sql = str(self.constraint.create_sql(model, schema_editor))
            schema_editor.execute(sql.replace("CREATE UNIQUE INDEX", "CREATE UNIQUE INDEX CONCURRENTLY", 1))


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
