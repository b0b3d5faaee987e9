"""The clock of the daily budget window, and the test clock that may stand in for it.

``GLACIERFS_TEST_CLOCK_FILE=PATH`` (environment of the mount): the file holds a number of seconds
added to the wall clock for the budget window only (polling, timeouts and job ages keep real
time). It is honoured only with a loopback ``endpoint_url`` (an emulator), so it can never change
what a mount against AWS may spend. Tests move it together with the emulator's own clock
(``POST /_sim/clock``) to retrieve an archive over emulated days in seconds.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from glacierfs.options import MountOptions, is_loopback_url

log = logging.getLogger(__name__)

ENV = "GLACIERFS_TEST_CLOCK_FILE"


def budget_clock(options: MountOptions) -> Callable[[], float]:
    path = os.environ.get(ENV)
    if not path:
        return time.time
    if not is_loopback_url(options.endpoint_url):
        log.warning("%s is ignored: it applies only to a loopback endpoint_url", ENV)
        return time.time
    log.info("budget window clock: wall clock plus the offset in %s", path)
    return _FileOffsetClock(path)


class _FileOffsetClock:
    """Wall clock plus the seconds in a file, re-read when the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: int | None = None
        self._offset = 0.0

    def __call__(self) -> float:
        try:
            stamp = os.stat(self.path).st_mtime_ns
            if stamp != self._stamp:
                with open(self.path, encoding="ascii") as f:
                    self._offset = float(f.read().strip() or 0)
                self._stamp = stamp
        except (OSError, ValueError):
            pass  # missing or half-written: keep the last offset
        return time.time() + self._offset
