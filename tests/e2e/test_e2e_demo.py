"""``glacierfs demo`` end to end, as a new user runs it: the README's commands, taken from the
README itself (its demo select example and its "Stop the demo with" line, with the demo's fixed
paths swapped for temporary ones), on a real mount with real tools. The sample vaults appear,
an uncached read says "Object is remote" and ``glacierfs status`` gives no AWS estimate of
hours for the emulator's seconds-long job, the README's select prints exactly the rows its
query selects (computed here with the csv module) and is never paid for twice, running the demo
again reuses everything, and stopping it as the README says leaves nothing mounted or running."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from e2e_util import NOT_READY_TEXT, TOOL_ENV, _pid_alive, getfattr_one, listing, run
from mount_support import wait_for

from glacierfs.commands import demo

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
GLACIERFS = [sys.executable, "-m", "glacierfs.cli"]


def _free_port_pair() -> int:
    """A port P with P + 1 free too (the demo's S3 is on --port + 1 by default)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    pytest.skip("no two adjacent free ports")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _localise(command: str, mnt: Path, data: Path) -> str:
    return command.replace(demo.DEFAULT_MOUNT, str(mnt)).replace(demo.DEFAULT_DATA, str(data))


def readme_select(mnt: Path, data: Path) -> list[str]:
    """The README's select example for the demo, as argv with this test's paths."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"On the demo \(`glacierfs demo`\).*?```sh\n(.*?)```", text, re.S)
    assert block, "the README's demo select example is gone"
    command = next(c for c in block.group(1).replace("\\\n", " ").splitlines()
                   if c.startswith("glacierfs select"))
    argv = shlex.split(_localise(command, mnt, data), comments=True)
    return GLACIERFS + argv[1:]


def readme_stop(mnt: Path, data: Path) -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"Stop\s+the\s+demo\s+with\s+`([^`]+)`", text)
    assert found, "the README no longer says how to stop the demo"
    return _localise(found.group(1), mnt, data)


def stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sim/stats", timeout=10) as r:
        return json.load(r)["requests"]


def processes_naming(*paths: Path) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(os.fsencode(str(p)) in a for p in paths for a in args):
            found.append(b" ".join(args).decode("utf-8", "replace"))
    return found


def expected_select_rows() -> list[list[str]]:
    """What the README's query (FR orders over 1000: order_id, customer, total) selects."""
    sales = csv.DictReader(io.StringIO(demo.sales_csv().decode()))
    return sorted([r["order_id"], r["customer"], r["total"]] for r in sales
                  if r["country"] == "FR" and float(r["total"]) > 1000)


def start_demo(mnt: Path, data: Path, port: int) -> str:
    proc = run(*GLACIERFS, "demo", "--mountpoint", mnt, "--data-dir", data, "--port", str(port),
               timeout=180)
    out = proc.stdout.decode()
    assert proc.returncode == 0, (out, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return out


@pytest.fixture
def demo_paths(tmp_path):
    mnt, data, port = tmp_path / "mnt", tmp_path / "data", _free_port_pair()
    try:
        yield mnt, data, port
    finally:   # whatever happened, leave nothing behind
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        try:
            os.kill(int((data / demo.PID_FILE).read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        shutil.rmtree(data, ignore_errors=True)   # ~400 MB of sample archives and cache


def test_the_demo_as_the_readme_tells_it(demo_paths):
    mnt, data, port = demo_paths
    out = start_demo(mnt, data, port)
    assert "uploading" in out
    assert listing(mnt) == demo.demo_vaults()
    assert {"beach.jpg", "sunset.jpg"} <= listing(mnt / "photos" / "2019" / "holiday")
    assert "sales-2023.csv" in listing(mnt / "documents" / "reports")
    # the Synology pair: names from the mapping database once its retrieval is in
    synology = mnt / demo.SYNOLOGY_VAULT
    wait_for(lambda: "photo" in listing(synology), 180, "the Synology names")
    assert "IMG_20150507_194814.JPG" in listing(synology / "homes/admin/Desktop")
    stop = readme_stop(mnt, data)
    assert f"Stop it: {stop}" in out.replace("   (the emulator)", "")

    # An uncached read starts a retrieval and says so; status gives no AWS guess of hours.
    cat = run("cat", mnt / "documents" / "hello.txt")
    cat_at = time.monotonic()
    assert cat.returncode == 1 and NOT_READY_TEXT in cat.stderr, cat.stderr
    status = run(*GLACIERFS, "status", mnt)
    assert status.returncode == 0, status.stderr
    assert "documents/hello.txt" in status.stdout.decode()
    assert not re.search(r"expected in ~\d+h", status.stdout.decode()), status.stdout

    # The README's select example prints the rows its query selects; asking again is free.
    argv = readme_select(mnt, data)
    before = stats(port).get("InitiateJob", 0)
    select = subprocess.run(argv + ["--timeout", "60"], capture_output=True, text=True,
                            timeout=120, env=TOOL_ENV)
    assert select.returncode == 0, select.stderr
    got = sorted(csv.reader(io.StringIO(select.stdout)))
    assert got == expected_select_rows() and got
    again = subprocess.run(argv + ["--timeout", "60"], capture_output=True, text=True,
                           timeout=120, env=TOOL_ENV)
    assert again.returncode == 0 and again.stdout == select.stdout, again.stderr
    assert stats(port).get("InitiateJob", 0) == before + 1

    # The retrieval the cat started is cached as soon as its 20 s job completes: the completion
    # comes through SNS and SQS (the demo mount polls only every 60 s, its safety net).
    left = demo.NOTIFIED_POLL - 15 - (time.monotonic() - cat_at)
    wait_for(lambda: getfattr_one(mnt / "documents" / "hello.txt", "user.glacier.cache")
             == "cached", max(left, 1), "hello.txt to be cached through the notification")
    status = run(*GLACIERFS, "status", mnt).stdout.decode()
    assert "Notifications: queue" in status and "last message never" not in status, status

    # Running it again while it runs reuses the emulator, the seeded vaults and the mount.
    out = start_demo(mnt, data, port)
    assert "emulator already running" in out and "already mounted" in out
    assert "uploading" not in out

    # Stopping it as the README says leaves nothing mounted, listening or running.
    emulator_pid = int((data / demo.PID_FILE).read_text())
    proc = subprocess.run(["sh", "-c", stop], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: not processes_naming(mnt, data), 30, "the demo's processes to exit")
    assert not os.path.ismount(mnt)
    assert str(mnt) not in Path("/proc/self/mounts").read_text()
    wait_for(lambda: not _pid_alive(emulator_pid), 30, "the emulator to exit")
    assert not _port_open(port) and not _port_open(port + 1)

    # A second start after the stop: the state is reused (no uploads, the tree at once).
    start = time.monotonic()
    out = start_demo(mnt, data, port)
    assert "uploading" not in out and "emulator running" in out
    assert listing(mnt) == demo.demo_vaults()
    assert "sales-2023.csv" in listing(mnt / "documents" / "reports")
    assert time.monotonic() - start < 30
    proc = subprocess.run(["sh", "-c", stop], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: not processes_naming(mnt, data), 30, "the demo's processes to exit")
    assert not os.path.ismount(mnt)


def test_a_busy_s3_port_fails_at_once_and_leaves_nothing_running(demo_paths):
    mnt, data, port = demo_paths
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port + 1))
        busy.listen()
        start = time.monotonic()
        proc = run(*GLACIERFS, "demo", "--mountpoint", mnt, "--data-dir", data, "--port",
                   str(port), timeout=120)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert time.monotonic() - start < 20
    assert "the emulator did not start" in proc.stderr
    assert f"port {port + 1} is in use" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not processes_naming(data) and not os.path.ismount(mnt)
    assert not (data / demo.PID_FILE).exists()
