"""`make run`: migrate, create a demo admin, then run web, worker, beat (and the emulator).

On its first run it writes `.env` (see LOCAL_ENV): a generated secret key, DEBUG on and the local
ChatKit emulator as the upstream. The settings read the same file, so every `python manage.py …`
works in this checkout afterwards. While OPENAI_BASE_URL points at the emulator's port, the
emulator is started too, so everything works with no key and no network.

The demo admin (admin/admin) is made only with DEBUG on and SQLite; DJANGO_SUPERUSER_USERNAME
and DJANGO_SUPERUSER_PASSWORD name another. Ctrl-C stops every process this started.
"""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import environ
from honcho.manager import Manager
from honcho.printer import Printer

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
EMULATOR_PORT = "8765"
LOCAL_ENV = """\
# Written by `make run` on its first run, for local development only; .env.example lists every
# setting. The settings read this file too, so `python manage.py …` works in this checkout.
DJANGO_SECRET_KEY={secret_key}
DJANGO_DEBUG=true
CHATKIT_USER_ID_SECRET={user_id_secret}
# The local ChatKit emulator, which `make run` starts while OPENAI_BASE_URL points at it. To use
# OpenAI: set your OPENAI_API_KEY and OPENAI_WORKFLOW_ID, and delete OPENAI_BASE_URL.
OPENAI_API_KEY=sk-local-emulator-key-not-a-secret
OPENAI_WORKFLOW_ID=wf_local_emulator_demo
OPENAI_BASE_URL=http://127.0.0.1:{emulator_port}/v1
"""


def local_env_write(path: Path, *, emulator_port: str) -> bool:
    """Write the development .env unless one exists; True if it was written."""
    if path.exists():
        return False
    path.write_text(
        LOCAL_ENV.format(
            secret_key=secrets.token_urlsafe(50),
            user_id_secret=secrets.token_urlsafe(32),
            emulator_port=emulator_port,
        )
    )
    path.chmod(0o600)
    return True


def emulator_wanted(env: dict) -> bool:
    """Start the emulator while the broker is pointed at it (the .env make run writes is)."""
    port = env.get("EMULATOR_PORT", EMULATOR_PORT)
    return env.get("OPENAI_BASE_URL") == f"http://127.0.0.1:{port}/v1"


def manage(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=ROOT,
        env=env,
        check=check,
        capture_output=not check,
        text=True,
    )


def admin_credentials(env: dict) -> tuple[str, str] | None:
    """The superuser `make run` creates: the one env names, else the demo admin/admin only for
    a throwaway setup (DEBUG on, SQLite), never on a database someone else may reach."""
    user, password = env.get("DJANGO_SUPERUSER_USERNAME"), env.get("DJANGO_SUPERUSER_PASSWORD")
    if user and password:
        return user, password
    debug = env.get("DJANGO_DEBUG", "").lower() in ("1", "true", "yes", "on")
    sqlite = env.get("DATABASE_URL", "sqlite:").startswith("sqlite:")
    return ("admin", "admin") if debug and sqlite else None


def main() -> int:
    emulator_port = os.environ.get("EMULATOR_PORT", EMULATOR_PORT)
    if local_env_write(ROOT / ".env", emulator_port=emulator_port):
        print("Wrote .env for local development (a new secret key, DEBUG on, the emulator).")
    environ.Env.read_env(ROOT / ".env", overwrite=False)
    env = dict(os.environ)
    env.setdefault("DJANGO_DEBUG", "true")  # plain http on localhost: no Secure-only cookies
    env.setdefault("PYTHONUNBUFFERED", "1")
    port = env.setdefault("PORT", "8000")
    emulator_port = env.get("EMULATOR_PORT", EMULATOR_PORT)
    use_emulator = emulator_wanted(env)

    manage("migrate", "--noinput", "-v", "0", env=env)
    manage("collectstatic", "--noinput", "-v", "0", env=env)
    admin = admin_credentials(env)
    if admin:
        env["DJANGO_SUPERUSER_USERNAME"], env["DJANGO_SUPERUSER_PASSWORD"] = admin
        env.setdefault("DJANGO_SUPERUSER_EMAIL", "admin@example.com")
        created = manage("createsuperuser", "--noinput", env=env, check=False).returncode == 0

    manager = Manager(Printer(sys.stdout))
    if use_emulator:
        manager.add_process(
            "emulator",
            f"{PYTHON} manage.py chatkit_emulator --port {emulator_port} "
            f"--workflow {env['OPENAI_WORKFLOW_ID']}",
            env=env,
            cwd=str(ROOT),
        )
    # The production server with its defaults (gunicorn.conf.py), as docker-compose runs it.
    manager.add_process(
        "web",
        f"{PYTHON} -m gunicorn -c gunicorn.conf.py broker.wsgi:application",
        env={**env, "GUNICORN_BIND": f"127.0.0.1:{port}"},
        cwd=str(ROOT),
    )
    manager.add_process(
        "worker",
        f"{PYTHON} -m celery -A celery_app worker --loglevel INFO --concurrency 2",
        env=env,
        cwd=str(ROOT),
    )
    manager.add_process(
        "beat", f"{PYTHON} -m celery -A celery_app beat --loglevel INFO", env=env, cwd=str(ROOT)
    )

    upstream = "the local emulator" if use_emulator else env.get("OPENAI_BASE_URL", "OpenAI")
    if not admin:
        credentials = "no demo admin: `python manage.py createsuperuser`"
    else:
        credentials = f"{admin[0]} / {admin[1]}" if created else f"{admin[0]} (existing)"
    print(
        f"\n  Session endpoint  POST http://127.0.0.1:{port}/api/chatkit/session/\n"
        f"  Admin             http://127.0.0.1:{port}/admin/  ({credentials})\n"
        f"  Upstream          {upstream}\n"
        f"  Try it:           curl -s -X POST http://127.0.0.1:{port}/api/chatkit/session/\n"
        "  Ctrl-C stops everything.\n",
        flush=True,
    )
    manager.loop()
    return manager.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
