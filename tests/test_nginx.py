"""deploy/nginx.conf in front of a real gunicorn: clients that never finish their request body
cannot take the connections that everyone else needs."""

import os
import shutil
import socket
import subprocess
import time

import pytest
import requests
from django.db import connection

from tests.conftest import require_service
from tests.test_gunicorn import ROOT, free_port, gunicorn_running

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

STALLED = 64


@pytest.fixture
def nginx_binary() -> str:
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is needed (CI installs Debian's nginx-light)")
        pytest.skip("nginx is needed to run this test (Debian: apt-get install -y nginx-light)")
    return binary


def stalled_uploads(port: int) -> list[socket.socket]:
    """Connections that send a POST's headers and a tenth of its body, then nothing."""
    sockets = []
    for _ in range(STALLED):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"POST /api/chatkit/session/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"a": "12345'
        )
        sockets.append(sock)
    return sockets


def mint(base: str) -> tuple[int | None, float]:
    started = time.monotonic()
    try:
        status = requests.post(f"{base}/api/chatkit/session/", json={}, timeout=3).status_code
    except requests.Timeout:
        status = None
    return status, time.monotonic() - started


def test_stalled_uploads_do_not_delay_others_behind_the_shipped_nginx(
    upstream, tmp_path, nginx_binary
):
    require_service("PostgreSQL", "DATABASE_URL")
    assert connection.vendor == "postgresql"
    # Few connections per worker: easy to exhaust.
    small = {"WEB_CONCURRENCY": "1", "GUNICORN_WORKER_CONNECTIONS": "8"}
    with gunicorn_running(upstream, tmp_path / "gunicorn.log", **small) as direct:
        gunicorn_port = int(direct.rsplit(":", 1)[1])
        nginx_port = free_port()
        config = (ROOT / "deploy" / "nginx.conf").read_text()
        config = config.replace("server web:8000;", f"server 127.0.0.1:{gunicorn_port};")
        config = config.replace("listen 8080;", f"listen 127.0.0.1:{nginx_port};")
        (tmp_path / "nginx.conf").write_text(config)
        nginx = subprocess.Popen(
            [nginx_binary, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path),
             "-g", f"daemon off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;"],
        )  # fmt: skip
        stalled: list[socket.socket] = []
        try:
            deadline = time.monotonic() + 10
            while socket.socket().connect_ex(("127.0.0.1", nginx_port)) != 0:
                assert time.monotonic() < deadline and nginx.poll() is None, "nginx did not start"
                time.sleep(0.05)
            proxied = f"http://127.0.0.1:{nginx_port}"
            assert mint(proxied)[0] == 200

            stalled = stalled_uploads(nginx_port)
            time.sleep(0.5)
            through_nginx = [mint(proxied) for _ in range(3)]

            # The same stalls straight at gunicorn take every connection: the premise of the test.
            stalled += stalled_uploads(gunicorn_port)
            time.sleep(0.5)
            straight = mint(direct)
        finally:
            for sock in stalled:
                sock.close()
            nginx.terminate()
            nginx.wait(timeout=10)

    assert all(status == 200 and seconds < 1 for status, seconds in through_nginx), through_nginx
    assert straight[0] is None, straight  # no answer within 3 s
