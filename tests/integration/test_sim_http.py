"""The emulator as a program and an HTTP server: command line, startup line, error bodies for
anything malformed, keep-alive."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from glacierfs.sim.testing import SimError

FLAGS = ["--port", "--data-dir", "--host", "--region", "--account-id", "--preset", "--delay",
         "--job-ttl", "--inventory-mode", "--seed", "--fault", "--access-key-id", "--quiet"]


def test_help_documents_every_flag():
    out = subprocess.run([sys.executable, "-m", "glacierfs.cli", "sim", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for flag in FLAGS:
        assert flag in out, flag
    for fault in ("throttle", "error500", "error503", "drop", "corrupt", "slow",
                  "insufficient_capacity", "policy", "job_failed", "expire"):
        assert fault in out, fault


@pytest.mark.parametrize("args", [["--delay", "Glacial=3"], ["--fault", "ListJobs:meteor"],
                                  ["--host", "8.8.8.8"], ["--inventory-mode", "weekly"]])
def test_bad_flags_fail_clearly(tmp_path, args):
    proc = subprocess.run([sys.executable, "-m", "glacierfs.cli", "sim", "--data-dir",
                           str(tmp_path), *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "error" in proc.stderr and "Traceback" not in proc.stderr


def test_listening_line(sim):
    assert sim.url == f"http://127.0.0.1:{sim.port}" and sim.port > 0


def request(conn, method, path, body=b"", headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, resp.read()


@pytest.mark.parametrize("method, path, body, status, code", [
    ("GET", "/-/nothing/here", b"", 400, "UnknownOperationException"),
    ("POST", "/-/vaults/x/jobs", b"{not json", 404, "ResourceNotFoundException"),
    ("GET", "/-/vaults?limit=zero", b"", 400, "InvalidParameterValueException"),
    ("GET", "/-/vaults/v/lock-policy", b"", 400, "InvalidParameterValueException"),
    ("GET", "/-/vaults/v/tags", b"", 404, "ResourceNotFoundException"),
])
def test_errors_are_glacier_json(sim, method, path, body, status, code):
    parts = urlsplit(sim.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    got_status, payload = request(conn, method, path, body)
    err = json.loads(payload)
    assert (got_status, err["code"]) == (status, code)
    assert set(err) == {"code", "message", "type"} and err["type"] == "Client"


def test_bad_job_bodies_and_keep_alive(sim, glacier, vault):
    parts = urlsplit(sim.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    for body in (b"{not json", b"[1, 2]", b'{"Type": 5}', b""):
        status, payload = request(conn, "POST", f"/-/vaults/{vault}/jobs", body)
        assert status == 400 and json.loads(payload)["type"] == "Client", body
    # an error answered before a big body was read must not desync the connection
    status, _ = request(conn, "POST", "/-/vaults/missing/archives", b"x" * 300_000,
                        {"x-amz-sha256-tree-hash": "00" * 32})
    assert status == 404
    status, payload = request(conn, "GET", f"/-/vaults/{vault}")
    assert status == 200 and json.loads(payload)["VaultName"] == vault


def test_control_endpoint_validation(sim):
    for method, path, body in [("POST", "clock", {"advance": -5}),
                               ("PUT", "delays", {"Slowest": 3}),
                               ("POST", "jobs/expire", {}),
                               ("POST", "synthesize", {"vault": "none", "count": 1}),
                               ("GET", "nothing", None)]:
        with pytest.raises(SimError) as exc:
            sim.control(method, path, body)
        assert exc.value.status in (400, 404), (method, path)
    assert sim.set_delays(Bulk=0.5)["Bulk"] == 0.5
