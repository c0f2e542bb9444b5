"""Mutation testing with mutmut, one module at a time, each against its own tests.

    make mutate                                 # every module in MODULES
    make mutate MODULE=sessions_api/client.py   # one (several: separate them with spaces)

Each module is its own `mutmut run` in a fresh mutants/ directory: mutmut mutates only that
module and learns which tests reach which function from that module's tests alone, so a score
says how well those tests pin the module down, and a test edited since an earlier run is never
judged on stale coverage data. The run is local: SQLite and fakeredis, whatever DATABASE_URL or
REDIS_URL say. Prints killed / total per module, with the survivors, and exits 1 when a module
scores below TARGET. The last module's mutants/ is left for `mutmut show NAME` / `mutmut browse`.
See docs/testing.md.
"""

import argparse
import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 90.0

# Module → its own tests. A test file belongs here when it exercises the module directly, not
# when it merely passes through it.
MODULES: dict[str, list[str]] = {
    "sessions_api/client.py": ["tests/sessions_api/test_client.py"],
    "sessions_api/transport.py": ["tests/sessions_api/test_client.py"],
    "sessions_api/services.py": [
        "tests/sessions_api/test_services.py",
        "tests/sessions_api/test_apis.py",
        "tests/sessions_api/test_breaker.py",
        "tests/sessions_api/test_identity.py",
        "tests/test_metrics.py",  # what each request counts (SessionRequest.record)
        "tests/test_logs.py",  # the request id a request's log lines carry
        "tests/test_release_request.py",  # a refused call's error leaves no cycle
    ],
    "audit/services.py": [
        "tests/audit/test_services.py",
        "tests/audit/test_writer.py",
        "tests/sessions_api/test_services.py",
        "tests/sessions_api/test_secrets.py",
        "tests/audit/test_alerting.py",  # heartbeat_record, through the sweep
    ],
    "redaction.py": ["tests/test_redaction.py", "tests/test_redaction_properties.py"],
    "sessions_api/drf.py": ["tests/sessions_api/test_drf.py", "tests/sessions_api/test_csrf.py"],
    "sessions_api/throttle.py": ["tests/sessions_api/test_throttle.py", "tests/test_metrics.py"],
    "broker/redis_batch.py": ["tests/test_redis_batch.py"],
    "batching.py": ["tests/audit/test_writer_logic.py", "tests/test_redis_batch.py"],
    "sessions_api/breaker.py": ["tests/sessions_api/test_breaker.py"],
    "audit/alerting/rules.py": [
        "tests/audit/test_alerting.py",
        "tests/audit/test_notify.py",
        "tests/sessions_api/test_config_check.py",  # checks never count toward a rule
    ],
    "audit/alerting/engine.py": ["tests/audit/test_alerting.py", "tests/audit/test_notify.py"],
    "audit/alerting/notify.py": [
        "tests/audit/test_notify.py",
        "tests/audit/test_notify_messages.py",
        "tests/audit/test_alerting.py",
    ],
    "audit/alerting/coalesce.py": ["tests/audit/test_coalesce.py", "tests/audit/test_alerting.py"],
    "sessions_api/config_check.py": ["tests/sessions_api/test_config_check.py"],
    "audit/stats.py": ["tests/audit/test_stats.py"],
    "audit/writer.py": ["tests/audit/test_writer_logic.py", "tests/audit/test_writer.py"],
    "broker/checks.py": ["tests/test_connection_budget.py", "tests/test_metrics.py"],
    "broker/cache.py": ["tests/test_cache.py", "tests/sessions_api/test_throttle.py"],
    "broker/middleware.py": [
        "tests/test_csp.py",
        "tests/audit/test_admin.py",
        "tests/test_logs.py",
        "tests/test_release_request.py",
        "tests/test_messages.py",
    ],
    "audit/retention.py": ["tests/audit/test_retention.py"],
    "audit/reports.py": [
        "tests/audit/test_reports.py",
        "tests/audit/test_dashboard.py",  # latency_percentiles' cap on the newest attempts
    ],
}

