"""Schema operations that do not stop audit writes while they build, for the audit migrations.

The audit table may hold millions of rows: a plain CREATE INDEX locks out every INSERT, so
every session, until it has scanned them all. On PostgreSQL these build CONCURRENTLY (the
migration must say `atomic = False`); elsewhere (SQLite) they are the plain operation.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

# The ready-made group for operators (README: "The ops group").
OPS_GROUP = "ops"


class AddIndexWithoutBlockingWrites(migrations.AddIndex):
    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.add_index(model, self.index, concurrently=True)


class AddUniqueIndexWithoutBlockingWrites(migrations.AddConstraint):
    """A unique constraint that is an index (a partial one, say), built CONCURRENTLY."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            sql = str(self.constraint.create_sql(model, schema_editor))
            create = "CREATE UNIQUE INDEX"
            schema_editor.execute(sql.replace(create, f"{create} CONCURRENTLY", 1))


def ops_group_grant(apps, codenames: list[str]) -> None:
    """Create the ops group if need be and grant it these audit permissions.

    Django creates permissions after the migrations have run; the group needs them now.
    """
    audit = apps.get_app_config("audit")
    audit.models_module = True
    create_permissions(audit, apps=apps, verbosity=0)
    group, _ = apps.get_model("auth", "Group").objects.get_or_create(name=OPS_GROUP)
    group.permissions.add(
        *apps.get_model("auth", "Permission").objects.filter(
            content_type__app_label="audit", codename__in=codenames
        )
    )
