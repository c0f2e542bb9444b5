"""broker/hashers.py: Django's hash, computed off gevent's event loop in a gevent process."""

import subprocess
import sys
from pathlib import Path

from django.contrib.auth.hashers import PBKDF2PasswordHasher, check_password

from broker.hashers import ThreadedPBKDF2PasswordHasher

ROOT = Path(__file__).resolve().parent.parent

# Patched as gunicorn's gevent worker patches. A greenlet ticks while the main one hashes: with
# the hash on the event loop's thread, it could not tick until the hash was done.
UNDER_GEVENT = """
from gevent import monkey

monkey.patch_all()
import django
from django.conf import settings

settings.configure()
django.setup()
import gevent

from broker.hashers import ThreadedPBKDF2PasswordHasher

ticks = []

def tick():
    while True:
        ticks.append(1)
        gevent.sleep(0.001)

ticker = gevent.spawn(tick)
gevent.sleep(0)  # the ticker's first tick
ticks.clear()
encoded = ThreadedPBKDF2PasswordHasher().encode("correct horse", "saltsaltsalt")
during = len(ticks)
ticker.kill()
print(during, encoded)
"""


def test_under_gevent_other_greenlets_run_while_a_password_is_hashed():
    result = subprocess.run(
        [sys.executable, "-c", UNDER_GEVENT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    during, encoded = result.stdout.split()

    assert int(during) > 0
    assert encoded == PBKDF2PasswordHasher().encode("correct horse", "saltsaltsalt")


def test_without_gevent_it_is_djangos_hash(settings):
    settings.PASSWORD_HASHERS = ["broker.hashers.ThreadedPBKDF2PasswordHasher"]
    encoded = ThreadedPBKDF2PasswordHasher().encode("correct horse", "saltsaltsalt", 1000)

    assert encoded == PBKDF2PasswordHasher().encode("correct horse", "saltsaltsalt", 1000)
    assert check_password("correct horse", encoded)
    assert not check_password("wrong horse", encoded)
