"""`make run`'s choice of superuser: the demo admin/admin only where nobody else can reach it."""

import pytest

from scripts.run import admin_credentials


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DJANGO_DEBUG": "true"}, ("admin", "admin")),  # SQLite, the default
        ({"DJANGO_DEBUG": "true", "DATABASE_URL": "sqlite:///var/x.db"}, ("admin", "admin")),
        ({"DJANGO_DEBUG": "false"}, None),
        ({}, None),
        ({"DJANGO_DEBUG": "true", "DATABASE_URL": "postgres://u:p@db/broker"}, None),
        (
            {
                "DATABASE_URL": "postgres://u:p@db/broker",
                "DJANGO_SUPERUSER_USERNAME": "ops",
                "DJANGO_SUPERUSER_PASSWORD": "a long chosen password",
            },
            ("ops", "a long chosen password"),
        ),  # fmt: skip
        ({"DJANGO_DEBUG": "true", "DJANGO_SUPERUSER_USERNAME": "ops"}, ("admin", "admin")),
    ],
)
def test_admin_credentials(env, expected):
    assert admin_credentials(env) == expected
