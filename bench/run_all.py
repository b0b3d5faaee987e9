"""Run every benchmark in turn with its default sizes (pass ``--quick`` for small ones)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "treehash.py": ["--size", "128M"],
    "read_cached.py": ["--size", "128M", "--random-reads", "1000"],
    "download.py": ["--size", "128M", "--throttled-size", "64M", "--repeat", "1"],
    "million.py": ["--count", "50000"],
    "api_economy.py": ["--count", "200", "--rounds", "5"],
    "ranged.py": ["--size", "128M", "--repeat", "1"],
    "copy.py": ["--size", "256M", "--files", "16"],
    "copy_s3.py": ["--size", "64M", "--files", "4"],
    "soak.py": ["--quick"],   # 10 minutes by default; --quick only checks it runs
}


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    failed = []
    for name, quick_args in BENCHMARKS.items():
        print(f"=== {name}", flush=True)
        cmd = [sys.executable, str(HERE / name), *(quick_args if quick else [])]
        if subprocess.run(cmd).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
