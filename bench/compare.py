"""Side by side, in one run: the integration guide's naive view against the broker (issue 7).

Both servers answer anonymous `POST {}` session requests, in turn, on this machine, against the
same upstream (the project's ChatKit emulator, with `--latency-ms` as the point's upstream
latency), under the same load (Debian's wrk with bench/post.lua):

  naive           bench/naive/: the guide's view as written (a bare requests.post per call, no
                  timeout, no pooling, no audit, no throttle) under gunicorn gthread 4 × 32.
  ours            the broker with its own gunicorn.conf.py on PostgreSQL and Redis, throttles
                  off (CHATKIT_THROTTLE_USER=, _ANON=, _ADDRESS=, _ANON_BUDGET=).
  ours-throttled  the same with the throttle on at a rate that refuses nothing
                  (1000000/min); only with --variants.

Each of --repeats repeats runs every variant at every point (upstream latency × connections),
the variants alternating (ABBA order across repeats, because the machine is noisy); a ratio
between two points is taken within a repeat too. Each run is a warm-up, then a timed wrk run.
Reported per point: requests/s, p50 and p99 latency, errors (non-2xx answers plus socket
errors), and the CPU time per request of the server's process tree plus PostgreSQL and Redis,
read from /proc before and after the timed run: wrk and the upstream are excluded (the
upstream's own CPU is shown apart, to tell whether it was the limit). Also reported: the
largest peak RSS (VmHWM) of the server's processes, read after each run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/3 \\
        .venv/bin/python bench/compare.py [--repeats 3] [--duration 20] [--points 0x64,300x256]

Two options change the conditions of the whole run (the table is printed as without them, with
a line saying which were in force):

  --tls           the upstream speaks HTTPS: a trustme CA and a certificate for 127.0.0.1 are
                  made in the scratch directory, the emulator serves with them, and both servers
                  reach it at https://127.0.0.1:PORT/v1 and trust the CA through
                  REQUESTS_CA_BUNDLE (which requests honours for a bare requests.post and for a
                  Session alike). That bundle is certifi's (requests' default) plus the CA, so
                  each new connection costs what it would against api.openai.com.
  --audit-rows N  before measuring, N rows are bulk-loaded into audit_sessionattempt with
                  bench/aggregate.py's generate_series INSERT (about 90% successes, about 50,000
                  user refs, created_at over the last 7 days growing with the id), then VACUUM
                  ANALYZE; the load time is printed. Only that table is filled: nothing is
                  aggregated and no minutes are marked pending.

Needs wrk on PATH (Debian: apt-get install -y wrk). Loopback only; bounded in count and time;
drops and recreates the database `broker_bench_compare`; stops every process it started, also
on Ctrl-C or failure.
"""

import argparse
import os
import platform
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from aggregate import LOAD_SQL
from alert_latency import free_port, recreate_database, wait_until_up

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
POST_LUA = BENCH / "post.lua"
BENCH_DB = "broker_bench_compare"
# Seconds before wrk counts a request as a timeout error; wrk's own 2 s would drop every slower
# answer from the histogram and hide the queueing at 300 ms.
WRK_TIMEOUT = 10
API_KEY = "sk-bench-key-0123456789abcdef"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
DEFAULT_POINTS = "0x64,0x256,300x64,300x256"

# Where each server takes the session request: the naive one at the guide's path.
PATHS = {
    "naive": "/api/api/chatkit/session/",
    "ours": "/api/chatkit/session/",
    "ours-throttled": "/api/chatkit/session/",
}


@dataclass
class Run:
    requests: int
    seconds: float
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms_per_request: float  # server tree + PostgreSQL + Redis
    services_ms_per_request: float  # PostgreSQL + Redis alone (included in the above)
    upstream_ms_per_request: float
    peak_rss_mb: float  # the largest peak RSS (VmHWM) of the server's processes


# --- processes -----------------------------------------------------------------------------


