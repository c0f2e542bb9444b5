"""Where a request's machine CPU goes: user and kernel time, and context switches (issue 7).

compare.py gives one CPU figure per request. This splits it, for one server at one point: the
server tree's user and kernel (sys) CPU per request, its voluntary and involuntary context
switches per request (summed over every thread, from /proc/PID/task/*/status), and the same for
PostgreSQL and Redis. Started as compare.py starts them (emulator at --latency-ms, wrk with
bench/post.lua, a 5 s warm-up, then a timed run), with KEY=VALUE arguments added to the
server's environment, e.g. WEB_CONCURRENCY=2 GUNICORN_THREADS=128 to try another shape:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/3 \\
        .venv/bin/python bench/cpu_split.py ours --latency-ms 0 --connections 64 [KEY=VALUE ...]

With --gc, the server's processes also record each pass of Python's cycle collector
(bench/gc_probe): how many per generation in the timed run, their CPU, the longest, and how
many objects they freed, per request. A long pass of the oldest generation pauses every request
its worker holds.

Run it for naive and ours in turn, more than once: these machines are noisy.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from alert_latency import free_port, recreate_database, wait_until_up
from compare import (
    BENCH_DB,
    PATHS,
    WRK_TIMEOUT,
    migrate,
    parse_wrk,
    process_table,
    server_command,
    server_env,
    service_roots,
    start,
    start_emulator,
    stop,
    tree_pids,
    wrk,
)

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def reading(roots: list[int]) -> list[int]:
    """user ticks, sys ticks, voluntary and involuntary switches of the trees under roots."""
    table = process_table()
    totals = [0, 0, 0, 0]
    for pid in (pid for root in roots for pid in tree_pids(table, root)):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            # utime, stime, then the same for reaped children (cutime, cstime).
            totals[0] += int(fields[11]) + int(fields[13])
            totals[1] += int(fields[12]) + int(fields[14])
            for task in os.listdir(f"/proc/{pid}/task"):
                for line in Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines():
                    name, _, value = line.partition(":")
                    if name == "voluntary_ctxt_switches":
                        totals[2] += int(value)
                    elif name == "nonvoluntary_ctxt_switches":
                        totals[3] += int(value)
        except OSError:  # gone meanwhile
            continue
    return totals


def gc_passes(folder: Path, start: float, end: float) -> dict[int, list[float]]:
    """Per generation: passes, CPU seconds, longest pass, objects freed, within [start, end]."""
    totals = {generation: [0, 0.0, 0.0, 0] for generation in range(3)}
    for path in folder.glob("*.gc"):
        for line in path.read_text().splitlines():
            at, generation, cpu, collected = line.split()
            if start <= float(at) <= end:
                total = totals[int(generation)]
                total[0] += 1
                total[1] += float(cpu)
                total[2] = max(total[2], float(cpu))
                total[3] += int(collected)
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=sorted(PATHS))
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--gc", action="store_true", help="record the cycle collector's passes")
    parser.add_argument("env", nargs="*", help="KEY=VALUE added to the server's environment")
    options = parser.parse_intermixed_args()  # KEY=VALUE may follow the options
    extra = dict(item.split("=", 1) for item in options.env)
    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/3")
    if not database_url.startswith("postgres"):
        raise SystemExit("Set DATABASE_URL to the local PostgreSQL server; see the docstring.")
    database = recreate_database(database_url, BENCH_DB)
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as scratch_name:
        scratch = Path(scratch_name)
        env = server_env("ours", 0, "http://127.0.0.1:0/v1", database, redis_url, scratch)
        migrate(env)
        upstream, upstream_url = start_emulator(env, scratch, options.latency_ms)
        port = free_port()
        env = server_env(options.variant, port, upstream_url, database, redis_url, scratch)
        command, cwd = server_command(options.variant, port)
        if options.gc:
            (scratch / "gc").mkdir()
            probe = str(Path(__file__).resolve().parent / "gc_probe")
            extra = {"PYTHONPATH": probe, "GC_PROBE_DIR": str(scratch / "gc"), **extra}
        server = start(command, cwd=cwd, env={**env, **extra}, log=scratch / "server.log")
        try:
            url = f"http://127.0.0.1:{port}{PATHS[options.variant]}"
            wait_until_up(url)
            wrk(url, options.connections, 5, WRK_TIMEOUT)  # warm-up
            services = service_roots(process_table())
            before, started = (reading([server.pid]), reading(services)), time.monotonic()
            load = parse_wrk(wrk(url, options.connections, options.seconds, WRK_TIMEOUT))
            after, ended = (reading([server.pid]), reading(services)), time.monotonic()
        finally:
            stop(server)
            stop(upstream)
        passes = gc_passes(scratch / "gc", started, ended) if options.gc else None
    n = max(load["requests"], 1)
    (user, kernel, voluntary, involuntary), (s_user, s_kernel, s_vol, s_invol) = (
        [(a - b) for a, b in zip(later, earlier, strict=True)]
        for later, earlier in zip(after, before, strict=True)
    )
    print(
        f"{options.variant} {' '.join(options.env)} at {options.latency_ms} ms x "
        f"{options.connections}: {load['rate']:.0f} req/s, p50 {load['p50_ms']:.0f} ms, "
        f"p99 {load['p99_ms']:.0f} ms, errors {load['errors']}\n"
        f"  server: user {user * TICK_MS / n:.2f} + sys {kernel * TICK_MS / n:.2f} ms/req; "
        f"context switches {voluntary / n:.1f} voluntary, {involuntary / n:.1f} involuntary\n"
        f"  PostgreSQL + Redis: user {s_user * TICK_MS / n:.2f} + sys "
        f"{s_kernel * TICK_MS / n:.2f} ms/req; switches {s_vol / n:.1f} + {s_invol / n:.1f}"
    )
    if passes is not None:
        print(
            "  cycle collector: "
            + "; ".join(
                f"generation {generation} {count} passes, {cpu * 1000 / n:.3f} ms/req, "
                f"longest {longest * 1000:.1f} ms, {freed / n:.1f} objects freed/req"
                for generation, (count, cpu, longest, freed) in passes.items()
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
