"""Shared plumbing for the benchmarks: the machine, the emulator, mounts, timing, tables.

Every benchmark measures glacierfs and its baseline in the same run, alternating the two sides
for ``--repeat`` rounds, and reports the median of each side and their ratio: these machines
are shared and noisy, so only a ratio measured side by side means anything.

Everything a benchmark starts is taken down when it ends, however it ends (an error, Ctrl-C,
SIGTERM from ``timeout`` or a test): the emulator is a context manager (``emulator``), mounts
are unmounted in ``finally`` (``mounted``), and ``run`` turns SIGTERM into an exception so
those ``finally`` blocks run. Only SIGKILL leaves something behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from types import FrameType
from pathlib import Path

MIB = 1024 * 1024
GIB = 1024 * MIB
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from glacierfs.sim.testing import SimProcess, make_client  # noqa: E402

MOUNT_TIMEOUT = 60.0


# --- running --------------------------------------------------------------------------------

class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwind (a BaseException, so no ``except Exception`` keeps a
    benchmark going) and let every ``finally`` take its mounts and processes down."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop(signum: int, frame: FrameType | None) -> None:
    # Only the first signal unwinds: a second one (a Ctrl-C then a SIGTERM from a runner that
    # passes it on) must not cut the clean-up short.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signal.Signals(signum).name)


def run(main: Callable[[], int | None]) -> None:
    """Run a benchmark's ``main`` and exit with its status: 130 on Ctrl-C, 143 on SIGTERM,
    after the clean-up."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop)
    try:
        status = main()
    except KeyboardInterrupt:
        print("interrupted; everything started was taken down", file=sys.stderr, flush=True)
        sys.exit(130)
    except Terminated as exc:
        print(f"stopped by {exc}; everything started was taken down", file=sys.stderr,
              flush=True)
        sys.exit(143)
    sys.exit(status or 0)


# --- arguments and output --------------------------------------------------------------------

def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--workdir", default=None,
                   help="scratch directory on a real disk (default: a new dir in /var/tmp)")
    p.add_argument("--repeat", type=int, default=3, help="alternating rounds per measurement")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    return p


def parse_size(text: str) -> int:
    units = {"k": 1024, "m": MIB, "g": GIB}
    text = text.strip().lower().rstrip("ib")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


@contextlib.contextmanager
def workdir(args: argparse.Namespace, name: str) -> Iterator[Path]:
    if args.workdir:
        path = Path(args.workdir)
        path.mkdir(parents=True, exist_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix=f"glacierfs-bench-{name}-", dir="/var/tmp"))
    try:
        yield path
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(path, ignore_errors=True)


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "memory": mem,
            "kernel": platform.release(), "python": platform.python_version(),
            "load": " ".join(Path("/proc/loadavg").read_text().split()[:3])}


def print_machine() -> None:
    m = machine()
    print(f"machine: {m['nproc']} x {m['cpu']}, {m['memory']}, Linux {m['kernel']}, "
          f"Python {m['python']}, load {m['load']}")


def table(title: str, rows: list[tuple[str, str, str, str, str]]) -> None:
    """rows: (measurement, glacierfs, baseline, ratio, goal)."""
    head = ("measurement", "glacierfs", "baseline", "ratio", "goal")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(5)]
    print(f"\n{title}")
    for row in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(flush=True)


def verdict(ratio: float, goal: float, higher_is_better: bool = True) -> str:
    ok = ratio >= goal if higher_is_better else ratio <= goal
    return f"{'>=' if higher_is_better else '<='} {goal:g}x {'met' if ok else 'MISSED'}"


def median(values: list[float]) -> float:
    return statistics.median(values)


def alternate(repeat: int, a: Callable[[], float], b: Callable[[], float]) -> tuple[float, float]:
    """Run a and b alternately ``repeat`` times (a first on even rounds, b first on odd ones);
    medians of what they return."""
    ra: list[float] = []
    rb: list[float] = []
    for i in range(repeat):
        if i % 2 == 0:
            ra.append(a())
            rb.append(b())
        else:
            rb.append(b())
            ra.append(a())
    return median(ra), median(rb)


# --- the machine's caches and processes ----------------------------------------------------

def drop_caches() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        raise SystemExit(f"cannot drop the page cache ({exc}); run as root") from None


def proc_status(pid: int, field: str) -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


# --- the emulator ----------------------------------------------------------------------------

@contextlib.contextmanager
def emulator(base: Path, *args: str, verbose: bool = False) -> Iterator[SimProcess]:
    """The emulator for the duration, stopped however the block ends; ``verbose`` logs every
    request line (with its query) to base/sim.log."""
    base.mkdir(parents=True, exist_ok=True)
    sim = SimProcess(base / "sim", args=["--verbose" if verbose else "--quiet", *args],
                     log_path=base / "sim.log")
    try:
        yield sim
    finally:
        sim.stop()


def client(sim: SimProcess):  # noqa: ANN201 (a boto3 client)
    return make_client(sim.url, read_timeout=300)


# --- mounts --------------------------------------------------------------------------------

def daemon_pid(mountpoint: Path) -> int | None:
    """The glacierfs process serving ``mountpoint`` (started by us)."""
    target = str(mountpoint)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [w.decode(errors="replace") for w in argv]
        if "glacierfs.cli" in words and target in words and "sim" not in words:
            return int(entry.name)
    return None


