"""How the upstream client talks HTTP: requests' adapter and urllib3's connections, tuned.

One TLS context for every connection, and a check of kept-alive connections that never goes
round gevent's event loop. sessions_api/client.py mounts the adapter; nothing else uses it.
"""

import functools
import select
import sys
from collections.abc import Callable
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.ssl_ import create_urllib3_context


class SharedTLSAdapter(HTTPAdapter):
    """requests' adapter with one TLS context, holding the CA bundle, for every connection.

    Left to itself, requests names the bundle on each new connection and urllib3 loads it again
    (about 30 ms of CPU for certifi's); here it is loaded once. Verification is unchanged: the
    context requires a certificate that the bundle vouches for, and the host name is checked.
    Otherwise requests' defaults: no retries (ours are in ChatKitClient._call), and a pool for
    each of up to ten hosts, of which there is one.

    The super() calls below only pass on what requests gave: mutating them can change nothing
    (requests passes nothing in **kwargs that our defaults would not; we never use a client
    certificate), hence no mutants there (docs/testing.md).
    """

    def __init__(self, ca_bundle: str | None, pool_maxsize: int) -> None:
        self._ssl_context = create_urllib3_context()
        if ca_bundle:
            self._ssl_context.load_verify_locations(ca_bundle)
        super().__init__(pool_maxsize=pool_maxsize)

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["ssl_context"] = self._ssl_context
        super().init_poolmanager(*args, **kwargs)  # pragma: no mutate
        self.poolmanager.pool_classes_by_scheme = _POOL_CLASSES

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        # HTTPS through a proxy (HTTPS_PROXY) is verified with the same context.
        proxy_kwargs["ssl_context"] = self._ssl_context
        return super().proxy_manager_for(proxy, **proxy_kwargs)  # pragma: no mutate

    def cert_verify(self, conn, url, verify, cert) -> None:
        super().cert_verify(conn, url, verify, cert)  # pragma: no mutate
        # The bundle is in the context already: naming it again would reload it.
        conn.ca_certs = conn.ca_cert_dir = None


@functools.cache
def _os_poll() -> Callable[[], Any]:
    """select.poll as the OS gives it, also where gevent has patched the module. Looked up once:
    taken before gevent patches, select.poll is the OS's too."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("select"):
        return monkey.get_original("select", "poll")
    return select.poll


class _DropCheck:
    """urllib3's check that a kept-alive connection is still open, on the OS's own poll.

    Before it reuses a connection, urllib3 polls it for reading with no timeout: readable means
    the server has closed it (or sent what nobody asked for), and it is not reused. Under
    gunicorn's gevent worker select.poll is gevent's, which answers even a zero timeout by
    going round the event loop: the request waits behind every other request ready in its
    worker before it is even sent, a few milliseconds at 300 ms x 256. The OS's poll answers in
    one system call that never blocks (1.3 µs against 25).

    Measured in alternating pairs (docs/benchmarks.md, 2026-12-07): 3-13 % more sessions per
    second at 300 ms x 256, with a p50 18-47 ms lower; 4-9 % fewer at 0 ms x 64, where the
    machine is saturated and the extra turn of the loop evened out the work. Sized for an
    upstream that answers in hundreds of milliseconds, as OpenAI does.
    """

    sock: Any

    @property
    def is_connected(self) -> bool:
        if self.sock is None:
            return False
        poller = _os_poll()()
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)


class CheckedHTTPConnection(_DropCheck, HTTPConnection):
    pass


class CheckedHTTPSConnection(_DropCheck, HTTPSConnection):
    pass


class _HTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = CheckedHTTPConnection


class _HTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = CheckedHTTPSConnection


# Direct connections only: a proxy's manager keeps urllib3's own pools (and SOCKS its own).
_POOL_CLASSES = {"http": _HTTPConnectionPool, "https": _HTTPSConnectionPool}
