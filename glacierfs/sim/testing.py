"""Helpers for tests (this project's and anyone's): run the emulator as a subprocess and talk to
it with boto3 or through its control endpoint.

Everything about the AWS side is explicit: dummy credentials, region us-east-1, no config or
credentials files, no instance metadata lookups, so a developer's ~/.aws never leaks into a test.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

LISTENING_PREFIX = "listening on "
START_TIMEOUT = 30.0  # seconds to wait for the listening line: first start imports a lot
DUMMY_KEY_ID = "AKIDGLACIERFSSIM0000"
DUMMY_SECRET = "glacierfs-sim-secret"
REGION = "us-east-1"


def aws_env(base: dict[str, str] | None = None, key_id: str = DUMMY_KEY_ID) -> dict[str, str]:
    """Environment for an AWS CLI (or any SDK) subprocess pointed at the emulator."""
    env = dict(os.environ if base is None else base)
    for name in list(env):
        if name.startswith("AWS_"):
            del env[name]
    env.update({
        "AWS_ACCESS_KEY_ID": key_id,
        "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_PAGER": "",
        "AWS_RETRY_MODE": "standard",
        "AWS_MAX_ATTEMPTS": "1",
    })
    return env


def make_client(endpoint_url: str, max_attempts: int | None = None, key_id: str = DUMMY_KEY_ID,
                **config: Any):
    """A boto3 Glacier client for the emulator. ``max_attempts=1`` disables botocore retries
    (what fault tests want); None keeps botocore's standard retry mode."""
    import boto3
    import botocore.session
    from botocore.config import Config

    core = botocore.session.Session()
    core.set_config_variable("config_file", os.devnull)
    core.set_config_variable("credentials_file", os.devnull)
    core.set_config_variable("metadata_service_num_attempts", 0)
    session = boto3.Session(botocore_session=core, aws_access_key_id=key_id,
                            aws_secret_access_key=DUMMY_SECRET, region_name=REGION)
    retries: dict[str, Any] = {"mode": "standard"}
    if max_attempts is not None:
        # botocore reads "max_attempts" as retries after the first try; the total is explicit.
        retries["total_max_attempts"] = max_attempts
    config.setdefault("retries", retries)
    return session.client("glacier", endpoint_url=endpoint_url, config=Config(**config))


def upload(client, vault: str, data: bytes, description: str = "") -> str:
    """Upload ``data`` as one archive; returns its archive id."""
    return client.upload_archive(vaultName=vault, body=data,
                                 archiveDescription=description)["archiveId"]


def wait_job(client, vault: str, job_id: str, timeout: float = 30.0) -> dict:
    """Poll DescribeJob until the job completes (Succeeded or Failed)."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.describe_job(vaultName=vault, jobId=job_id)
        if job["Completed"]:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['StatusCode']} after {timeout}s")
        time.sleep(0.1)


class SimError(RuntimeError):
    """The control endpoint answered with an error."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


class SimProcess:
    """``glacierfs sim`` in a subprocess: start, talk to, restart (same dir and port), stop."""

    def __init__(self, data_dir: str | os.PathLike[str], args: list[str] | tuple[str, ...] = (),
                 port: int = 0, log_path: str | os.PathLike[str] | None = None,
                 start: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.args = list(args)
        self.port = port
        self.url = ""
        self.log_path = Path(log_path) if log_path else self.data_dir.with_name(
            self.data_dir.name + ".log")
        self.proc: subprocess.Popen[bytes] | None = None
        if start:
            self.start()

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> SimProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "glacierfs.cli", "sim", "--port", str(self.port),
               "--data-dir", str(self.data_dir), *self.args]
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log,
                                         stdin=subprocess.DEVNULL)
        finally:
            log.close()
        line = self._first_line()
        if not line.startswith(LISTENING_PREFIX):
            self.kill()
            raise RuntimeError(f"emulator did not start: {line!r}; log: {self.log_tail()}")
        self.url = line[len(LISTENING_PREFIX):].strip()
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def _first_line(self) -> str:
        assert self.proc and self.proc.stdout
        deadline = time.monotonic() + START_TIMEOUT
        buf = b""
        fd = self.proc.stdout.fileno()
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return buf.decode(errors="replace")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                buf += chunk
        return buf.split(b"\n", 1)[0].decode(errors="replace")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout`` seconds."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self._reap()

    def kill(self) -> int | None:
        """SIGKILL: a crash, as far as the data dir can tell."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return self._reap()

    def _reap(self) -> int | None:
        assert self.proc is not None
        code = self.proc.returncode
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None
        return code

    def restart(self) -> SimProcess:
        """Stop and start again on the same port with the same data dir and flags."""
        self.stop()
        return self.start()

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss_bytes(self) -> int:
        """Resident memory of the emulator process (VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    # --- clients ----------------------------------------------------------------------------
    def client(self, max_attempts: int | None = None, **config: Any):
        return make_client(self.url, max_attempts=max_attempts, **config)

    def env(self) -> dict[str, str]:
        return aws_env()

    def control(self, method: str, path: str, body: Any = None) -> Any:
        """Call the control endpoint (``path`` under /_sim/, with or without the prefix)."""
        if not path.startswith("/_sim/"):
            path = "/_sim/" + path.lstrip("/")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            raise SimError(exc.code, parsed) from None
        return json.loads(raw) if raw else None

    def stats(self) -> dict:
        return self.control("GET", "stats")

    def reset_stats(self) -> dict:
        return self.control("POST", "stats/reset")

    def set_faults(self, rules: list[dict]) -> list[dict]:
        return self.control("PUT", "faults", rules)

    def add_fault(self, rule: dict) -> list[dict]:
        return self.control("POST", "faults", rule)

    def clear_faults(self) -> list[dict]:
        return self.control("DELETE", "faults")

    def set_delays(self, **delays: float) -> dict:
        return self.control("PUT", "delays", delays)

    def complete_jobs(self, job_id: str | None = None, vault: str | None = None) -> list[str]:
        body = {k: v for k, v in (("job_id", job_id), ("vault", vault)) if v is not None}
        return self.control("POST", "jobs/complete", body)["completed"]

    def fail_job(self, job_id: str, message: str = "The job failed.") -> dict:
        return self.control("POST", "jobs/fail", {"job_id": job_id, "message": message})

    def expire_job(self, job_id: str) -> dict:
        return self.control("POST", "jobs/expire", {"job_id": job_id})

    def advance_clock(self, seconds: float) -> dict:
        return self.control("POST", "clock", {"advance": seconds})

    def synthesize(self, vault: str, count: int, size: int = 0,
                   description: str = "file{i}") -> dict:
        return self.control("POST", "synthesize", {"vault": vault, "count": count, "size": size,
                                                   "description": description})
