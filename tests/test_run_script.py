"""`make run`'s choice of superuser: the demo admin/admin only where nobody else can reach it."""

import os
import subprocess
import sys

import pytest

from scripts.run import admin_credentials, emulator_wanted, local_env_write
from tests.test_project import ROOT


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


def test_the_first_run_writes_a_private_env_and_never_overwrites_it(tmp_path):
    env_file = tmp_path / ".env"
    assert local_env_write(env_file, emulator_port="8765") is True
    first = env_file.read_text()
    assert local_env_write(env_file, emulator_port="8765") is False
    assert env_file.read_text() == first
    assert env_file.stat().st_mode & 0o777 == 0o600

    read = dict(line.split("=", 1) for line in first.splitlines() if line and line[0] != "#")
    assert len(read["DJANGO_SECRET_KEY"]) >= 50 and read["DJANGO_DEBUG"] == "true"
    assert read["CHATKIT_USER_ID_SECRET"] not in ("", read["DJANGO_SECRET_KEY"])
    assert emulator_wanted(read)
    assert not emulator_wanted({**read, "OPENAI_BASE_URL": "https://api.openai.com/v1"})

    other = tmp_path / "other"
    local_env_write(other, emulator_port="9000")
    assert "DJANGO_SECRET_KEY=" + read["DJANGO_SECRET_KEY"] not in other.read_text()
    assert "OPENAI_BASE_URL=http://127.0.0.1:9000/v1" in other.read_text()


def test_the_settings_read_what_make_run_wrote(tmp_path):
    """After the first `make run`, `python manage.py …` works as the README writes it."""
    env_file = tmp_path / ".env"
    local_env_write(env_file, emulator_port="8765")
    script = (
        "import environ, sys; environ.Env.read_env(sys.argv[1], overwrite=True)\n"
        "import django; django.setup()\n"
        "from django.conf import settings\n"
        "print(settings.DEBUG, settings.OPENAI_BASE_URL)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "OPENAI_"))}
    env["DJANGO_SETTINGS_MODULE"] = "broker.settings"
    done = subprocess.run(
        [sys.executable, "-c", script, str(env_file)], cwd=ROOT, env=env, capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "http://127.0.0.1:8765/v1"]
