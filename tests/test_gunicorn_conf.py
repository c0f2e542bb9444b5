"""gunicorn.conf.py's worker hook: what a worker loads at start-up is kept from the collector."""

import json
import os

from tests.test_project import PRODUCTION, run_python

# In a fresh process, as a worker is: set Django up as the WSGI module does, then run the hook.
WORKER = """
import gc, json, runpy, sys, weakref
import django
django.setup()
hooks = runpy.run_path("gunicorn.conf.py")
class Cycle: pass
garbage = Cycle()
garbage.itself = garbage
garbage_left = weakref.ref(garbage)
gc.collect()  # now in the oldest generation, which only a full collection looks at
del garbage
before = {"urlconf": "broker.urls" in sys.modules, "frozen": gc.get_freeze_count()}
loaded = len(gc.get_objects())
hooks["post_worker_init"](None)
print(json.dumps({
    "before": before,
    "urlconf": "broker.urls" in sys.modules,
    "frozen": gc.get_freeze_count(),
    "loaded": loaded,
    "left": len(gc.get_objects()),
    "garbage frozen": garbage_left() is not None,
    "thresholds": gc.get_threshold(),
}))
"""


def test_a_worker_freezes_what_it_loaded_urlconf_included(tmp_path):
    env = {
        **PRODUCTION,
        "PATH": os.environ["PATH"],
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    result = run_python("-c", WORKER, env=env)
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout.splitlines()[-1])

    assert state["before"] == {"urlconf": False, "frozen": 0}
    assert state["urlconf"] is True
    # Everything Django and the URLconf loaded is frozen; only the few objects made since remain.
    assert state["frozen"] > state["loaded"]
    assert state["left"] < 100
    # Collected before: garbage frozen would never be freed.
    assert state["garbage frozen"] is False
    # Young passes every 10,000 new objects rather than Python's 700; the older ones as before.
    assert state["thresholds"] == [10_000, 10, 10]
