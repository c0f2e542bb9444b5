"""How many session creations per second the ChatKit emulator answers, on loopback.

The emulator runs in its own process (emulator.server.run); this process drives it with an
asyncio aiohttp client over N keep-alive connections, sends a fixed number of valid create
requests (bounded in time), then prints requests/s, latency percentiles and errors.

    .venv/bin/python bench/emulator_throughput.py [--requests 20000] [--concurrency 64]

The load generator and the emulator share the machine's cores, so the figure is a lower bound
of what the emulator alone can answer. The emulator's own CPU time is reported too (Linux),
which gives its cost per request independent of the client.
"""

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

REPO_ROOT = Path(__file__).resolve().parents[1]
HEADERS = {
    "Authorization": "Bearer sk-bench-0123456789abcdefghij",
    "OpenAI-Beta": "chatkit_beta=v1",
    "Content-Type": "application/json",
}
BODY = b'{"workflow": {"id": "wf_bench"}, "user": "bench-user"}'
SERVER_CODE = (
    "from emulator.server import run\nrun(port=0, on_ready=lambda url: print(url, flush=True))\n"
)


def start_emulator() -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER_CODE], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    base_url = process.stdout.readline().strip()
    if not base_url.startswith("http://127.0.0.1:"):
        process.kill()
        raise SystemExit(f"The emulator did not start (said {base_url!r}).")
    return process, base_url


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, from /proc (None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(
    url: str,
    total: int,
    concurrency: int,
    seconds: float,
    pid: int,
    *,
    body: bytes = BODY,
    headers: dict = HEADERS,
) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal issued
        while issued < total and time.monotonic() < deadline:
            issued += 1
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors[str(response.status)] = errors.get(str(response.status), 0) + 1
                        continue
            except (TimeoutError, aiohttp.ClientError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Open every connection before the clock starts.
        warmup = [session.post(url, data=body, headers=headers) for _ in range(concurrency)]
        for response in await asyncio.gather(*warmup):
            await response.read()
            response.release()
        cpu_before = cpu_seconds(pid)
        client_cpu = time.process_time()
        deadline = time.monotonic() + seconds
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
        cpu_after = cpu_seconds(pid)
    server_cpu = cpu_after - cpu_before if cpu_before is not None and cpu_after else None
    return {
        "latencies": latencies,
        "errors": errors,
        "elapsed": elapsed,
        "issued": issued,
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
    }


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="create requests to send")
    parser.add_argument("--concurrency", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--max-seconds", type=float, default=120, help="stop sending after this")
    args = parser.parse_args()

    # Other work on the machine skews the figures; the load average says how much there was.
    load_before = os.getloadavg()[0]
    process, base_url = start_emulator()
    try:
        url = f"{base_url}/chatkit/sessions"
        result = asyncio.run(
            drive(url, args.requests, args.concurrency, args.max_seconds, process.pid)
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        process.stdout.close()

    ordered = sorted(result["latencies"])
    done = result["issued"]
    errors = sum(result["errors"].values())
    versions = f"python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}"
    print(f"emulator:     {base_url} (separate process; {versions})")
    print(f"machine:      {os.cpu_count()} CPUs, load average before {load_before:.2f}")
    print(f"requests:     {done} sent over {args.concurrency} connections, {len(ordered)} ok")
    print(f"errors:       {errors} {result['errors'] or ''}")
    print(f"elapsed:      {result['elapsed']:.2f} s")
    print(f"throughput:   {done / result['elapsed']:.0f} requests/s")
    if ordered:
        p50, p95, p99 = (percentile(ordered, q) for q in (0.50, 0.95, 0.99))
        print(
            f"latency (ms): p50 {p50:.2f}, p95 {p95:.2f}, p99 {p99:.2f}, "
            f"max {ordered[-1] * 1000:.2f}, mean {statistics.fmean(ordered) * 1000:.2f}"
        )
    busy = result["server_cpu"]
    if busy:
        print(
            f"emulator CPU: {busy:.2f} s, {busy / done * 1e6:.0f} µs per request "
            f"(~{done / busy:.0f} requests/s per fully used core)"
        )
    # Both far below the elapsed time means neither process had a whole core to itself.
    print(f"client CPU:   {result['client_cpu']:.2f} s (load generator, this process)")
    if done < args.requests:
        print(f"stopped early: --max-seconds {args.max_seconds} reached")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
