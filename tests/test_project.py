"""Project-wide guarantees: migrations, settings, the CI environment."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def run_python(*args: str, env: dict) -> subprocess.CompletedProcess:
    """Run Python in a fresh process with exactly this environment, as a deployment would."""
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.django_db
def test_migrations_match_the_models():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


def test_production_settings_refuse_to_start_without_a_secret_key():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    # Empty values win over a developer's .env file, which is only a fallback.
    env.update(DJANGO_SETTINGS_MODULE="broker.settings", DJANGO_SECRET_KEY="", DJANGO_DEBUG="false")
    result = run_python("-c", "import django; django.setup()", env=env)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in result.stderr


@pytest.mark.parametrize(("debug", "falls_back"), [("false", False), ("true", True)])
def test_the_user_id_secret_follows_the_secret_key_only_in_debug(debug, falls_back):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CHATKIT_"))}
    env.update(DJANGO_SETTINGS_MODULE="broker.settings", DJANGO_SECRET_KEY="k" * 50,
               DJANGO_DEBUG=debug, CHATKIT_USER_ID_SECRET="")  # fmt: skip
    code = "from django.conf import settings; print(repr(settings.CHATKIT_USER_ID_SECRET))"
    result = run_python("-c", code, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (repr("k" * 50) if falls_back else "''")


@pytest.mark.django_db
def test_ci_runs_on_postgresql():
    # CI must exercise the production database; locally SQLite is the zero-setup default.
    if not os.environ.get("CI"):
        pytest.skip("only meaningful in CI")
    assert connection.vendor == "postgresql"


def test_env_example_as_written_passes_manage_py_check(tmp_path):
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "OPENAI_", "CHATKIT_"))
    }
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    env.update(DJANGO_SETTINGS_MODULE="broker.settings", DJANGO_SECRET_KEY="x" * 50)
    # Its DATABASE_URL is commented out: without one, SQLite with DEBUG off is refused...
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    refused = run_python("manage.py", "check", env=env)
    assert refused.returncode != 0 and "sessions_api.E010" in refused.stderr
    # ...and with the PostgreSQL URL it shows, the example passes (check does not connect).
    env["DATABASE_URL"] = "postgres://broker:secret@127.0.0.1:5432/broker"
    result = run_python("manage.py", "check", env=env)
    assert result.returncode == 0, result.stderr
    assert "sessions_api.W001" in result.stderr  # no key in the example: warned, not fatal


PRODUCTION = {
    "DJANGO_SETTINGS_MODULE": "broker.settings",
    "DJANGO_SECRET_KEY": "production-7Hq2-xW9v-Lm3P-zR8t-Yc4N-bK6d-Qs1F-gJ5e-Ua0X",
    "DJANGO_ALLOWED_HOSTS": "broker.example.com",
    "DATABASE_URL": "postgres://broker:secret@db.internal:5432/broker",  # check does not connect
    "OPENAI_API_KEY": "sk-production-key-0123456789",
    "OPENAI_WORKFLOW_ID": "wf_production",
    "CHATKIT_USER_ID_SECRET": "u" * 40,
}


def test_production_settings_pass_the_deploy_check_at_warning_level():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CHATKIT_"))}
    env.update(PRODUCTION)
    result = run_python("manage.py", "check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stderr


@pytest.mark.django_db
def test_https_is_required_but_health_probes_answer_over_http(client, settings):
    settings.SECURE_SSL_REDIRECT = True  # the production default; tests speak plain http
    redirected = client.post("/api/chatkit/session/")
    assert redirected.status_code == 301
    assert redirected["Location"].startswith("https://")
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_pages_carry_a_content_security_policy(client):
    policy = client.get("/admin/login/")["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
