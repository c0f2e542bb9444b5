"""Session creations per second through the whole broker, against the local emulator.

gunicorn (gthread; 2 workers × 8 threads, the defaults of gunicorn.conf.py) serves the API on
PostgreSQL; the emulator is the upstream, each in its own process. This process drives
`POST /api/chatkit/session/` over N keep-alive connections (one anonymous browser per
connection pool) and prints throughput, latency and the emulator's CPU share, which shows
whether the emulator could have been the bottleneck.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/broker_throughput.py [--requests 5000] [--concurrency 32]

Loopback only; bounded in count and time; drops and recreates the database `broker_bench_api`.
"""

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from alert_latency import free_port, recreate_database, wait_until_up
from emulator_throughput import drive, percentile

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=120)
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url.startswith("postgres"):
        raise SystemExit("Set DATABASE_URL to a PostgreSQL server; see the docstring.")

    web_port, emulator_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL")},
        "DATABASE_URL": recreate_database(database_url, "broker_bench_api"),
        "DJANGO_SECRET_KEY": "bench-only",
        "DJANGO_SSL_REDIRECT": "false",  # plain http on loopback
        "CHATKIT_THROTTLE_ADDRESS": "",  # every request comes from one address here
        "DJANGO_LOG_LEVEL": "WARNING",
        "OPENAI_API_KEY": "sk-bench-key-0123456789abcdef",
        "OPENAI_WORKFLOW_ID": "wf_bench",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{emulator_port}/v1",
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True
    )
    emulator = subprocess.Popen(
        [sys.executable, "manage.py", "chatkit_emulator", "--port", str(emulator_port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "broker.wsgi", "--bind", f"127.0.0.1:{web_port}",
         "--access-logfile", "/dev/null"],
        cwd=ROOT, env=env, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    load_before = os.getloadavg()[0]
    try:
        wait_until_up(f"http://127.0.0.1:{web_port}/healthz")
        wait_until_up(f"http://127.0.0.1:{emulator_port}/_emulator/stats")
        result = asyncio.run(
            drive(
                f"http://127.0.0.1:{web_port}/api/chatkit/session/",
                args.requests,
                args.concurrency,
                args.max_seconds,
                # The emulator runs under a `python manage.py` child of this Popen.
                emulator.pid,
                body=b"{}",
                headers={"Content-Type": "application/json"},
            )
        )
    finally:
        for process in (web, emulator):
            process.send_signal(signal.SIGTERM)
        for process in (web, emulator):
            process.wait(timeout=30)

    ordered = sorted(result["latencies"])
    done, errors = result["issued"], sum(result["errors"].values())
    print(f"machine:      {os.cpu_count()} CPUs, load average before {load_before:.2f}")
    print(f"requests:     {done} over {args.concurrency} connections, errors {errors}")
    print(f"throughput:   {done / result['elapsed']:.0f} sessions/s")
    if ordered:
        p50, p95, p99 = (percentile(ordered, q) for q in (0.50, 0.95, 0.99))
        print(f"latency (ms): p50 {p50:.1f}, p95 {p95:.1f}, p99 {p99:.1f}")
    if result["server_cpu"]:
        share = result["server_cpu"] / result["elapsed"]
        print(f"emulator:     {share:.0%} of one core busy during the run")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
