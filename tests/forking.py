"""Run a function in a forked child, as gunicorn and Celery run their workers."""

import os


def in_forked_child(work) -> str:
    """What work() returned in a child forked from this process, which has only the calling
    thread and a copy of everything else; or the repr of what it raised."""
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            report = str(work())
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            report = repr(exc)
        os.write(writing, report.encode())
        os._exit(0)
    os.close(writing)
    with os.fdopen(reading) as pipe:
        report = pipe.read()
    os.waitpid(child, 0)
    return report
