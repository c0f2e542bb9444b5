"""Settings for the ChatKit session broker.

Every value comes from the environment (or a `.env` file beside manage.py), read once here with
django-environ. `.env.example` lists each variable with a one-line comment. The defaults are the
zero-setup ones `make run` relies on: SQLite, an embedded filesystem Celery broker, no Redis.
"""

import logging
from datetime import timedelta
from pathlib import Path

import environ
from celery.schedules import crontab
from csp.constants import NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

# interpolate=False: a value starting with "$" (a random secret key, say) would otherwise be read
# as a reference to another variable.
env = environ.Env(interpolate=False)
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DJANGO_DEBUG", default=False)

SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Set it (see .env.example), or set DJANGO_DEBUG=true "
            "for local development."
        )
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"  # noqa: S105

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "broker.admin_config.BrokerAdminConfig",  # django.contrib.admin, with our site
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    # The OpenAPI schema, and Swagger UI and Redoc served from our own static files.
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_results",
    "axes",
    "corsheaders",
    "sessions_api",
    "audit",
    "chat",
    # The local upstream emulator's command (manage.py chatkit_emulator); a development tool
    # whose aiohttp only requirements/dev.txt installs.
    "emulator",
]

MIDDLEWARE = [
    # Outermost, so that it runs after every other one is done with the request.
    "broker.middleware.ReleaseRequestMiddleware",
    # First to act: a request's log lines must never carry the id of the one its thread
    # served before.
    "broker.middleware.LogContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Before anything that answers on its own (WhiteNoise, CommonMiddleware), so that those
    # answers carry CORS headers too; it answers preflight requests itself.
    "corsheaders.middleware.CorsMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "broker.middleware.RejectNulBytesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "broker.middleware.LazyMessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "broker.middleware.CSPMiddleware",  # django-csp's, its policy built once (see there)
    # Last, as django-axes requires: it answers a locked-out login attempt.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "broker.urls"
WSGI_APPLICATION = "broker.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------------

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
# Never wrap requests in a transaction: a failing request would roll back the audit row of the
# failed attempt, which is exactly the row operators need (a system check enforces this).
DATABASES["default"]["ATOMIC_REQUESTS"] = False
# SQLite with DEBUG off is refused by a system check unless this says it is on purpose.
ALLOW_SQLITE = env.bool("DJANGO_ALLOW_SQLITE", default=False)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # gunicorn's workers and the Celery worker write concurrently: WAL plus a busy timeout and
    # IMMEDIATE transactions keep SQLite from answering "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 10,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
else:
    # One pool per process, shared by its requests. gunicorn serves many requests at once per
    # worker (sized in gunicorn.conf.py for a slow upstream), far more than PostgreSQL's
    # max_connections would allow as one persistent connection each, while a signed-in request
    # needs one only to look its caller up, about a millisecond. The service hands the caller's
    # connection back before the upstream call, so no request holds one while it waits. The
    # audit writer has one connection of its own besides (audit/writer.py). Web workers ×
    # (max_size + 1), plus the Celery workers' pools, must stay under max_connections (100 by
    # default): 2 × 9 on two cores, and the check broker.W002 warns when this server's workers
    # alone could pass it.
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps connections open, not Django
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True  # the pool checks one before lending it
    options = DATABASES["default"].setdefault("OPTIONS", {})
    options["pool"] = {
        "min_size": env.int("DB_POOL_MIN_SIZE", default=2),
        "max_size": env.int("DB_POOL_MAX_SIZE", default=8),
        # A request waits this long for a free connection, then fails with a 503.
        "timeout": env.float("DB_POOL_TIMEOUT", default=5.0),
    }
    # A server that is down, or accepts connections and never answers, must cost a request a
    # few seconds and a JSON 503, not hang it: libpq waits for ever by default. Keepalives find
    # a connection whose server vanished (a failover, a cut network) within about a minute. The
    # statement limit is well above the longest statement of a Celery task (whose hard limit is
    # 60 s) and far above an audit write's milliseconds.
    options.setdefault("connect_timeout", env.int("DB_CONNECT_TIMEOUT", default=3))
    options.setdefault("keepalives", 1)
    options.setdefault("keepalives_idle", 30)
    options.setdefault("keepalives_interval", 10)
    options.setdefault("keepalives_count", 3)
    statement_timeout_ms = env.int("DB_STATEMENT_TIMEOUT_MS", default=30_000)
    options["options"] = (
        f"{options.get('options', '')} -c statement_timeout={statement_timeout_ms}".strip()
    )

# PostgreSQL: concurrent requests' audit rows are written in one statement and one commit, by
# one of those requests in turn (audit/writer.py); each request still waits for its own commit.
AUDIT_GROUP_COMMIT = env.bool("AUDIT_GROUP_COMMIT", default=True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth, i18n, static -------------------------------------------------------------------------

# Admin logins are throttled by django-axes: after AXES_FAILURE_LIMIT wrong passwords for one
# username from one address, that pair is locked out for AXES_COOLOFF_MINUTES (audited in the
# admin under "Axes"). The address is the one the API's throttle uses (DJANGO_NUM_PROXIES).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("AXES_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "sessions_api.throttle.client_address"

# Django's defaults, the first computed on a thread of its own under gevent (broker/hashers.py).
# Django's own PBKDF2PasswordHasher is left out: two hashers of one algorithm name would clash.
PASSWORD_HASHERS = [
    "broker.hashers.ThreadedPBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- Security -----------------------------------------------------------------------------------

# Production is https only: `manage.py check --deploy --fail-level WARNING` passes with these
# defaults. Serving plain http on purpose (a TLS terminator that does not say so, a local
# compose stack) takes DJANGO_SSL_REDIRECT=false; behind a TLS proxy that sets
# X-Forwarded-Proto, DJANGO_BEHIND_TLS_PROXY=true.
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_SSL_REDIRECT = env.bool("DJANGO_SSL_REDIRECT", default=not DEBUG)
# Load balancers, orchestrators and Prometheus ask these over plain http inside their network.
SECURE_REDIRECT_EXEMPT = [r"^healthz", r"^readyz", r"^metrics$"]
# A year, subdomains included, preload-ready: what `check --deploy` asks. Browsers remember it,
# so lower it (DJANGO_HSTS_SECONDS) while trying https out.
SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", default=0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_HSTS_PRELOAD", default=True)
if env.bool("DJANGO_BEHIND_TLS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Pages load only what this server serves; nothing may frame them. Inline styles stay allowed:
# the admin's widgets set some; inline scripts do not.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# --- Frontends on other origins -----------------------------------------------------------------

# Origins (scheme://host[:port]) whose pages may call the API with the browser's cookies; none by
# default. Only /api/ answers them: the admin and the chat page stay same-origin. A signed-in
# user's POST from such an origin also needs that origin in DJANGO_CSRF_TRUSTED_ORIGINS.
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
CORS_URLS_REGEX = r"^/api/"
CORS_ALLOW_CREDENTIALS = True

# --- Django REST framework ----------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["sessions_api.drf.CsrfSessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_PARSER_CLASSES": ["sessions_api.drf.LimitedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "sessions_api.drf.JSONOnlyNegotiation",
    "EXCEPTION_HANDLER": "sessions_api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Hops of trusted reverse proxies in front of us; decides which X-Forwarded-For entry is
    # the client's address (only used when CHATKIT_AUDIT_CLIENT_IP is on).
    "NUM_PROXIES": env.int("DJANGO_NUM_PROXIES", default=0),
}

# --- API schema and docs ------------------------------------------------------------------------

# /api/schema/ (OpenAPI 3), /api/docs/ (Swagger UI), /api/docs/redoc/. The error responses are
# generated from sessions_api/errors.py (sessions_api/openapi.py).
SPECTACULAR_SETTINGS = {
    "TITLE": "ChatKit session broker",
    "DESCRIPTION": (
        "Mints short-lived OpenAI ChatKit client secrets for browsers, and audits every attempt. "
        'Every error is `{"error": {"code", "message", "request_id"}}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "PREPROCESSING_HOOKS": ["sessions_api.openapi.exclude_legacy_path"],
    # A field that refuses "" says so (minLength 1), as the serializers do.
    "ENFORCE_NON_BLANK_FIELDS": True,
    # Swagger UI and Redoc from drf-spectacular-sidecar's files, served by us: no CDN, and the
    # Content-Security-Policy above holds.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- The upstream and ChatKit ---------------------------------------------------------------------

OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_WORKFLOW_ID = env.str("OPENAI_WORKFLOW_ID", default="")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="https://api.openai.com/v1")
# Plain http to another machine is refused (the key would cross the network in the clear), but
# for the emulator in docker-compose's dev profile, with a made-up key.
CHATKIT_ALLOW_HTTP_UPSTREAM = env.bool("CHATKIT_ALLOW_HTTP_UPSTREAM", default=False)

# Workflows a browser may ask for by id; the configured one is always allowed.
CHATKIT_ALLOWED_WORKFLOWS = env.list("CHATKIT_ALLOWED_WORKFLOWS", default=[])
# How a logged-in user is named to OpenAI: hmac (pseudonymous, default), username or pk.
CHATKIT_USER_ID_MODE = env.str("CHATKIT_USER_ID_MODE", default="hmac")
# Key of the HMAC above. Changing it renames every user upstream (their ChatKit history is scoped
# by that name), so set it once and keep it. Outside DEBUG it never falls back to
# DJANGO_SECRET_KEY, whose rotation would otherwise re-key everyone (a system check says so).
CHATKIT_USER_ID_SECRET = env.str("CHATKIT_USER_ID_SECRET", default="") or (
    SECRET_KEY if DEBUG else ""
)
CHATKIT_ALLOW_ANONYMOUS = env.bool("CHATKIT_ALLOW_ANONYMOUS", default=True)
CHATKIT_ANON_COOKIE_NAME = env.str("CHATKIT_ANON_COOKIE_NAME", default="chatkit_anon")
CHATKIT_ANON_COOKIE_AGE = env.int("CHATKIT_ANON_COOKIE_AGE", default=365 * 24 * 3600)
# Optional session options sent upstream; unset means OpenAI's defaults.
CHATKIT_EXPIRES_AFTER_SECONDS = env.int("CHATKIT_EXPIRES_AFTER_SECONDS", default=None)
CHATKIT_RATE_LIMIT_PER_MINUTE = env.int("CHATKIT_RATE_LIMIT_PER_MINUTE", default=None)
CHATKIT_CONFIGURATION = env.json("CHATKIT_CONFIGURATION", default=None)
# Upstream HTTP: connect and read timeouts per attempt, a wall-clock budget per call (retries
# included) and the retry count for connection failures and 5xx answers.
CHATKIT_CONNECT_TIMEOUT = env.float("CHATKIT_CONNECT_TIMEOUT", default=3.0)
CHATKIT_READ_TIMEOUT = env.float("CHATKIT_READ_TIMEOUT", default=8.0)
CHATKIT_TOTAL_TIMEOUT = env.float("CHATKIT_TOTAL_TIMEOUT", default=10.0)
CHATKIT_MAX_RETRIES = env.int("CHATKIT_MAX_RETRIES", default=2)
# After this many upstream calls in a row fail (5xx, timeout, no connection), each process
# answers 503 at once, without calling, for the cool-down; then one call probes
# (sessions_api/breaker.py).
CHATKIT_BREAKER_FAILURES = env.int("CHATKIT_BREAKER_FAILURES", default=5)
CHATKIT_BREAKER_COOLDOWN_SECONDS = env.float("CHATKIT_BREAKER_COOLDOWN_SECONDS", default=10.0)
CHATKIT_MAX_BODY_BYTES = env.int("CHATKIT_MAX_BODY_BYTES", default=16 * 1024)
# Store the caller's IP address on audit rows (off by default: it is personal data).
CHATKIT_AUDIT_CLIENT_IP = env.bool("CHATKIT_AUDIT_CLIENT_IP", default=False)
# How fast callers may mint sessions, as "30/min", "500/hour"…; empty turns a limit off.
# Counted in the shared cache (Redis in production). The policy: sessions_api/throttle.py.
# Per logged-in user:
CHATKIT_THROTTLE_USER = env.str("CHATKIT_THROTTLE_USER", default="30/min")
# Per anonymous browser, known by its signed cookie:
CHATKIT_THROTTLE_ANON = env.str("CHATKIT_THROTTLE_ANON", default="30/min")
# Per address (IPv4, or IPv6 /64) for callers without that cookie; loose, for offices and NATs:
CHATKIT_THROTTLE_ADDRESS = env.str("CHATKIT_THROTTLE_ADDRESS", default="600/min")
# All anonymous callers together; when spent they are refused and an alert fires. Off by default:
CHATKIT_THROTTLE_ANON_BUDGET = env.str("CHATKIT_THROTTLE_ANON_BUDGET", default="")
# Cancel a user's live ChatKit sessions upstream when they log out.
CHATKIT_CANCEL_ON_LOGOUT = env.bool("CHATKIT_CANCEL_ON_LOGOUT", default=True)

# --- Error intelligence: statistics, alerts, reports, retention ----------------------------------

# Alert rules are defined in audit/alerting/rules.py; this JSON overrides them by name, e.g.
# {"upstream_auth": {"threshold": 5}, "upstream_rejected": {"enabled": false}}.
ALERT_RULES = env.json("ALERT_RULES", default={})
ALERT_REPEAT_INTERVAL_SECONDS = env.int("ALERT_REPEAT_INTERVAL_SECONDS", default=3600)
ALERT_QUIET_PERIOD_SECONDS = env.int("ALERT_QUIET_PERIOD_SECONDS", default=600)
# The longest silence an operator may set: a forgotten silence must not mute a rule for good.
ALERT_SILENCE_MAX_HOURS = env.int("ALERT_SILENCE_MAX_HOURS", default=168)
ALERT_WEBHOOK_URL = env.str("ALERT_WEBHOOK_URL", default="")
ALERT_WEBHOOK_TIMEOUT = env.float("ALERT_WEBHOOK_TIMEOUT", default=5.0)
ALERT_EMAIL_TO = env.list("ALERT_EMAIL_TO", default=[])
# Base of the admin links put in notifications and reports.
ALERT_ADMIN_BASE_URL = env.str("ALERT_ADMIN_BASE_URL", default="http://127.0.0.1:8000")
# hourly, daily or weekly: how often the error report is built, and the period it covers.
ERROR_REPORT_PERIOD = env.str("ERROR_REPORT_PERIOD", default="daily")
AUDIT_RETENTION_DAYS = env.int("AUDIT_RETENTION_DAYS", default=90)
# The most rows one CSV export of the audit list holds (the newest of the filtered view).
AUDIT_EXPORT_MAX_ROWS = env.int("AUDIT_EXPORT_MAX_ROWS", default=10_000)

EMAIL_CONFIG = env.email_url("EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="chatkit-broker@localhost")
# Django's SMTP backend would otherwise wait forever on a silent mail server.
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Redis, Celery --------------------------------------------------------------------------------

REDIS_URL = env.str("REDIS_URL", default="")
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or REDIS_URL or "filesystem://"
# Short socket timeouts so a dead or silent Redis fails an enqueue fast instead of hanging the
# web request that triggered it (Redis answers in well under a millisecond when it is well);
# after one failure the process skips Redis for REDIS_PAUSE_SECONDS (broker/redis_breaker.py).
REDIS_BROKER_TRANSPORT_OPTIONS = {
    "socket_connect_timeout": 0.5,
    "socket_timeout": 0.5,
    "visibility_timeout": 3600,
}
REDIS_PAUSE_SECONDS = env.float("REDIS_PAUSE_SECONDS", default=5.0)
if CELERY_BROKER_URL.startswith("filesystem://"):
    # The zero-setup broker: a spool folder shared by web, worker and beat on one machine.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(VAR_DIR / "celery" / "queue"),
        "data_folder_out": str(VAR_DIR / "celery" / "queue"),
        "control_folder": str(VAR_DIR / "celery" / "control"),
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = REDIS_BROKER_TRANSPORT_OPTIONS
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
# Results are stored only by tasks that say ignore_result=False: most need none.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_EXPIRES = 7 * 24 * 3600
CELERY_TASK_SOFT_TIME_LIMIT = 30
CELERY_TASK_TIME_LIMIT = 60
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Tasks are idempotent, so a task cut off by a lost broker connection may simply run again
# (Celery 6's default, chosen now).
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "celery_app:Scheduler"
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
_REPORT_CRONTABS = {
    "hourly": {"minute": 5},
    "daily": {"minute": 15, "hour": 0},
    "weekly": {"minute": 15, "hour": 0, "day_of_week": "mon"},
}
if ERROR_REPORT_PERIOD not in _REPORT_CRONTABS:
    raise ImproperlyConfigured("ERROR_REPORT_PERIOD must be hourly, daily or weekly.")
# Each entry expires: after a worker outage, beat's backlog must not replay stale runs one
# after another; the next scheduled run does the work.
CELERY_BEAT_SCHEDULE = {
    # Every minute: fold newly audited minutes into the per-minute statistics.
    "aggregate-stats": {
        "task": "audit.tasks.aggregate_stats",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # Every minute: evaluate alert rules (so an alert fires even when the enqueue after a failure
    # was lost), resolve quiet alerts, redeliver lost notifications, email unsent reports.
    "sweep-alerts": {
        "task": "audit.tasks.sweep_alerts",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # Just after each period ends (00:15 UTC for daily): build, store and email the error report.
    # A report delayed by an hour is still worth sending; one a period late is the next's job.
    "send-error-report": {
        "task": "audit.tasks.send_error_report",
        "schedule": crontab(**_REPORT_CRONTABS[ERROR_REPORT_PERIOD]),
        "options": {"expires": 3600},
    },
    # Daily at 03:30 UTC: delete audit rows older than AUDIT_RETENTION_DAYS, in batches.
    "prune-audit-log": {
        "task": "audit.tasks.prune_audit_log",
        "schedule": crontab(minute=30, hour=3),
        "options": {"expires": 6 * 3600},
    },
}

# --- Cache --------------------------------------------------------------------------------------

# A shared cache coalesces alert evaluations across processes; without Redis each process
# coalesces on its own, which is still correct, only a little less frugal.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "broker.cache.SharedRedisCache",
            "LOCATION": REDIS_URL,
            # Sub-second: the throttle asks on every request (see REDIS_PAUSE_SECONDS).
            "OPTIONS": {"socket_connect_timeout": 0.25, "socket_timeout": 0.25},
        }
    }

# --- Metrics -------------------------------------------------------------------------------------

# GET /metrics (broker/metrics_endpoint.py) answers only these addresses (read as the throttle
# reads them, DJANGO_NUM_PROXIES), as IPs or networks; empty: every address. The default is
# loopback and the private networks a scraper inside the deployment comes from.
METRICS_ALLOWED_NETWORKS = env.list(
    "METRICS_ALLOWED_NETWORKS",
    default=["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
             "fc00::/7"],
)  # fmt: skip
# When set, /metrics also wants "Authorization: Bearer <token>" (at least 32 characters).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

# --- Logging --------------------------------------------------------------------------------------

# plain: one line of text per record; json: one JSON object per line, with the request id of
# the session request it belongs to (logs.py). The Celery worker follows it too (celery_app.py).
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured("LOG_FORMAT must be plain or json.")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "logs.JsonFormatter"},
    },
    "filters": {
        # Whatever logs a key or a client secret by mistake, it is redacted on its way out.
        "redact": {"()": "redaction.RedactSecretsFilter", "secrets": [OPENAI_API_KEY]},
        # Django's "Bad Gateway" line for each upstream failure, which we log already.
        "answered": {"()": "logs.DropAnsweredUpstreamFailures"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["answered", "redact"],
        },
    },
    "root": {"handlers": ["console"], "level": env.str("DJANGO_LOG_LEVEL", default="INFO")},
}
if LOG_FORMAT == "json":
    # A Python warning becomes a log record (logger py.warnings), so it is a JSON line too
    # rather than raw text between them.
    logging.captureWarnings(True)
