"""Load with faults (issue 8): every request keeps its audit row, and no 5xx but the upstream's.

Starts the broker as production runs it (gunicorn with gunicorn.conf.py, PostgreSQL, a Redis
server of its own, the throttle on at a rate that refuses nothing), and the emulator at a
realistic latency with a share of its answers failing (HTTP 500, which the broker retries).
Sends --requests POSTs over --concurrency connections, waits for every answer, then checks:

- audit rows = answers, exactly (each request one row; none is throttled here);
- every answer is 200, or 502 `upstream_unavailable` (all of a call's attempts failed): any
  other 5xx, or a request without an answer, is a failure.

--kill-redis-at F kills the Redis server (SIGKILL) once that share of the answers is in: the
rest must still be served and audited.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/load_faults.py [--requests 10000] [--concurrency 100] \\
            [--latency-ms 300] [--fail-rate 0.05] [--kill-redis-at 0.5]

Exits 1 when a check fails. Needs redis-server on PATH (Debian's redis-server package).
"""

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psycopg
from alert_latency import free_port, recreate_database, wait_until_up
from compare import ROOT, server_command, server_env, start, stop
from emulator_throughput import percentile

BENCH_DB = "broker_bench_faults"
EXPECTED = {(200, None), (502, "upstream_unavailable")}


async def drive(url: str, total: int, concurrency: int, on_half) -> tuple[dict, list, float]:
    """POST `total` times over `concurrency` connections; (status, code) counts and latencies.

    `on_half(answers)` is called after each answer, so the caller can act at a given count.
    """
    answers: collections.Counter = collections.Counter()
    latencies: list[float] = []
    pending = iter(range(total))

    async def worker(session: aiohttp.ClientSession) -> None:
        for _ in pending:
            started = time.perf_counter()
            try:
                async with session.post(url, json={}) as response:
                    body = await response.json(content_type=None)
                    code = (body.get("error") or {}).get("code") if response.status != 200 else None
                    answers[(response.status, code)] += 1
            except (TimeoutError, aiohttp.ClientError) as exc:
                answers[("no answer", type(exc).__name__)] += 1
            latencies.append(time.perf_counter() - started)
            on_half(sum(answers.values()))

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return answers, latencies, time.monotonic() - started


def audit_rows(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as connection:
        return connection.execute("SELECT COUNT(*) FROM audit_sessionattempt").fetchone()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--latency-ms", type=int, default=300)
    parser.add_argument("--fail-rate", type=float, default=0.05)
    parser.add_argument("--kill-redis-at", type=float, help="share of answers, e.g. 0.5")
    options = parser.parse_args()
    admin_url = os.environ.get("DATABASE_URL", "")
    if not admin_url.startswith("postgres"):
        raise SystemExit("Set DATABASE_URL to a PostgreSQL server; see the docstring.")
    redis_binary = shutil.which("redis-server")
    if redis_binary is None:
        raise SystemExit("redis-server is needed (Debian: apt-get install -y redis-server)")

    database = recreate_database(admin_url, BENCH_DB)
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as scratch_name:
        scratch = Path(scratch_name)
        redis_port, upstream_port, port = free_port(), free_port(), free_port()
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
        env = server_env("ours", port, upstream_url, database, redis_url, scratch)
        env["CELERY_BROKER_URL"] = redis_url
        for scope in ("USER", "ANON", "ADDRESS"):
            env[f"CHATKIT_THROTTLE_{scope}"] = "1000000/min"  # on, refusing nothing
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env,
                       check=True, timeout=300)  # fmt: skip
        redis = start(
            [redis_binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(scratch)],
            cwd=scratch, env=env, log=scratch / "redis.log",
        )  # fmt: skip
        upstream = start(
            [sys.executable, "manage.py", "chatkit_emulator", "--port", str(upstream_port),
             "--latency-ms", str(options.latency_ms), "--fail-rate", str(options.fail_rate)],
            cwd=ROOT, env=env, log=scratch / "upstream.log",
        )  # fmt: skip
        command, cwd = server_command("ours", port)
        server = start(command, cwd=cwd, env=env, log=scratch / "server.log")
        killed_after: list[int] = []

        def on_answer(answers: int) -> None:
            at = options.kill_redis_at
            if at is not None and not killed_after and answers >= at * options.requests:
                redis.kill()
                killed_after.append(answers)

        try:
            wait_until_up(f"{upstream_url.removesuffix('/v1')}/_emulator/stats")
            wait_until_up(f"http://127.0.0.1:{port}/readyz")
            answers, latencies, elapsed = asyncio.run(
                drive(f"http://127.0.0.1:{port}/api/chatkit/session/", options.requests,
                      options.concurrency, on_answer)
            )  # fmt: skip
            time.sleep(1)  # nothing is in flight any more; let the last commits land
            rows = audit_rows(database)
        finally:
            for process in (server, upstream, redis):
                stop(process)

    total = sum(answers.values())
    unexpected = {key: n for key, n in answers.items() if key not in EXPECTED}
    ordered = sorted(latencies)
    print(f"requests {total} over {options.concurrency} connections in {elapsed:.1f} s "
          f"({total / elapsed:.0f}/s); upstream {options.latency_ms} ms, "
          f"{options.fail_rate:.0%} of its answers HTTP 500")  # fmt: skip
    if killed_after:
        print(f"Redis killed after {killed_after[0]} answers")
    print("answers: " + ", ".join(f"{k[0]} {k[1] or ''}".strip() + f" × {n}"
                                  for k, n in sorted(answers.items(), key=str)))  # fmt: skip
    print(f"latency ms: p50 {percentile(ordered, 0.5):.0f}, p99 {percentile(ordered, 0.99):.0f}, "
          f"max {ordered[-1] * 1000:.0f}")  # fmt: skip
    print(f"audit rows {rows}: {'equal to' if rows == total else 'NOT equal to'} the answers")
    print(f"unexpected answers: {unexpected or 'none'}")
    return 0 if rows == total and not unexpected else 1


if __name__ == "__main__":
    sys.exit(main())
