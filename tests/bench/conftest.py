"""Benchmark tests (tests/bench): every script in bench/ answers ``--help`` without starting
anything, and every benchmark runs end to end at a tiny size, as a subprocess with the venv's
python, leaving no process or mount behind (also when stopped half-way). Helpers live in
bench_support.py.

The runs that mount are skipped when FUSE cannot be used here (not root, a tool missing,
/dev/fuse does not open); the tree-hash benchmark and the ``--help`` checks run everywhere.
They check that the benchmarks work, not what they measure: tiny sizes on a shared machine
say nothing about speed.
"""

from __future__ import annotations

import pytest
from bench_support import fuse_unavailable

FUSE_UNAVAILABLE = fuse_unavailable()


@pytest.fixture
def needs_fuse() -> None:
    if FUSE_UNAVAILABLE:
        pytest.skip(f"FUSE unavailable: {FUSE_UNAVAILABLE}")
