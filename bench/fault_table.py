"""Each upstream fault against the time to answer, the status and the audit rows (issue 8).

In-process and self-contained: the broker's session endpoint through Django's test client, with
the production defaults for timeouts and retries (connect 3 s, read 8 s, 10 s in all, two
retries), on a throwaway SQLite database, against the emulator over a real socket, and a small
raw-socket server for the one fault the emulator cannot play (a body that trickles).

    .venv/bin/python bench/fault_table.py

The database and Redis faults need real servers to freeze; tests/test_gunicorn.py measures them.
"""

import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for variable in ("DATABASE_URL", "REDIS_URL", "CI"):
    os.environ.pop(variable, None)
os.environ["DJANGO_SETTINGS_MODULE"] = "broker.settings_test"
os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp()}/faults.sqlite3"

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402

from audit.models import SessionAttempt  # noqa: E402
from emulator.server import serve_in_thread  # noqa: E402
from sessions_api.services import chatkit_client, upstream_breaker  # noqa: E402

KEY = "sk-fault-table-0123456789abcdefgh"
WORKFLOW = "wf_fault_table"
URL = "/api/chatkit/session/"
MB = 1024 * 1024


def trickling_server() -> str:
    """Answers 200 with a JSON body, one byte every half second: a read timeout per byte never
    fires, only the call's total budget does. Returns its base URL."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            conn.sendall(b"Content-Length: 100000\r\n\r\n")
            try:
                for _ in range(100000):
                    conn.sendall(b" ")
                    time.sleep(0.5)
            except OSError:
                return

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/v1"


def post(client: Client) -> tuple[int, float, int, str]:
    before = SessionAttempt.objects.count()
    started = time.monotonic()
    response = client.post(URL, content_type="application/json")
    seconds = time.monotonic() - started
    code = response.json().get("error", {}).get("code", "") if response.status_code != 200 else ""
    return response.status_code, seconds, SessionAttempt.objects.count() - before, code


def fresh_upstream() -> None:
    """A new client for the settings, and a closed breaker: each fault starts from calm."""
    chatkit_client.cache_clear()
    upstream_breaker.cache_clear()


def main() -> int:
    call_command("migrate", verbosity=0)
    emulator = serve_in_thread(api_keys=[KEY], workflows=[WORKFLOW])
    settings.OPENAI_API_KEY, settings.OPENAI_WORKFLOW_ID = KEY, WORKFLOW
    settings.OPENAI_BASE_URL = emulator.base_url
    client = Client(HTTP_HOST="127.0.0.1")
    rows = []

    def measure(name: str, faults: list) -> None:
        emulator.state.reset()
        fresh_upstream()
        emulator.state.push_faults(faults)
        rows.append((name, *post(client)))

    measure("healthy upstream", [])
    measure("hang-up mid-response, every attempt", ["hangup"] * 3)
    measure("garbage body", ["garbage"])
    measure("body over 1 MB (2 MB sent)", [{"status": 200, "body": "x" * (2 * MB)}])
    measure("429 with Retry-After: 3600", [{"status": 429, "retry_after": 3600}])
    measure("answer never comes (hang), every attempt", ["hang"] * 3)

    emulator.state.reset()
    fresh_upstream()
    emulator.state.push_faults(["500"] * 30)
    storm = [post(client) for _ in range(settings.CHATKIT_BREAKER_FAILURES)]
    rows.append(("5xx storm: each call until the breaker opens", *storm[-1]))
    rows.append(("5xx storm: the next call, breaker open", *post(client)))

    settings.OPENAI_BASE_URL = trickling_server()
    fresh_upstream()
    rows.append(("body trickling one byte per 0.5 s", *post(client)))

    print("| upstream fault | answer | time | audit rows |")
    print("|---|---|---|---|")
    for name, status, seconds, written, code in rows:
        answer = f"{status} {code}".strip()
        print(f"| {name} | {answer} | {seconds:.2f} s | {written} |")
    emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
