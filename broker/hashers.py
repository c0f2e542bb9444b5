"""Django's default password hasher, kept off gevent's event loop."""

import sys

from django.contrib.auth.hashers import PBKDF2PasswordHasher


class ThreadedPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """PBKDF2-SHA256 as Django does it (same algorithm name, same stored hashes), computed on a
    real thread when gevent has patched this process (gunicorn.conf.py).

    A hash is a million rounds, about half a second of CPU on the benchmark machines, in
    hashlib's C code, which lets the GIL go. On a greenlet it would hold its whole worker: every
    other request of that worker would wait for each admin login, right or wrong. On gevent's
    thread pool the worker goes on serving them meanwhile.
    """

    def encode(self, password, salt, iterations=None):
        monkey = sys.modules.get("gevent.monkey")
        if monkey is None or not monkey.is_module_patched("threading"):
            return super().encode(password, salt, iterations)
        from gevent import get_hub

        return get_hub().threadpool.apply(super().encode, (password, salt, iterations))
