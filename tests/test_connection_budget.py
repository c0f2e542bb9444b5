"""broker.W002: the web workers' database pools must fit in what PostgreSQL allows."""

import os
import runpy
import subprocess

import pytest
from django.db import connection

from broker.checks import connection_budget_warnings, database_connections_check, web_workers
from tests.conftest import suite_database_url
from tests.test_project import PRODUCTION, ROOT, run_python

POOL_MAX_SIZE = 8  # DB_POOL_MAX_SIZE's default (broker/settings.py)


@pytest.mark.parametrize("concurrency", [None, "3"])
def test_the_check_counts_the_workers_gunicorn_runs(monkeypatch, tmp_path, concurrency):
    # Set, so that reading the config does not make a metrics folder of its own.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    if concurrency is None:
        monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    else:
        monkeypatch.setenv("WEB_CONCURRENCY", concurrency)
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert config["workers"] == web_workers()
    assert web_workers() == (
        int(concurrency) if concurrency else max(2, len(os.sched_getaffinity(0)))
    )


@pytest.fixture
def postgresql(db):
    if connection.vendor != "postgresql":
        pytest.skip("the budget is PostgreSQL's max_connections; CI runs this on PostgreSQL")


def check_database(workers: int | None, **settings: str) -> subprocess.CompletedProcess:
    """`manage.py check --database default` as an operator runs it: production settings, with
    their connection pool, against this run's PostgreSQL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CHATKIT_"))}
    env.pop("WEB_CONCURRENCY", None)
    env.update(PRODUCTION, DATABASE_URL=suite_database_url())
    if workers is not None:
        env["WEB_CONCURRENCY"] = str(workers)
    env.update(settings)
    return run_python("manage.py", "check", "--database", "default", env=env)


def allowed_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
        )
        return cursor.fetchone()[0]


def test_the_default_pools_fit_and_too_many_workers_are_warned_of(postgresql):
    default = check_database(None)
    assert default.returncode == 0, default.stderr
    assert "broker.W002" not in default.stderr
    # Each worker: its pool, and the audit writer's connection of its own.
    per_worker = POOL_MAX_SIZE + 1
    too_many = allowed_connections() // per_worker + 1
    warned = check_database(too_many)
    assert "broker.W002" in warned.stderr
    assert f"up to {too_many * per_worker} PostgreSQL connections" in warned.stderr
    assert "broker.W002" not in check_database(too_many - 1).stderr


@pytest.mark.parametrize(
    ("workers", "pool_max", "writer", "allowed", "warned"),
    [
        (4, 8, 1, 97, False),
        (10, 8, 1, 97, False),
        (11, 8, 1, 97, True),
        (12, 8, 0, 97, False),
        (13, 8, 0, 97, True),
        (2, 49, 1, 99, True),
        (2, 49, 1, 100, False),
    ],
)
def test_the_budget_is_workers_times_the_pool_and_the_writer(
    workers, pool_max, writer, allowed, warned
):
    warnings = connection_budget_warnings(workers, pool_max, writer, allowed)
    assert [w.id for w in warnings] == (["broker.W002"] if warned else [])
    if warned:
        assert warnings[0].msg.startswith(
            f"The {workers} web workers of this machine may open up to "
            f"{workers * (pool_max + writer)} PostgreSQL connections ({workers} × "
        )
        assert f"more than the {allowed} the server allows" in warnings[0].msg
        assert "PgBouncer" in warnings[0].hint


def test_without_group_commit_the_writer_needs_no_connection(postgresql):
    workers = allowed_connections() // POOL_MAX_SIZE  # their pools fit; with the writers not
    assert workers * (POOL_MAX_SIZE + 1) > allowed_connections()

    assert "broker.W002" in check_database(workers).stderr
    assert "broker.W002" not in check_database(workers, AUDIT_GROUP_COMMIT="false").stderr


def test_the_warning_says_what_to_change():
    [warning] = connection_budget_warnings(11, 8, 1, 97)
    assert warning.msg == (
        "The 11 web workers of this machine may open up to 99 PostgreSQL connections "
        "(11 × (DB_POOL_MAX_SIZE 8 + 1 for the audit writer)), more than the 97 the server "
        "allows (max_connections less its superuser reserve): under load, requests would fail "
        "to get one."
    )
    [warning] = connection_budget_warnings(13, 8, 0, 97)
    assert "(13 × DB_POOL_MAX_SIZE 8), more than" in warning.msg
    assert warning.hint == (
        "Lower WEB_CONCURRENCY or DB_POOL_MAX_SIZE, raise PostgreSQL's max_connections, or put "
        "PgBouncer in transaction mode in front. Celery workers need connections too."
    )


def test_only_a_database_check_asks_the_database(monkeypatch):
    monkeypatch.setenv("WEB_CONCURRENCY", "100000")
    assert database_connections_check(databases=None) == []


def test_no_budget_without_a_pooled_postgresql(db, monkeypatch):
    """SQLite (the zero-setup database), or PostgreSQL without the pool (as in this suite)."""
    assert "pool" not in connection.settings_dict["OPTIONS"]
    monkeypatch.setenv("WEB_CONCURRENCY", "100000")
    assert database_connections_check(databases=["default"]) == []
