"""Helpers shared by the suites that run real mounts (e2e, ops, reliability)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def daemon_pids(mountpoint: Path | str) -> list[int]:
    """glacierfs daemon processes whose command line names this mount point (started as
    ``python -m glacierfs.cli``, as ``glacierfs`` or by ``mount.fuse3``)."""
    target = os.fsencode(str(mountpoint))
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"glacierfs" in a for a in args[:3]) and target in args:
            pids.append(int(entry))
    return pids


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, what: str = "condition",
             interval: float = 0.2) -> object:
    """Poll until ``predicate()`` is truthy; returns its value, or fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
