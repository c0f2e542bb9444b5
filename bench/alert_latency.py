"""Alert delivery latency: from the failure that crosses a rule's threshold to the webhook.

Runs the product as in production, each part its own process: gunicorn (gthread) serving the
API, a Celery worker, the ChatKit emulator as upstream, PostgreSQL and Redis. The emulator
accepts another key than the broker's, so every session request is a real upstream 401. Each
trial sends three requests for a fresh workflow (the auth rule fires at 3 within 5 minutes);
the latency is the time from sending the third request to the webhook receiving the alert,
both read on this process's monotonic clock (so it includes the API's own request time).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/0 \
        .venv/bin/python bench/alert_latency.py [--trials 30]

Loopback only; bounded in count and time; drops and recreates the database `broker_bench_alerts`.
"""

import argparse
import http.server
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = "broker_bench_alerts"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Sink(http.server.BaseHTTPRequestHandler):
    received: dict[str, float] = {}
    bodies: list[dict] = []
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            self.bodies.append(body)
            if body["status"] == "firing":
                self.received.setdefault(body["workflow_id"], time.monotonic())
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def wait_until_up(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310 - loopback URL built here
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def post(url: str, body: dict) -> int:
    request = urllib.request.Request(  # noqa: S310 - loopback URL built here
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def recreate_database(admin_url: str, name: str) -> str:
    """Drop and create a scratch database next to `admin_url`'s; returns its URL."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument(
        "--verbose", action="store_true", help="per trial: request ms, then response-to-webhook ms"
    )
    args = parser.parse_args()
    database_url, redis_url = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    if not (database_url or "").startswith("postgres") or not redis_url:
        raise SystemExit("Set DATABASE_URL (PostgreSQL) and REDIS_URL; see the docstring.")

    sink_port, web_port, emulator_port = free_port(), free_port(), free_port()
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", sink_port), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    workflows = [f"wf_bench_{i:03d}" for i in range(args.trials)]
    env = {
        **os.environ,
        "DATABASE_URL": recreate_database(database_url, BENCH_DB),
        "DJANGO_SECRET_KEY": "bench-only",
        "DJANGO_SSL_REDIRECT": "false",  # plain http on loopback
        "CHATKIT_THROTTLE_ADDRESS": "",  # every request comes from one address here
        "DJANGO_LOG_LEVEL": "WARNING",
        "OPENAI_API_KEY": "sk-broker-key-the-emulator-refuses-000",
        "OPENAI_WORKFLOW_ID": workflows[0],
        "OPENAI_BASE_URL": f"http://127.0.0.1:{emulator_port}/v1",
        "CHATKIT_ALLOWED_WORKFLOWS": ",".join(workflows),
        "ALERT_WEBHOOK_URL": f"http://127.0.0.1:{sink_port}/hook",
    }
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    redis_flush = [
        sys.executable,
        "-c",
        "import redis,sys; redis.Redis.from_url(sys.argv[1]).flushdb()",
    ]
    subprocess.run([*redis_flush, redis_url], check=True)
    processes = [
        subprocess.Popen(
            [*manage, "chatkit_emulator", "--port", str(emulator_port),
             "--api-key", "sk-only-this-key-is-accepted-000000"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "broker.wsgi", "--bind", f"127.0.0.1:{web_port}",
             "--access-logfile", "/dev/null"],
            cwd=ROOT, env=env, stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--loglevel", "WARNING",
             "--concurrency", "2"],
            cwd=ROOT, env=env, stderr=subprocess.DEVNULL,
        ),
    ]  # fmt: skip
    try:
        wait_until_up(f"http://127.0.0.1:{web_port}/healthz")
        time.sleep(3)  # let the worker connect to Redis before the first trial
        endpoint = f"http://127.0.0.1:{web_port}/api/chatkit/session/"
        crossed, answered = {}, {}
        for workflow in workflows:
            for _ in range(2):
                assert post(endpoint, {"workflow_id": workflow}) == 502
            # The clock starts when the crossing request is sent: its audit row commits before
            # its response is written, so the alert can beat the response back.
            crossed[workflow] = time.monotonic()
            assert post(endpoint, {"workflow_id": workflow}) == 502
            answered[workflow] = time.monotonic()
            deadline = time.monotonic() + 30
            while workflow not in Sink.received and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.2)
        time.sleep(2)  # late duplicates would show up here
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=30)
        sink.shutdown()

    latencies = sorted(
        (Sink.received[wf] - crossed[wf]) * 1000 for wf in workflows if wf in Sink.received
    )
    if args.verbose:
        for wf in workflows:
            request_ms = (answered[wf] - crossed[wf]) * 1000
            print(f"{wf}: request {request_ms:.0f} ms, then webhook after ", end="")
            print(
                f"{(Sink.received[wf] - answered[wf]) * 1000:.0f} ms"
                if wf in Sink.received
                else "never"
            )
    firing = [body for body in Sink.bodies if body["status"] == "firing"]
    print(
        f"trials: {len(workflows)}, alerts received: {len(latencies)}, "
        f"firing messages: {len(firing)}"
    )
    if latencies:
        p95 = latencies[math.ceil(0.95 * len(latencies)) - 1]  # nearest rank
        print(
            f"latency ms: p50 {statistics.median(latencies):.0f}, p95 {p95:.0f}, "
            f"max {latencies[-1]:.0f}, min {latencies[0]:.0f}"
        )
    return 0 if len(latencies) == len(workflows) == len(firing) else 1


if __name__ == "__main__":
    sys.exit(main())
