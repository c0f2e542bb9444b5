"""What the metrics cost a session request (issue 10 §4): the updates one request makes.

A success counts one attempt and one latency observation; a failure that was retried also adds
retries. Timed in a process of its own for each mode: single-process (runserver, tests) and
multiprocess (gunicorn: PROMETHEUS_MULTIPROC_DIR, values in memory-mapped files). Prints the
median over repeats of the CPU time (not wall-clock time, which a busy shared machine inflates),
in microseconds per request.

    .venv/bin/python bench/metrics_cost.py [--repeats 7] [--number 20000]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CASES = {
    "success": "attempt_observe(outcome='success', status_code=200, workflow='wf_a', "
    "attempts=1, latency_ms=180)",
    "retried failure": "attempt_observe(outcome='upstream_error', status_code=500, "
    "workflow='wf_a', attempts=3, latency_ms=900)",
    "throttle refusal": "THROTTLE_REFUSALS.labels('browser').inc()",
}


def measure(repeats: int, number: int) -> None:
    from broker.metrics import THROTTLE_REFUSALS, attempt_observe  # noqa: F401 - used by stmt

    for name, statement in _CASES.items():
        times = timeit.repeat(
            statement, repeat=repeats, number=number, globals=locals(), timer=time.process_time
        )
        print(f"  {name:18} {statistics.median(times) / number * 1e6:6.2f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args.repeats, args.number)
        return
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "broker.settings", "DJANGO_DEBUG": "true"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [sys.executable, __file__, "--child", f"--repeats={args.repeats}",
               f"--number={args.number}"]  # fmt: skip
    print("single process:", flush=True)
    subprocess.run(command, env={**env, "PYTHONPATH": str(ROOT)}, check=True)
    with tempfile.TemporaryDirectory() as folder:
        print("multiprocess (gunicorn):", flush=True)
        env = {**env, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": folder}
        subprocess.run(command, env=env, check=True)


if __name__ == "__main__":
    main()