def start(command: list[str], *, cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    """Starts a process in its own process group, so stop() reaches all its children."""
    with open(log, "ab") as log_file:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,  # access logs and the naive view's print()
            stderr=log_file,
            start_new_session=True,
        )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def terminate_on_sigterm(signum, frame) -> None:
    # Lets `kill <pid>` of this script run the finally blocks, like Ctrl-C does.
    raise KeyboardInterrupt


# --- CPU time from /proc -------------------------------------------------------------------


def process_table() -> dict[int, tuple[int, str, int]]:
    """pid -> (parent pid, command name, CPU ticks of itself plus its reaped children)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[1] is ppid; [11..14] are utime, stime, cutime, cstime.
        ticks = sum(int(value) for value in fields[11:15])
        table[int(entry)] = (int(fields[1]), name, ticks)
    return table


def tree_pids(table: dict, root: int) -> list[int]:
    """A process and all its live descendants."""
    if root not in table:
        return []
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    pids, pending = [], [root]
    while pending:
        pid = pending.pop()
        pids.append(pid)
        pending.extend(children.get(pid, []))
    return pids


def tree_ticks(table: dict, root: int) -> int:
    """CPU ticks of a process tree, including children that exited and were reaped.

    Summing self + reaped children over the live tree makes the difference of two readings
    exact even when processes come and go in between (gunicorn's max_requests restarts
    workers; PostgreSQL starts a backend per connection): an exited child's time moves into
    its parent's reaped-children counters.
    """
    return sum(table[pid][2] for pid in tree_pids(table, root))


def peak_rss_mb(root: int) -> float:
    """The largest peak resident set (VmHWM) among a process and its children, in MB."""
    table = process_table()
    pids = [pid for pid, (parent, _, _) in table.items() if parent == root] + [root]
    peaks = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:  # gone meanwhile
            continue
        peaks += [int(line.split()[1]) / 1024 for line in status.splitlines()
                  if line.startswith("VmHWM:")]  # fmt: skip
    return max(peaks, default=0.0)


def service_roots(table: dict) -> list[int]:
    """The PostgreSQL postmaster(s) and Redis server(s) on this machine."""
    roots = []
    for pid, (parent, name, _) in table.items():
        parent_name = table.get(parent, (0, "", 0))[1]
        if name == "postgres" and parent_name != "postgres":
            roots.append(pid)
        elif name == "redis-server":
            roots.append(pid)
    return roots


def cpu_reading(server: int, upstream: int) -> tuple[int, int, int]:
    """CPU ticks so far of the server tree, of PostgreSQL + Redis, and of the upstream tree."""
    table = process_table()
    services = sum(tree_ticks(table, root) for root in service_roots(table))
    return tree_ticks(table, server), services, tree_ticks(table, upstream)


# --- wrk -----------------------------------------------------------------------------------

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def wrk(url: str, connections: int, seconds: int, timeout: int, script: Path = POST_LUA) -> str:
    command = [
        "wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
        "--timeout", f"{timeout}s", "-s", str(script), url,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=seconds + timeout + 30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise SystemExit(f"wrk failed:\n{output}")
    return output


def parse_wrk(output: str) -> dict:
    def latency(percent: str) -> float:
        match = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
        return float(match[1]) * UNIT_MS[match[2]] if match else float("nan")

    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "requests": int(done[1]),
        "seconds": float(done[2]) * UNIT_MS[done[3]] / 1000,
        "rate": float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1]),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "errors": (sum(int(n) for n in sockets.groups()) if sockets else 0)
        + (int(non_2xx[1]) if non_2xx else 0),
    }


# --- the servers ---------------------------------------------------------------------------


def server_command(variant: str, port: int) -> tuple[list[str], Path]:
    if variant == "naive":
        return [
            sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--workers", "4",
            "--threads", "32", "--bind", f"127.0.0.1:{port}", "naive.wsgi:application",
        ], BENCH  # fmt: skip
    # The product's own configuration; GUNICORN_BIND (in the environment) picks the port.
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
    return [*command, "broker.wsgi:application"], ROOT


def server_env(
    variant: str, port: int, upstream: str, database_url: str, redis_url: str, scratch: Path
) -> dict:
    """`upstream` is the emulator's base URL, http(s)://127.0.0.1:PORT/v1."""
    # Nothing of the caller's Django, database or OpenAI settings leaks into either server.
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "OPENAI_", "CHATKIT_", "CELERY_", "GUNICORN_", "WEB_"))
        and key not in ("DATABASE_URL", "REDIS_URL")
    }
    if upstream.startswith("https:"):
        base["REQUESTS_CA_BUNDLE"] = str(scratch / CA_FILE)
    if variant == "naive":
        return {
            **base,
            "DJANGO_SETTINGS_MODULE": "naive.settings",
            "OPENAI_API_KEY": API_KEY,
            "NAIVE_UPSTREAM_URL": f"{upstream}/chatkit/sessions",
            "NAIVE_SQLITE_PATH": str(scratch / "naive.sqlite3"),
        }
    throttle = "1000000/min" if variant == "ours-throttled" else ""
    return {
        **base,
        "DJANGO_SETTINGS_MODULE": "broker.settings",
        "DJANGO_SECRET_KEY": "bench-only-not-a-secret-" + "x" * 30,
        "CHATKIT_USER_ID_SECRET": "bench-only-user-id-secret",
        "DJANGO_SSL_REDIRECT": "false",  # plain http on loopback
        "DJANGO_LOG_LEVEL": "WARNING",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_WORKFLOW_ID": "wf_bench",
        "OPENAI_BASE_URL": upstream,
        "CHATKIT_THROTTLE_USER": throttle,
        "CHATKIT_THROTTLE_ANON": throttle,
        "CHATKIT_THROTTLE_ADDRESS": throttle,  # wrk sends no cookie back: counted per address
        "CHATKIT_THROTTLE_ANON_BUDGET": "",  # off by default
        "GUNICORN_BIND": f"127.0.0.1:{port}",
    }


