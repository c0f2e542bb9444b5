"""The deployment files, checked against the code: no Docker engine runs here, so what
docker-compose.yml and the Dockerfile say is read and compared with the settings."""

import os
import re
import shlex
import subprocess
import sys

import yaml

from tests.test_project import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# What reads the environment to configure the service: the settings and gunicorn's file.
CONFIGURATION = [ROOT / "broker" / "settings.py", ROOT / "gunicorn.conf.py"]
ENV_READ = re.compile(r'(?:env(?:\.\w+)?\(|os\.environ\.get\()\s*"([A-Z][A-Z0-9_]+)"')


def variables_read() -> set[str]:
    return {name for path in CONFIGURATION for name in ENV_READ.findall(path.read_text())}


def test_every_variable_the_configuration_reads_is_documented_in_env_example():
    documented = set(
        re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
    )
    read = variables_read()
    assert len(read) > 60  # the pattern still finds the reads
    assert read - documented == set()


def test_the_services_are_the_proxy_web_worker_one_beat_the_stores_and_a_dev_emulator():
    assert set(SERVICES) == {
        "nginx", "web", "worker", "beat", "postgres", "redis", "migrate", "emulator",
    }  # fmt: skip
    beats = [name for name, service in SERVICES.items() if " beat" in service.get("command", "")]
    assert beats == ["beat"]
    assert "deploy" not in SERVICES["beat"]  # no replicas: two beats send every task twice
    with_profiles = {
        name: service["profiles"] for name, service in SERVICES.items() if "profiles" in service
    }
    assert with_profiles == {"emulator": ["dev"]}
    assert SERVICES["emulator"]["build"]["target"] == "dev"
    assert {SERVICES[name]["build"]["target"] for name in ("web", "worker", "beat", "migrate")} == {
        "prod"
    }
    # Only the proxy is published: gunicorn must never face slow clients directly.
    assert {name for name, service in SERVICES.items() if "ports" in service} == {"nginx"}


def test_healthchecks_ask_the_health_endpoints():
    web = " ".join(SERVICES["web"]["healthcheck"]["test"])
    assert "/readyz" in web
    http_checks = [
        " ".join(service["healthcheck"]["test"])
        for name, service in SERVICES.items()
        if "healthcheck" in service and name in ("web", "worker", "beat", "nginx")
    ]
    assert all("/readyz" in test or "/healthz" in test for test in http_checks)


def test_no_secret_is_written_in_the_compose_file():
    secretish = re.compile(r"PASSWORD|SECRET|_KEY$|TOKEN")
    for name, service in SERVICES.items():
        environment = service.get("environment", {})
        for variable, value in environment.items():
            value = str(value)
            if secretish.search(variable):
                assert value.startswith("${") and value.endswith("}"), (name, variable)
            # A URL may carry credentials only by reference.
            assert not re.search(r"://[^/@${}]+:[^/@${}]+@", value), (name, variable)
    assert "env_file" in SERVICES["web"]


def test_the_image_runs_what_gunicorn_conf_py_configures():
    command = re.findall(r"^CMD (\[.*\])$", DOCKERFILE.split("FROM app AS dev")[0], re.M)
    assert command == ['["gunicorn", "-c", "gunicorn.conf.py", "broker.wsgi:application"]']
    assert shlex.split(SERVICES["web"]["command"]) == yaml.safe_load(command[0])
    # The last stage is what a plain `docker build .` gives: production, without dev tools.
    stages = re.findall(r"^FROM (\S+) AS (\w+)$", DOCKERFILE, re.M)
    assert stages[-1] == ("app", "prod")
    assert "requirements/dev.txt" not in DOCKERFILE.split("FROM app AS dev")[0]


def test_production_requirements_leave_the_development_tools_out():
    production = (ROOT / "requirements" / "prod.txt").read_text() + (
        ROOT / "requirements" / "base.txt"
    ).read_text()
    for tool in ("aiohttp", "pytest", "playwright", "mutmut", "ruff"):
        assert not re.search(rf"^{tool}\b", production, re.M), tool


def test_env_files_never_reach_the_image():
    assert ".env*" in (ROOT / ".dockerignore").read_text().split()


def test_the_service_runs_without_aiohttp_and_the_emulator_says_what_it_needs():
    """A production image has no aiohttp: the app, its checks and every URL still load."""
    script = (
        "import sys; sys.modules['aiohttp'] = None\n"  # any import of it now fails
        "import django; django.setup()\n"
        "from django.core.management import call_command\n"
        "from django.core.management.base import CommandError\n"
        "from django.urls import get_resolver\n"
        "import broker.wsgi, celery_app, audit.tasks, sessions_api.tasks\n"
        "get_resolver().url_patterns\n"
        "call_command('check')\n"
        "try:\n"
        "    call_command('chatkit_emulator')\n"
        "except CommandError as exc:\n"
        "    print(exc)\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL"))},
        "DJANGO_SETTINGS_MODULE": "broker.settings",
        "DJANGO_SECRET_KEY": "deploy-files-test-only",
        "DJANGO_ALLOW_SQLITE": "true",
        "CHATKIT_USER_ID_SECRET": "deploy-files-test-only",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "The emulator is a development tool and needs aiohttp" in done.stdout
