"""Helpers for tests/bench: run a script of bench/ as a user would (``python bench/NAME.py``, the
venv's python, a subprocess), and find whatever it left behind.

Every run gets a token in its environment; processes inherit it (the emulator, the glacierfs
daemon even after it detaches, rsync, unzip, the passthrough), so any process still carrying it
after the script exited was started by that run and left behind. Mounts are found by their
place under the run's work dir. Whatever is found is reported, then killed and unmounted, so a
broken benchmark fails its test without breaking the next one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
TOKEN_VAR = "GLACIERFS_BENCH_TEST_RUN"
# Scripts in bench/ that are not benchmarks, and what runs them here.
HELPERS = {
    "common.py": "imported by every benchmark",
    "passthroughfs.py": "read_cached.py's baseline, run by its tiny run",
    "run_all.py": "run with --tiny --only treehash",
}
# Tools the benchmarks run besides the venv's python and aws (scripts/setup installs them).
TOOLS = ("fusermount3", "mount", "umount", "rsync", "unzip", "find", "ls", "wc")
EXIT_GRACE = 10.0  # seconds for a finished run's processes to be gone (its own waits are done)


def load_run_all() -> ModuleType:
    """bench/run_all.py as a module: its BENCHMARKS table is the list of benchmarks."""
    spec = importlib.util.spec_from_file_location("bench_run_all", BENCH / "run_all.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scripts() -> list[str]:
    return sorted(p.name for p in BENCH.glob("*.py"))


def fuse_unavailable() -> str | None:
    """Why benchmarks that mount cannot run here, or None."""
    if os.geteuid() != 0:
        return "the benchmarks mount FUSE and tmpfs filesystems and drop caches: they need root"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"tools not on PATH: {', '.join(missing)}"
    if not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        return "/proc/sys/vm/drop_caches is not writable (the cold-read benchmark drops caches)"
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as exc:
        return f"/dev/fuse cannot be opened: {exc.strerror}"
    os.close(fd)
    return None


# --- what a run left behind ----------------------------------------------------------------

def processes_with(token: str) -> dict[int, str]:
    """Live processes whose environment carries ``token``: pid -> command line."""
    needle = f"{TOKEN_VAR}={token}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if needle not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue  # gone, or a zombie
        found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    prefix = str(path.resolve())
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def take_down(token: str, workdir: Path) -> list[str]:
    """What the run left behind, after giving it ``EXIT_GRACE`` seconds to go away; all of it
    is then killed and unmounted."""
    deadline = time.monotonic() + EXIT_GRACE
    while (processes_with(token) or mounts_under(workdir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    procs, points = processes_with(token), mounts_under(workdir)
    for pid in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for point in points:
        if subprocess.run(["fusermount3", "-uz", point], capture_output=True).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True)
    return ([f"process {pid}: {cmd}" for pid, cmd in procs.items()]
            + [f"mount {point}" for point in points])


# --- running a script ------------------------------------------------------------------------

@dataclass
class Run:
    """A finished run of one script."""
    argv: list[str]
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    timed_out: bool = False
    leftovers: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def describe(self) -> str:
        return (f"{' '.join(self.argv)}\nexit {self.returncode} after {self.seconds:.0f} s"
                f"{' (timed out)' if self.timed_out else ''}\n--- stdout\n{self.stdout[-4000:]}"
                f"\n--- stderr\n{self.stderr[-4000:]}")


class Started:
    """A script running as a subprocess with its own token; ``finish`` waits for it, stopping
    it with SIGTERM (then SIGKILL) past its timeout, and collects what it left behind."""

    def __init__(self, script: str, args: list[str], workdir: Path) -> None:
        self.token = uuid.uuid4().hex
        self.workdir = workdir
        self.run = Run([sys.executable, str(BENCH / script), *args])
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.run.argv, cwd=REPO, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, TOKEN_VAR: self.token})

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float) -> Run:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.run.timed_out = True
            self.proc.terminate()  # the benchmark's own clean-up runs on SIGTERM
            try:
                out, err = self.proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
        self.run.seconds = time.monotonic() - self.started
        self.run.returncode, self.run.stdout, self.run.stderr = self.proc.returncode, out, err
        self.run.leftovers = take_down(self.token, self.workdir)
        return self.run


def run_script(script: str, args: list[str], workdir: Path, timeout: float) -> Run:
    workdir.mkdir(parents=True, exist_ok=True)
    return Started(script, args, workdir).finish(timeout)
