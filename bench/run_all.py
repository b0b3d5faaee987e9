"""Run every benchmark in turn: at its default sizes, at smaller ones (``--quick``, a few minutes
in all), or at tiny ones (``--tiny``: each one only shows it still runs end to end; its figures
mean nothing). ``--only NAME ...`` picks some of them.

Each benchmark runs as its own process and takes down what it started when it ends; a
benchmark that fails does not stop the rest, and the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Every benchmark in this folder: name -> (--quick arguments, --tiny arguments). The other .py
# files here are helpers: common.py (shared plumbing), passthroughfs.py (read_cached.py's
# baseline) and this runner. tests/bench checks that this table names every benchmark.
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "treehash.py": (["--size", "128M"],
                    ["--size", "4M", "--repeat", "1"]),
    "read_cached.py": (["--size", "128M", "--random-reads", "1000"],
                       ["--size", "4M", "--random-reads", "50", "--repeat", "1"]),
    "download.py": (["--size", "128M", "--throttled-size", "64M", "--repeat", "1"],
                    ["--size", "4M", "--throttled-size", "2M", "--bandwidth", "16M",
                     "--options", "chunk_size=1M", "--repeat", "1"]),
    "million.py": (["--count", "50000"],
                   ["--count", "50", "--repeat", "1"]),
    "api_economy.py": (["--count", "200", "--rounds", "5"],
                       ["--count", "20", "--rounds", "2"]),
    "ranged.py": (["--size", "128M", "--repeat", "1"],
                  ["--size", "6M", "--range-size", "1M", "--chunk-size", "1M", "--repeat", "1"]),
    "copy_tree.py": (["--size", "256M", "--files", "16"],
                     ["--size", "32M", "--files", "16", "--chunk-size", "1M",
                      "--job-delay", "0.2"]),
    "copy_s3.py": (["--size", "64M", "--files", "4"],
                   ["--size", "8M", "--files", "2", "--bandwidth", "16M"]),
    "notify.py": (["--repeat", "1", "--poll", "10"],
                  ["--repeat", "1", "--poll", "3"]),
    "soak.py": (["--quick"],   # 10 minutes by default; --quick: 60 s
                ["--duration", "15", "--sample", "1", "--workers", "2"]),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="benchmarks: " + ", ".join(BENCHMARKS))
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes: minutes, not hours")
    size.add_argument("--tiny", action="store_true",
                      help="tiny sizes: only checks that every benchmark runs")
    p.add_argument("--only", nargs="+", metavar="NAME", default=None,
                   help="run only these (e.g. treehash read_cached.py)")
    args = p.parse_args()
    names = list(BENCHMARKS)
    if args.only:
        wanted = [n if n.endswith(".py") else n + ".py" for n in args.only]
        unknown = [n for n in wanted if n not in BENCHMARKS]
        if unknown:
            p.error(f"no benchmark {', '.join(unknown)} (there are: {', '.join(BENCHMARKS)})")
        names = wanted
    failed = []
    for name in names:
        quick_args, tiny_args = BENCHMARKS[name]
        extra = quick_args if args.quick else tiny_args if args.tiny else []
        print(f"=== {name} {' '.join(extra)}".rstrip(), flush=True)
        proc = subprocess.Popen([sys.executable, str(HERE / name), *extra])
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the benchmark too: let it take its mounts and emulator down.
            proc.wait()
            raise
        except SystemExit:
            # SIGTERM reached only this runner: pass it on, then wait for the clean-up.
            proc.terminate()
            proc.wait()
            raise
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminated)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
