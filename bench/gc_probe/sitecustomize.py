"""Records every cycle collection of this process, for bench/cpu_split.py --gc.

Python imports sitecustomize at start-up from its path: cpu_split.py puts this folder there for
the server it starts, with GC_PROBE_DIR set. Each collection becomes one line of that folder's
file for the process, "monotonic-seconds generation cpu-seconds objects-collected", written in
batches (at most once a second) and at exit. CPU time, not wall time: a collection the kernel
preempted is not counted longer than it ran.
"""

import atexit
import gc
import os
import time

_folder = os.environ.get("GC_PROBE_DIR")
_lines: list[str] = []
_started = [0.0]
_flushed = [time.monotonic()]


def _flush() -> None:
    if _lines:
        with open(os.path.join(_folder, f"{os.getpid()}.gc"), "a") as file:
            file.write("".join(_lines))
        _lines.clear()
    _flushed[0] = time.monotonic()


def _record(phase: str, info: dict) -> None:
    if phase == "start":
        _started[0] = time.thread_time()
        return
    cpu = time.thread_time() - _started[0]
    now = time.monotonic()
    _lines.append(f"{now:.6f} {info['generation']} {cpu:.6f} {info['collected']}\n")
    if now - _flushed[0] >= 1:
        _flush()


if _folder:
    gc.callbacks.append(_record)
    # A forked worker must not write its parent's lines as its own.
    os.register_at_fork(after_in_child=_lines.clear)
    atexit.register(_flush)