# Found by a mutant's tests; timeouts count, since only a mutant makes a test hang.
DETECTED = {"killed", "timeout", "segfault", "caught by type check"}
# mutmut's settings that a bare `mutmut run` would take from pyproject.toml; a service URL or
# CI=true would send the tests to PostgreSQL or Redis, or fail them for want of one.
DROPPED_VARIABLES = ("DATABASE_URL", "REDIS_URL", "CI", "DJANGO_SETTINGS_MODULE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help="default: all of them")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel mutants")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.child:
        return run_mutmut(args.modules[0], args.jobs)

    unknown = [module for module in args.modules if module not in MODULES]
    if unknown:
        parser.error(f"not in MODULES: {', '.join(unknown)} (choose from {', '.join(MODULES)})")
    # Every run starts by deleting mutants/: a second run in this checkout would pull it away
    # from under the first.
    (ROOT / "var").mkdir(exist_ok=True)
    with open(ROOT / "var" / "mutate.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            parser.exit(2, "Another `make mutate` is running in this checkout.\n")
        scores = [mutate(module, args.jobs) for module in args.modules or MODULES]

    print(f"\nMutation scores (target {TARGET:.0f} % killed per module)")
    print(f"  {'module':<28} {'killed':>7} {'total':>6} {'score':>7} {'time':>7}  survivors")
    for score in scores:
        mark = "" if score.passed else "  BELOW TARGET"
        minutes, seconds = divmod(round(score.seconds), 60)
        print(
            f"  {score.module:<28} {score.killed:>7} {score.total:>6} {score.percent:>6.1f}% "
            f"{minutes:>3}m{seconds:02}s  {len(score.survivors)}{mark}"
        )
    return 0 if all(score.passed for score in scores) else 1


@dataclasses.dataclass
class Score:
    module: str
    killed: int
    total: int
    survivors: dict[str, str]  # mutant name → status
    seconds: float = 0.0

    @property
    def percent(self) -> float:
        return 100.0 * self.killed / self.total if self.total else 0.0

    @property
    def passed(self) -> bool:
        return self.total > 0 and self.percent >= TARGET


def mutate(module: str, jobs: int) -> Score:
    print(f"\n=== {module}: mutants checked by {' '.join(MODULES[module])}", flush=True)
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_VARIABLES}
    command = [sys.executable, __file__, "--child", f"--jobs={jobs}", module]
    started = time.monotonic()
    code = subprocess.run(command, env=env, check=False).returncode
    score = read_score(module)
    score.seconds = time.monotonic() - started
    if code != 0:
        print(f"mutmut failed on {module} (exit {code}); counted as 0 killed")
        return Score(module, 0, max(score.total, 1), score.survivors, score.seconds)
    for name, status in score.survivors.items():
        print(f"\n--- {status}: {name}\n{diff(name, module)}")
    return score


def read_score(module: str) -> Score:
    from mutmut.stats import status_by_exit_code

    meta = ROOT / "mutants" / f"{module}.meta"
    if not meta.exists():
        return Score(module, 0, 0, {})
    exit_codes = json.loads(meta.read_text())["exit_code_by_key"]
    statuses = {name: status_by_exit_code[code] for name, code in exit_codes.items()}
    counted = {name: status for name, status in statuses.items() if status != "skipped"}
    survivors = {name: s for name, s in sorted(counted.items()) if s not in DETECTED}
    return Score(module, len(counted) - len(survivors), len(counted), survivors)


def diff(name: str, module: str) -> str:
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    try:
        return get_diff_for_mutant(name, path=module)
    except Exception as exc:  # noqa: BLE001 - a missing diff must not lose the scores
        return f"(no diff: {exc})"


def run_mutmut(module: str, jobs: int) -> int:
    """In a child process: `mutmut run` with only_mutate and the tests narrowed to one module.

    mutmut reads its settings from ./pyproject.toml only and has no option to override them for
    one run, so this sets its (pinned) configuration object before running.
    """
    import mutmut.__main__ as mutmut_main
    from mutmut import configuration

    config = configuration.config()
    configuration._config = dataclasses.replace(
        config, only_mutate=[module], pytest_add_cli_args_test_selection=MODULES[module]
    )
    try:
        mutmut_main._run([], jobs)
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