def migrate(env: dict) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"],
        cwd=ROOT, env=env, check=True, timeout=300,
    )  # fmt: skip


def start_emulator(
    env: dict, scratch: Path, latency_ms: int, tls_options: list[str] | tuple = ()
) -> tuple[subprocess.Popen, str]:
    """The emulator on a free port, answering; returns it and its base URL (…/v1)."""
    port = free_port()
    scheme = "https" if tls_options else "http"
    upstream = start(
        [sys.executable, "manage.py", "chatkit_emulator", "--port", str(port),
         "--latency-ms", str(latency_ms), *tls_options],
        cwd=ROOT, env=env, log=scratch / "upstream.log",
    )  # fmt: skip
    try:
        wait_until_up(f"{scheme}://127.0.0.1:{port}/_emulator/stats")
    except BaseException:
        stop(upstream)
        raise
    return upstream, f"{scheme}://127.0.0.1:{port}/v1"


def measure_server(variant, connections_list, upstream, upstream_url, options, urls, scratch):
    """Starts one server, runs warm-up + timed wrk per connection count, stops it."""
    port = free_port()
    command, cwd = server_command(variant, port)
    env = server_env(variant, port, upstream_url, urls["database"], urls["redis"], scratch)
    server = start(command, cwd=cwd, env=env, log=scratch / f"{variant}.log")
    url = f"http://127.0.0.1:{port}{PATHS[variant]}"
    runs = {}
    try:
        wait_until_up(url)  # GET answers 405 on both, which counts as up
        for connections in connections_list:
            wrk(url, connections, options.warmup, options.wrk_timeout)
            before = cpu_reading(server.pid, upstream.pid)
            result = parse_wrk(wrk(url, connections, options.duration, options.wrk_timeout))
            after = cpu_reading(server.pid, upstream.pid)
            served_ms = [
                (a - b) / CLOCK_TICKS * 1000 / max(result["requests"], 1)
                for a, b in zip(after, before, strict=True)
            ]
            runs[connections] = Run(
                **result,
                cpu_ms_per_request=served_ms[0] + served_ms[1],
                services_ms_per_request=served_ms[1],
                upstream_ms_per_request=served_ms[2],
                peak_rss_mb=peak_rss_mb(server.pid),
            )
            print(f"    {variant:<15} {connections:>4} conns  {describe(runs[connections])}")
            if server.poll() is not None:
                raise SystemExit(f"{variant} exited; see {scratch / (variant + '.log')}")
    finally:
        stop(server)
    return runs


