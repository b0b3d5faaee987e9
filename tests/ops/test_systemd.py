"""systemd: the units in systemd/ (checked with systemd-analyze verify where it exists), the
service's command line run as systemd runs it, and sd_notify over a real datagram socket."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from ops_support import FAST_SIM, REPO, VAULT, Mounts, is_mounted, listed, pid_alive, wait_for

from glacierfs import notify
from glacierfs.options import parse_options

pytestmark = pytest.mark.sim_args(*FAST_SIM)

UNITS = REPO / "systemd"
SERVICE = UNITS / "glacierfs@.service"
MOUNT_UNIT = UNITS / "mnt-glacier.mount"
EXAMPLE_CONF = UNITS / "glacierfs.conf.example"


def _unit_values(path: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def _conf_values(path: Path) -> dict[str, str]:
    return {k: v for k, _, v in (line.partition("=") for line in path.read_text().splitlines()
                                 if line and not line.startswith("#"))}


class NotifySocket:
    """What systemd does for Type=notify: a datagram socket named in $NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.name = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)

    def receive(self, timeout: float = 30.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path):
    s = NotifySocket(str(tmp_path / "notify.sock"))
    try:
        yield s
    finally:
        s.close()


# --- the unit files --------------------------------------------------------------------------

def test_service_unit_contents() -> None:
    v = _unit_values(SERVICE)
    assert v["Type"] == ["notify"]
    assert "network-online.target" in v["After"][0] and "network-online.target" in v["Wants"][0]
    assert v["EnvironmentFile"] == ["/etc/glacierfs/%i.conf"]
    assert v["Restart"] == ["on-failure"]
    exec_start = shlex.split(v["ExecStart"][0])
    assert exec_start[0] == "/usr/local/bin/glacierfs" and "-f" in exec_start
    assert any("fusermount3 -u" in line for line in v["ExecStartPre"])


def test_example_conf_and_mount_unit_options_parse() -> None:
    conf = _conf_values(EXAMPLE_CONF)
    opts = parse_options(conf["SOURCE"], [conf["OPTIONS"]])
    assert opts.region == "us-east-1" and opts.cache_size == 50 * 1024 ** 3
    v = _unit_values(MOUNT_UNIT)
    assert v["Type"] == ["fuse.glacierfs"]
    parse_options(v["What"][0], [v["Options"][0]])
    # systemd requires the unit name to be the escaped mount point
    assert MOUNT_UNIT.stem == v["Where"][0].strip("/").replace("-", "\\x2d").replace("/", "-")


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    exe = shutil.which("glacierfs", path="/usr/local/bin") or \
        str(Path(sys.executable).with_name("glacierfs"))
    service = SERVICE.read_text().replace("/usr/local/bin/glacierfs", exe)
    (tmp_path / "glacierfs@.service").write_text(service)
    (tmp_path / "glacierfs@test.service").write_text(service)
    shutil.copy(MOUNT_UNIT, tmp_path)
    for unit in ("glacierfs@.service", "glacierfs@test.service", MOUNT_UNIT.name):
        result = subprocess.run(["systemd-analyze", "verify", f"./{unit}"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
        ours = [line for line in (result.stdout + result.stderr).splitlines()
                if "glacierfs" in line or "mnt-glacier" in line]
        assert result.returncode == 0 and not ours, result.stdout + result.stderr


# --- sd_notify -----------------------------------------------------------------------------

def test_notify_without_socket_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready("x") is False


def test_notify_path_socket(notify_socket: NotifySocket,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.name)
    assert notify.ready("mounted us-east-1 on /mnt/x")
    assert notify_socket.receive(5) == {"READY": "1", "STATUS": "mounted us-east-1 on /mnt/x"}
    assert notify.stopping()
    assert notify_socket.receive(5)["STOPPING"] == "1"


def test_notify_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    s = NotifySocket(f"@glacierfs-test-{os.getpid()}")
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", s.name)
        assert notify.status("downloading")
        assert s.receive(5) == {"STATUS": "downloading"}
    finally:
        s.close()


def test_notify_unreachable_socket_is_harmless(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert notify.ready("x") is False


def test_service_command_line_notifies_ready_and_stopping(mounts: Mounts,
                                                          notify_socket: NotifySocket) -> None:
    """ExecStart= with the variables of a conf file, run as systemd runs it (foreground,
    NOTIFY_SOCKET set): READY=1 arrives when the mount is live; SIGTERM → STOPPING=1, exit 0."""
    conf = {"SOURCE": "us-east-1", "MOUNTPOINT": str(mounts.mountpoint),
            "OPTIONS": mounts.options()}
    exec_start = _unit_values(SERVICE)["ExecStart"][0]
    line = re.sub(r"\$\{(\w+)\}", lambda m: conf[m.group(1)], exec_start)
    argv = shlex.split(line)
    assert argv[0] == "/usr/local/bin/glacierfs"
    argv[:1] = [sys.executable, "-m", "glacierfs.cli"]
    mounts.used.add(mounts.mountpoint)
    proc = subprocess.Popen(argv, env=mounts.env(NOTIFY_SOCKET=notify_socket.name),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    mounts.procs.append(proc)
    message = notify_socket.receive(30)
    assert message["READY"] == "1", message
    assert str(mounts.mountpoint) in message["STATUS"]
    assert is_mounted(mounts.mountpoint) and os.listdir(mounts.mountpoint) == [VAULT]
    assert listed(mounts.mountpoint / VAULT)
    proc.send_signal(signal.SIGTERM)
    assert notify_socket.receive(20)["STOPPING"] == "1"
    assert proc.wait(20) == 0
    assert not is_mounted(mounts.mountpoint)


def _exec_start_pre(mountpoint: Path) -> subprocess.CompletedProcess[str]:
    """ExecStartPre= run as systemd runs it: ``$$`` is a literal ``$`` for the shell, which
    gets MOUNTPOINT from the environment (EnvironmentFile=)."""
    line = _unit_values(SERVICE)["ExecStartPre"][0]
    assert not line.startswith("-"), "a step whose failure is ignored is still logged as failed"
    argv = shlex.split(line.replace("$$", "$"))
    return subprocess.run(argv, env={**os.environ, "MOUNTPOINT": str(mountpoint)},
                          capture_output=True, text=True, timeout=30)


def test_exec_start_pre_succeeds_on_a_clean_start_and_clears_a_dead_mount(
        mounts: Mounts, tmp_path: Path) -> None:
    for clean in (mounts.mountpoint, tmp_path / "does-not-exist"):
        result = _exec_start_pre(clean)
        assert result.returncode == 0 and not result.stdout and not result.stderr, result
    live = mounts.mount()
    assert is_mounted(mounts.mountpoint)
    assert _exec_start_pre(mounts.mountpoint).returncode == 0
    assert is_mounted(mounts.mountpoint), "a live mount is not the step's to clear"
    os.kill(live, signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(live))
    with contextlib.suppress(OSError):
        os.stat(mounts.mountpoint)   # the kernel notices the dead daemon
    result = _exec_start_pre(mounts.mountpoint)
    assert result.returncode == 0, result
    assert not is_mounted(mounts.mountpoint)
    assert mounts.mount() > 0      # and the service starts again on the same mount point
