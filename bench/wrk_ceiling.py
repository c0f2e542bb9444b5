"""wrk straight at the emulator, with no server between: the most that any server in front of
it could show on this machine. Issue 7's 300 ms × 256 point is read against it.

    .venv/bin/python bench/wrk_ceiling.py [--latency-ms 300] [--connections 256] \\
        [--repeats 3] [--duration 15]

The emulator is started as compare.py starts it, and wrk sends it what the broker sends: a valid
create, with the key and the beta header (bench/create.lua). Each repeat is a 5 s warm-up, then
a timed run; each prints requests/s, p50, p99, errors, and the requests/s as a share of
connections ÷ latency. wrk and the emulator share the machine's cores, as in compare.py.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

from compare import BENCH, WRK_TIMEOUT, parse_wrk, server_env, start_emulator, stop, wrk

CREATE_LUA = BENCH / "create.lua"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=int, default=300)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=int, default=15, help="seconds per timed wrk run")
    options = parser.parse_args()
    bound = options.connections / (options.latency_ms / 1000) if options.latency_ms else None
    rates = []
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as scratch_name:
        scratch = Path(scratch_name)
        # The emulator runs under the broker's settings; it needs no database of its own.
        database = f"sqlite:///{scratch / 'unused.sqlite3'}"
        env = server_env("ours", 0, "http://127.0.0.1:0/v1", database, "", scratch)
        upstream, upstream_url = start_emulator(env, scratch, options.latency_ms)
        url = f"{upstream_url}/chatkit/sessions"
        try:
            for repeat in range(1, options.repeats + 1):
                wrk(url, options.connections, 5, WRK_TIMEOUT, CREATE_LUA)  # warm-up
                run = parse_wrk(
                    wrk(url, options.connections, options.duration, WRK_TIMEOUT, CREATE_LUA)
                )
                rates.append(run["rate"])
                share = f", {run['rate'] / bound:.0%} of {bound:.0f}" if bound else ""
                print(
                    f"repeat {repeat}: {run['rate']:.0f} req/s{share}, p50 {run['p50_ms']:.1f} ms,"
                    f" p99 {run['p99_ms']:.1f} ms, errors {run['errors']}",
                    flush=True,
                )
        finally:
            stop(upstream)
    median = statistics.median(rates)
    share = f" ({median / bound:.0%} of connections ÷ latency)" if bound else ""
    print(
        f"emulator at {options.latency_ms} ms × {options.connections}: median {median:.0f} "
        f"req/s{share}, {min(rates):.0f}–{max(rates):.0f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