def mount_glacierfs(sim: SimProcess, mountpoint: Path, cache_dir: Path,
                    extra: str = "") -> float:
    """Mount; returns the seconds the mount command took (it returns once the mount is live).
    A mount that fails or is interrupted half-way is taken down before the error goes on."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    opts = f"endpoint_url={sim.url},cache_dir={cache_dir},poll=1"
    if "log=" not in extra:  # next to the mount point, for --keep runs that went wrong
        opts += f",log={mountpoint}.log"
    if extra:
        opts += "," + extra
    started = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-m", "glacierfs.cli", "us-east-1", str(mountpoint),
                        "-o", opts], check=True, timeout=MOUNT_TIMEOUT,
                       env={**os.environ, **_sim_env()})
    except BaseException:
        unmount(mountpoint)
        raise
    return time.perf_counter() - started


def _sim_env() -> dict[str, str]:
    from glacierfs.sim.testing import aws_env
    env = aws_env({})
    return {k: v for k, v in env.items() if k.startswith("AWS_")}


def unmount(mountpoint: Path, timeout: float = 30.0) -> None:
    """Unmount and wait for the serving process to exit (it is ours); killed if it does not.
    Safe to call on a mount point that was never mounted."""
    pid = daemon_pid(mountpoint)
    if _is_mount(mountpoint):
        result = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
        if result.returncode != 0:
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return
        with contextlib.suppress(OSError):
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
            if state == "Z":
                return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if _is_mount(mountpoint):
        subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)


def _is_mount(path: Path) -> bool:
    """os.path.ismount, also for a mount whose daemon died (stat fails with ENOTCONN)."""
    target = os.path.abspath(path)
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 1 and fields[1].replace("\\040", " ") == target:
                return True
    return False


@contextlib.contextmanager
def mounted(sim: SimProcess, mountpoint: Path, cache_dir: Path, extra: str = "") -> Iterator[float]:
    seconds = mount_glacierfs(sim, mountpoint, cache_dir, extra)
    try:
        yield seconds
    finally:
        unmount(mountpoint)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


def getxattr(path: Path, name: str) -> str | None:
    try:
        return os.getxattr(path, name).decode()
    except OSError:
        return None


# --- reading -------------------------------------------------------------------------------

def read_sequential(path: Path | list[Path], block: int = MIB) -> tuple[int, float]:
    """Read files start to end in ``block`` reads; (bytes, seconds)."""
    paths = path if isinstance(path, list) else [path]
    buf = bytearray(block)
    total = 0
    started = time.perf_counter()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            while True:
                n = os.readv(fd, [buf])
                if not n:
                    break
                total += n
        finally:
            os.close(fd)
    return total, time.perf_counter() - started


def read_random(path: Path, offsets: list[int], block: int = 4096) -> float:
    """pread ``block`` bytes at each offset with readahead off; seconds."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        started = time.perf_counter()
        for off in offsets:
            if len(os.pread(fd, block, off)) != block:
                raise RuntimeError(f"short read at {off} in {path}")
        return time.perf_counter() - started
    finally:
        os.close(fd)


def mib_s(nbytes: int, seconds: float) -> float:
    return nbytes / MIB / seconds


# --- archives in the emulator ----------------------------------------------------------------

def upload_file(glacier, vault: str, path: Path, description: str,  # noqa: ANN001
                part: int = 64 * MIB) -> str:
    """Upload a file as one archive (multipart); returns the archive id."""
    from glacierfs import treehash

    size = path.stat().st_size
    upload = glacier.initiate_multipart_upload(vaultName=vault, archiveDescription=description,
                                               partSize=str(part))["uploadId"]
    hashes = []
    with open(path, "rb") as f:
        for start in range(0, size, part):
            data = f.read(part)
            hashes.append(treehash.tree_hash(data))
            glacier.upload_multipart_part(vaultName=vault, uploadId=upload, body=data,
                                          range=f"bytes {start}-{start + len(data) - 1}/*")
    done = glacier.complete_multipart_upload(vaultName=vault, uploadId=upload,
                                             archiveSize=str(size),
                                             checksum=treehash.fold(hashes).hex())
    return done["archiveId"]


def write_random_file(path: Path, size: int, block: int = 64 * MIB) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(block, left)
            f.write(os.urandom(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def passthrough(source: Path, mountpoint: Path) -> Iterator[None]:
    """bench/passthroughfs.py serving ``source`` on ``mountpoint`` for the duration."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("passthroughfs.py")),
                             str(source), str(mountpoint)], stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.ismount(mountpoint) or proc.poll() is not None, 30,
                 "the passthrough mount", interval=0.05)
        if proc.poll() is not None:
            raise RuntimeError("passthroughfs.py exited before mounting")
        yield
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if _is_mount(mountpoint):
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)


if __name__ == "__main__":
    argparse.ArgumentParser(
        description="Shared plumbing for the benchmarks in this folder; it measures nothing "
                    "itself. Run one of them (python bench/NAME.py --help) or all "
                    "(python bench/run_all.py --help).").parse_args()
    print(__doc__)
