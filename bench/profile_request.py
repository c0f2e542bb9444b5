"""Where one request's CPU goes: py-spy on the broker, one request at a time (issue 7).

Starts the emulator (0 ms; --latency-ms to change it) and the broker exactly as
bench/compare.py runs it ("ours": its own gunicorn.conf.py, PostgreSQL, Redis, throttles off
unless --throttled; --naive for the guide's view), ours with one worker (--workers to change
it). wrk drives one connection (--connections to change it), so there is never a queue; py-spy
samples the server's processes with --gil (only a thread holding the GIL counts: Python's CPU,
not its waiting), and the samples are put into buckets by the first frame of ours they pass
through.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/3 \\
        .venv/bin/python bench/profile_request.py [--seconds 20] [--throttled | --naive] \\
            [--latency-ms 300] [--raw out.txt]

Needs wrk on PATH (Debian: apt-get install -y wrk) and py-spy (in requirements/dev.txt), which
needs ptrace rights (root, or kernel.yama.ptrace_scope=0).
"""

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alert_latency import free_port, recreate_database, wait_until_up
from compare import (
    BENCH_DB,
    PATHS,
    POST_LUA,
    migrate,
    parse_wrk,
    server_command,
    server_env,
    start,
    start_emulator,
    stop,
)

# First match wins, looking from the outermost frame in: (bucket, file fragment, function).
BUCKETS = (
    ("throttle (Redis)", "sessions_api/throttle.py", ""),
    ("upstream call (requests)", "sessions_api/client.py", ""),
    ("audit write (database)", "audit/services.py", "session_attempt_record"),
    ("audit write (database)", "audit/writer.py", ""),  # a group-commit leader
    ("caller identity, cookie", "sessions_api/identity.py", ""),
    ("input and output serializers", "rest_framework/serializers.py", ""),
    ("response rendering", "rest_framework/renderers.py", ""),
    ("Django middleware", "django/contrib/", ""),
    ("gunicorn (HTTP parsing, access log)", "gunicorn/", "handle"),
)


def bucket_of(stack: str) -> str:
    frames = stack.split(";")
    for name, where, function in BUCKETS:
        for frame in frames:
            if where in frame and (not function or frame.startswith(f"{function} ")):
                return name
    return "Django, DRF, gunicorn: the rest"


def summarise(raw: str) -> list[tuple[str, float]]:
    counts: collections.Counter = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[bucket_of(stack)] += int(count)
    total = sum(counts.values()) or 1
    return [(name, 100 * count / total) for name, count in counts.most_common()]


def py_spy() -> str:
    local = Path(sys.executable).with_name("py-spy")
    found = str(local) if local.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy is needed: .venv/bin/pip install py-spy")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--throttled", action="store_true", help="throttle on (refuses nothing)")
    parser.add_argument(
        "--naive", action="store_true", help="profile the naive view instead (its four workers)"
    )
    parser.add_argument(
        "--connections", type=int, default=1, help="wrk connections (1: no queue, no contention)"
    )
    parser.add_argument(
        "--nonblocking",
        action="store_true",
        help="sample without pausing the worker: needed with many connections under threads "
        "(GUNICORN_WORKER_CLASS=gthread), whose 128 paused threads would slow it down, but "
        "stacks come out partly truncated; gevent's worker has one thread",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="ours' worker processes; with many connections, as many as compare.py runs "
        "(gunicorn.conf.py: one per core, at least two; the naive view always has its four)",
    )
    parser.add_argument("--latency-ms", type=int, default=0, help="the upstream's latency")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's collapsed stacks here")
    options = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/3")
    if not database_url.startswith("postgres"):
        raise SystemExit("Set DATABASE_URL to the local PostgreSQL server; see the docstring.")
    variant = "naive" if options.naive else "ours-throttled" if options.throttled else "ours"
    database = recreate_database(database_url, BENCH_DB)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as scratch_name:
        scratch = Path(scratch_name)
        # The broker's settings even for --naive: they migrate the database and run the emulator.
        env = server_env("ours", 0, "http://127.0.0.1:0/v1", database, redis_url, scratch)
        migrate(env)
        upstream, upstream_url = start_emulator(env, scratch, options.latency_ms)
        port = free_port()
        env = server_env(variant, port, upstream_url, database, redis_url, scratch)
        env["WEB_CONCURRENCY"] = str(options.workers)
        command, cwd = server_command(variant, port)
        server = start(command, cwd=cwd, env=env, log=scratch / "server.log")
        try:
            url = f"http://127.0.0.1:{port}{PATHS[variant]}"
            wait_until_up(url)
            _wrk(url, 3, options.connections)  # warm-up
            raw = scratch / "stacks.txt"
            spy = subprocess.Popen(
                [py_spy(), "record", "--gil", *(["--nonblocking"] if options.nonblocking else []),
                 "--format", "raw", "--rate", "250",
                 "--duration", str(options.seconds), "--pid", str(server.pid), "--subprocesses",
                 "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1)
            load = parse_wrk(_wrk(url, options.seconds - 2, options.connections))
            spy.wait(timeout=60)
            text = raw.read_text()
        finally:
            stop(server)
            stop(upstream)
    if options.raw:
        options.raw.write_text(text)
    print(f"{variant}: {load['rate']:.0f} req/s at {options.connections} connection(s), "
          f"{options.latency_ms} ms upstream, p50 {load['p50_ms']:.2f} ms")  # fmt: skip
    for name, share in summarise(text):
        print(f"  {share:5.1f} %  {name}")
    return 0


def _wrk(url: str, seconds: int, connections: int) -> str:
    # One thread: compare.py's wrk() always uses two, which needs two connections at least.
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(POST_LUA),
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


if __name__ == "__main__":
    sys.exit(main())
