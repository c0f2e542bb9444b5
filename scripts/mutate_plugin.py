"""A pytest plugin for mutation runs (`make mutate`): one SQLite test database per process.

mutmut forks one worker per mutant from a process that has already imported the settings, and
broker/settings_test.py puts its own pid into the test database's file name at import time. Every
worker would inherit that one name, and two workers would create and drop the same file under
each other's tests. Renaming it at the start of each session gives each worker its own file.
"""

import os
from pathlib import Path


def pytest_sessionstart(session) -> None:
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        name = f"test-db-mutmut-{os.getpid()}.sqlite3"
        database.setdefault("TEST", {})["NAME"] = str(Path(settings.VAR_DIR) / name)