def describe(run: Run) -> str:
    return (
        f"{run.rate:8.1f} req/s  p50 {run.p50_ms:7.1f} ms  p99 {run.p99_ms:7.1f} ms  "
        f"errors {run.errors:>5}  CPU {run.cpu_ms_per_request:5.2f} ms/req "
        f"(PG+Redis {run.services_ms_per_request:4.2f}, "
        f"upstream {run.upstream_ms_per_request:4.2f})  peak RSS {run.peak_rss_mb:.0f} MB"
    )


# --- conditions: --tls and --audit-rows -----------------------------------------------------

CA_FILE = "ca.pem"


def make_certificates(scratch: Path) -> list[str]:
    """A trustme CA and a certificate for 127.0.0.1 signed by it.

    scratch/ca.pem is certifi's bundle plus that CA: what requests verifies against by default
    (and loads again for every new connection, so the naive view pays for it on every call, as
    it would against api.openai.com), able to verify the emulator. Returns the emulator's TLS
    options. This process trusts the CA too (wait_until_up's urllib).
    """
    import certifi
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    (scratch / CA_FILE).write_bytes(Path(certifi.where()).read_bytes() + ca.cert_pem.bytes())
    for pem in cert.cert_chain_pems:
        pem.write_to_path(scratch / "cert.pem", append=True)
    cert.private_key_pem.write_to_path(scratch / "key.pem")
    context = ssl.create_default_context(cafile=scratch / CA_FILE)
    urllib.request.install_opener(
        urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
    )
    return ["--tls-cert", str(scratch / "cert.pem"), "--tls-key", str(scratch / "key.pem")]


