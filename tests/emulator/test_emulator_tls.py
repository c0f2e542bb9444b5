"""The emulator over HTTPS, with a certificate from a local trustme CA, over a real socket."""

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import trustme

from emulator.server import run
from tests.emulator.test_emulator import needs_django

REPO_ROOT = Path(__file__).resolve().parents[2]
HEADERS = {"Authorization": "Bearer sk-test-0123456789abcdefwxyz", "OpenAI-Beta": "chatkit_beta=v1"}
BODY = {"workflow": {"id": "wf_demo"}, "user": "user-123"}


def test_run_serves_https_with_the_given_certificate(tmp_path):
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(ca_file)
    for pem in server_cert.cert_chain_pems:
        pem.write_to_path(cert_file, append=True)
    server_cert.private_key_pem.write_to_path(key_file)
    code = (
        "import sys\n"
        "from emulator.server import run\n"
        "run(port=0, tls_cert=sys.argv[1], tls_key=sys.argv[2],\n"
        "    on_ready=lambda url: print(url, flush=True))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(cert_file), str(key_file)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = process.stdout.readline().strip()
        assert re.fullmatch(r"https://127\.0\.0\.1:\d+/v1", base_url)
        url = f"{base_url}/chatkit/sessions"
        response = requests.post(url, json=BODY, headers=HEADERS, timeout=5, verify=ca_file)
        assert response.status_code == 200
        assert response.json()["client_secret"].startswith("ek_")
        with pytest.raises(requests.exceptions.SSLError):  # not trusted without the CA
            requests.post(url, json=BODY, headers=HEADERS, timeout=5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.stdout.close()


def test_a_certificate_needs_its_key(tmp_path):
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        run(port=0, tls_cert=str(tmp_path / "cert.pem"))


@needs_django
def test_the_command_passes_the_certificate_on(tmp_path):
    from django.core.management import CommandError, call_command

    missing = str(tmp_path / "missing.pem")
    with pytest.raises(CommandError, match="Cannot start the emulator"):
        call_command("chatkit_emulator", "--port", "0", "--tls-cert", missing, "--tls-key", missing)
