"""Settings of the naive baseline: a stock `django-admin startproject` plus DRF, nothing tuned.

This project stands for what a reader of the integration guide deploys, so it keeps the
defaults a fresh project has (the standard apps and middleware, SQLite, DRF's default
authentication and renderers) and does not import anything from the broker.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = "naive-bench-only-not-a-secret"  # noqa: S105 - a local benchmark
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "naive",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "naive.urls"
WSGI_APPLICATION = "naive.wsgi.application"

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

# Anonymous requests without cookies never open it (no session, no user lookup), so the
# benchmark needs no migration; it is here because a stock project has it.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("NAIVE_SQLITE_PATH", "/tmp/naive-bench.sqlite3"),  # noqa: S108
    }
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The only addition: where the guide's view sends its request. The guide hard-codes
# https://api.openai.com/v1/chatkit/sessions; the benchmark points it at the local fake.
NAIVE_UPSTREAM_URL = os.environ.get(
    "NAIVE_UPSTREAM_URL", "https://api.openai.com/v1/chatkit/sessions"
)