def load_audit_rows(database_url: str, rows: int) -> str:
    """Fills audit_sessionattempt with `rows` rows over the last 7 days; says how long it took."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    params = {"start": now - timedelta(days=7), "span": timedelta(days=7), "rows": rows}
    started = time.perf_counter()
    # A client-side cursor, as Django's: the SQL is written for its parameter binding.
    with psycopg.connect(
        database_url, autocommit=True, cursor_factory=psycopg.ClientCursor
    ) as conn:
        conn.execute("SELECT setseed(0.42)")
        conn.execute(LOAD_SQL, params)
        loaded = time.perf_counter()
        conn.execute("VACUUM ANALYZE audit_sessionattempt")
    return (
        f"audit_sessionattempt: {rows:,} rows loaded before the first run in "
        f"{loaded - started:.1f} s, VACUUM ANALYZE {time.perf_counter() - loaded:.1f} s"
    )


# --- report --------------------------------------------------------------------------------


def spread(values: list[float], digits: int) -> str:
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def report(results: dict, points: list[tuple[int, int]], variants: list[str]) -> str:
    lines = [
        "| upstream | conns | server | req/s | p50 ms | p99 ms | errors | CPU ms/req |"
        " of which PG+Redis | upstream CPU ms/req (excluded) | peak RSS per process MB |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for latency, connections in points:
        for variant in variants:
            runs = results[(variant, latency, connections)]
            lines.append(
                f"| {latency} ms | {connections} | {variant} "
                f"| {spread([r.rate for r in runs], 0)} "
                f"| {spread([r.p50_ms for r in runs], 0)} "
                f"| {spread([r.p99_ms for r in runs], 0)} "
                f"| {sum(r.errors for r in runs)} "
                f"| {spread([r.cpu_ms_per_request for r in runs], 2)} "
                f"| {spread([r.services_ms_per_request for r in runs], 2)} "
                f"| {spread([r.upstream_ms_per_request for r in runs], 2)} "
                f"| {spread([r.peak_rss_mb for r in runs], 0)} |"
            )
    # Repeat by repeat too: a repeat runs the servers back to back, so their ratio shares the
    # machine's state of the moment, and the spread of those ratios shows how far to trust the
    # ratio of medians on a noisy machine.
    lines += ["", "Ratio ours/naive: of the medians, then repeat by repeat, median (min–max):", ""]
    lines += [
        "| upstream | conns | variant | req/s | p99 | CPU/req"
        " | req/s by repeat (×) | CPU/req by repeat (×) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for latency, connections in points:
        naive = results[("naive", latency, connections)]
        for variant in variants:
            if variant == "naive":
                continue
            ours = results[(variant, latency, connections)]

            def ratio(field: str, ours=ours, naive=naive) -> str:
                a = statistics.median(getattr(r, field) for r in ours)
                b = statistics.median(getattr(r, field) for r in naive)
                return f"{a / b:.2f}×" if b else "–"

            def paired(field: str, ours=ours, naive=naive) -> str:
                pairs = zip(ours, naive, strict=True)
                ratios = [
                    getattr(a, field) / getattr(b, field) for a, b in pairs if getattr(b, field)
                ]
                return spread(ratios, 2) if ratios else "–"

            lines.append(
                f"| {latency} ms | {connections} | {variant} | {ratio('rate')} "
                f"| {ratio('p99_ms')} | {ratio('cpu_ms_per_request')} "
                f"| {paired('rate')} | {paired('cpu_ms_per_request')} |"
            )
    lines += against_own_zero_ms(results, points, variants)
    return "\n".join(lines)


def against_own_zero_ms(results: dict, points: list, variants: list[str]) -> list[str]:
    """Each slow-upstream point's requests/s against what it could be (issue 7's target): the
    lesser of connections ÷ latency and the variant's own figure at the first 0 ms point, in
    the same repeat."""
    zero = next((point for point in points if point[0] == 0), None)
    slow = [point for point in points if point[0] > 0]
    if zero is None or not slow:
        return []
    lines = [
        "",
        f"Requests/s against min(connections ÷ latency, its own at 0 ms × {zero[1]}),"
        " repeat by repeat, median (min–max):",
        "",
        "| upstream | conns | variant | share of that |",
        "|---:|---:|---|---:|",
    ]
    for latency, connections in slow:
        ceiling = connections / (latency / 1000)
        for variant in variants:
            runs = zip(
                results[(variant, latency, connections)],
                results[(variant, *zero)],
                strict=True,
            )
            shares = [run.rate / min(ceiling, base.rate) for run, base in runs if base.rate]
            lines.append(
                f"| {latency} ms | {connections} | {variant} | "
                + (f"{spread([share * 100 for share in shares], 0)} %" if shares else "–")
                + " |"
            )
    return lines


def machine_facts() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
        "unknown CPU",
    )
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()
    import django
    import gunicorn

    return (
        f"{os.cpu_count()} CPUs ({model}); load average {os.getloadavg()[0]:.2f}; "
        f"Python {platform.python_version()}, Django {django.get_version()}, "
        f"gunicorn {gunicorn.__version__}, wrk {wrk_version[1] if len(wrk_version) > 1 else '?'}"
    )


# --- main ----------------------------------------------------------------------------------


def parse_points(text: str) -> list[tuple[int, int]]:
    points = []
    for item in text.split(","):
        latency, _, connections = item.strip().partition("x")
        points.append((int(latency), int(connections)))
    return points


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per point and variant")
    parser.add_argument("--duration", type=int, default=20, help="seconds per timed wrk run")
    parser.add_argument("--warmup", type=int, default=5, help="seconds of wrk before each run")
    parser.add_argument(
        "--points", default=DEFAULT_POINTS, help="upstream ms x connections, comma-separated"
    )
    parser.add_argument(
        "--variants", default="naive,ours", help="naive, ours, ours-throttled; comma-separated"
    )
    parser.add_argument(
        "--wrk-timeout", type=int, default=WRK_TIMEOUT,
        help="seconds before wrk counts a request as a timeout error (wrk's default is 2)",
    )  # fmt: skip
    parser.add_argument(
        "--tls", action="store_true", help="the upstream over HTTPS, with a local trustme CA"
    )
    parser.add_argument("--audit-rows", type=int, default=0, help="audit rows to load first")
    options = parser.parse_args()
    points = parse_points(options.points)
    variants = options.variants.split(",")
    if unknown := set(variants) - set(PATHS):
        raise SystemExit(f"unknown variants: {', '.join(sorted(unknown))}")
    if "naive" not in variants:
        raise SystemExit("the naive variant is the baseline every ratio is against")
    if not (1 <= options.repeats <= 20 and 1 <= options.duration <= 600):
        raise SystemExit("--repeats must be 1..20 and --duration 1..600")
    if not 0 <= options.audit_rows <= 100_000_000:
        raise SystemExit("--audit-rows must be 0..100,000,000")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed on PATH: on Debian, apt-get install -y wrk")

    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/3")
    for name, url in (("DATABASE_URL", database_url), ("REDIS_URL", redis_url)):
        if urlsplit(url).hostname not in LOOPBACK:
            raise SystemExit(f"{name} must point at this machine (loopback); see the docstring")
    if not database_url.startswith("postgres"):
        raise SystemExit("Set DATABASE_URL to the local PostgreSQL server; see the docstring.")

    signal.signal(signal.SIGTERM, terminate_on_sigterm)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up at once, even in a file
    print(machine_facts())
    urls = {"database": recreate_database(database_url, BENCH_DB), "redis": redis_url}
    results: dict[tuple, list[Run]] = {}
    conditions = []  # what --tls and --audit-rows changed, said above the table
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as scratch_name:
        scratch = Path(scratch_name)
        migrate_env = server_env(
            "ours", 0, "http://127.0.0.1:0/v1", urls["database"], redis_url, scratch
        )
        migrate(migrate_env)
        tls_options = []
        if options.tls:
            tls_options = make_certificates(scratch)
            conditions.append("Upstream over TLS (HTTPS, trustme CA through REQUESTS_CA_BUNDLE)")
        if options.audit_rows:
            conditions.append(load_audit_rows(urls["database"], options.audit_rows))
            print(conditions[-1])
        latencies = sorted({latency for latency, _ in points})
        upstreams = {}  # one emulator per latency, for the whole run
        try:
            for latency in latencies:
                upstreams[latency] = start_emulator(migrate_env, scratch, latency, tls_options)
            # Each repeat visits every point, so that a ratio between two points (300 ms × 256
            # against our 0 ms figure) can be taken within one repeat, minutes apart rather
            # than the length of the run: these machines drift by a fifth within the hour.
            for repeat in range(options.repeats):
                # ABBA: the variant that goes first alternates, so a drift in the machine's
                # load does not always favour the same one.
                order = variants if repeat % 2 == 0 else variants[::-1]
                for latency in latencies:
                    connections_list = [c for lat, c in points if lat == latency]
                    upstream, upstream_url = upstreams[latency]
                    print(f"upstream {latency} ms, repeat {repeat + 1}/{options.repeats}")
                    for variant in order:
                        runs = measure_server(
                            variant, connections_list, upstream, upstream_url, options, urls,
                            scratch,
                        )  # fmt: skip
                        for connections, run in runs.items():
                            results.setdefault((variant, latency, connections), []).append(run)
        finally:
            for upstream, _ in upstreams.values():
                stop(upstream)
        finished = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"\nFinished {finished}; {options.repeats} runs of {options.duration} s per cell, "
          "median (min–max); errors summed over the runs.\n")  # fmt: skip
    for condition in conditions:
        print(f"{condition}.\n")
    print(report(results, points, variants))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("interrupted; every process started here was stopped")
