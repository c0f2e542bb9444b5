"""Test settings: the real settings, plus what only a test run wants.

DATABASE_URL and REDIS_URL still come from the environment, so CI runs the same suite on
PostgreSQL and Redis that runs locally on SQLite.
"""

import os

import fakeredis

os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-not-a-secret")

from broker.settings import *  # noqa: E402,F403

# Hashing passwords slowly is a production feature; tests create many users.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Tests never pick up an operator's real key or workflow from the shell or a .env file.
OPENAI_API_KEY = ""
OPENAI_WORKFLOW_ID = ""
CHATKIT_ALLOWED_WORKFLOWS = []
CHATKIT_USER_ID_SECRET = "tests-only-user-id-secret"
# The suite sends many requests from one address; the throttle tests turn the limits on.
CHATKIT_THROTTLE_USER = ""
CHATKIT_THROTTLE_ANON = ""
CHATKIT_THROTTLE_ADDRESS = ""
# Locally the suite runs on SQLite with DEBUG off, on purpose (CI runs it on PostgreSQL).
ALLOW_SQLITE = True
# The test client speaks plain http; tests/test_project.py checks the https defaults.
SECURE_SSL_REDIRECT = False
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# With REDIS_URL set (always in CI) tasks go through the real Redis, as in production; without
# it, kombu's in-memory transport keeps a local run free of services.
if not REDIS_URL:
    CELERY_BROKER_URL = "memory://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
    # The cache is Redis in production; locally fakeredis stands in for it, through the same
    # Django Redis backend, so SET NX and expiry behave as they do against a real server.
    CACHES = {
        "default": {
            "BACKEND": "broker.cache.SharedRedisCache",
            "LOCATION": "redis://fakeredis:6379/0",
            "OPTIONS": {"connection_class": fakeredis.FakeRedisConnection},
        }
    }

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not SQLite's shared in-memory database: tests with a real worker thread write
    # concurrently, and only a file database honours WAL and the busy timeout for that.
    VAR_DIR.mkdir(exist_ok=True)
    # One file per test run, so two runs in one checkout cannot overwrite each other's.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3")}
else:
    # Worker and server threads in tests must not keep connections past their task or request,
    # or the test database cannot be dropped at the end of the run.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Django builds a pool from the settings it first sees, before the test database exists;
    # tests/test_gunicorn.py runs the pooled production settings in a real server instead.
    DATABASES["default"]["OPTIONS"].pop("pool", None)
# Rows are written on the test's own connection, inside its transaction, so each test sees
# them and rolls them back; tests/audit/test_writer.py runs the group-commit writer itself.
AUDIT_GROUP_COMMIT = False
