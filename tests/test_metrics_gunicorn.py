"""Metrics and JSON logs from a real gunicorn with two workers (gunicorn.conf.py), on PostgreSQL,
against the emulator: /metrics adds up every worker's counts, whichever worker serves it, also
after a worker dies; every log line of a failed request carries the id its caller was shown."""

import json
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import require_service, wait_for
from tests.test_gunicorn import gunicorn_running
from tests.test_metrics import value

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def scrape(base: str) -> dict:
    # A new connection each time, so that either worker may answer.
    response = requests.get(f"{base}/metrics", timeout=10, headers={"Connection": "close"})
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def counted(samples: dict, outcome: str, status: str) -> float:
    return value(samples, "chatkit_session_attempts_total", outcome=outcome, status=status,
                 workflow="wf_test6c2f0a9b81d34e57")  # fmt: skip


def worker_pids(folder) -> set[int]:
    return {int(re.search(r"_(\d+)\.db$", path.name)[1]) for path in folder.glob("counter_*.db")}


@pytest.fixture
def two_workers(upstream, tmp_path):
    require_service("PostgreSQL", "DATABASE_URL")
    if connection.vendor != "postgresql":
        pytest.fail("DATABASE_URL must name PostgreSQL for this test")
    folder = tmp_path / "metrics"
    log = tmp_path / "two.log"
    overrides = {"WEB_CONCURRENCY": "2", "PROMETHEUS_MULTIPROC_DIR": str(folder),
                 "LOG_FORMAT": "json"}  # fmt: skip
    with gunicorn_running(upstream, log, **overrides) as base:
        yield base, folder, log


def test_metrics_add_up_across_workers_and_outlive_a_dead_one(two_workers, upstream):
    base, folder, _ = two_workers

    def mint(_):
        response = requests.post(
            f"{base}/api/chatkit/session/", json={}, timeout=30, headers={"Connection": "close"}
        )
        return response.status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(mint, range(40)))
    upstream.state.push_faults([{"status": 401}] * 3)
    statuses += [mint(None) for _ in range(3)]
    assert sorted(statuses) == [200] * 40 + [502] * 3

    pids = worker_pids(folder)
    assert len(pids) == 2, "both workers served requests"
    for _ in range(6):
        samples = scrape(base)
        assert counted(samples, "success", "200") == 40
        assert counted(samples, "upstream_error", "401") == 3
        assert value(samples, "chatkit_upstream_latency_seconds_count", outcome="success") == 40

    # A worker killed outright: gunicorn starts another, and the dead one's counts stay.
    dead = pids.pop()
    assert list(folder.glob(f"gauge_livemax_{dead}.db")), "the circuit gauge of each worker"
    os.kill(dead, signal.SIGKILL)
    assert wait_for(lambda: not list(folder.glob(f"gauge_live*_{dead}.db")))
    for _ in range(4):
        assert counted(scrape(base), "success", "200") == 40


def test_json_logs_carry_the_request_id_without_django_s_duplicate(two_workers, upstream):
    base, _, log = two_workers
    upstream.state.push_faults([{"status": 500}] * 3)  # retried twice, then given up
    failed = requests.post(f"{base}/api/chatkit/session/", json={}, timeout=30)
    assert failed.status_code == 502
    request_id = failed.json()["error"]["request_id"]
    time.sleep(0.5)  # the log lines reach the file

    # Every line is JSON: what Django logs, and gunicorn's own (booting workers, say).
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert any(line["logger"] == "gunicorn.error" for line in lines)
    ours = [line for line in lines if line.get("request_id") == request_id]
    attempts = [line for line in ours if line["logger"] == "sessions_api.client"]
    assert len(attempts) == 3, ours  # each attempt's warning, retries included
    assert all(line["level"] == "WARNING" for line in attempts)
    assert {"time", "level", "logger", "process", "message"} <= set(ours[0])
    assert "Bad Gateway" not in log.read_text()
    assert "sk-canary" not in log.read_text()
