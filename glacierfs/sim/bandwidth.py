"""Bandwidth caps for job-output bodies: a token bucket per connection, one for the account.

Glacier serves each GetJobOutput stream at a limited rate, and tools that fetch aligned ranges
in parallel get a multiple of it; on loopback every connection would otherwise run at memory
speed, so nothing could measure that. ``--bandwidth RATE`` gives each connection its own
bucket, ``--bandwidth-total RATE`` adds one shared by all connections.

A bucket lends: ``take(n)`` debits ``n`` bytes at once and sleeps until the debt is paid back at
the bucket's rate, so concurrent takers of a shared bucket queue behind each other's debt and
together get the rate. Thread-safe (one request thread per connection).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

# A bucket holds at most this long of its rate as burst: short enough that a 1 s measurement
# sees the cap, long enough that sleeping between blocks costs nothing measurable.
BURST_SECONDS = 0.05
# Bodies go out in blocks of at most this much when capped: small next to any rate worth
# setting, large enough that a sendfile call per block is cheap.
MAX_BLOCK = 256 * 1024
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}


def parse_rate(text: str) -> float:
    """Bytes per second from ``32M`` (32 MiB/s), ``512K``, ``1G`` or a plain number."""
    match = _RATE.match(text)
    if not match:
        raise ValueError(f"not a rate: {text!r} (want e.g. 32M, 512K or bytes per second)")
    rate = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if rate <= 0:
        raise ValueError(f"a rate must be positive: {text!r}")
    return rate


class TokenBucket:
    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate
        self.burst = rate * BURST_SECONDS
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = threading.Lock()

    def block_size(self) -> int:
        """How much to send between two takes."""
        return max(16 * 1024, min(MAX_BLOCK, int(self.burst)))

    def take(self, n: int) -> None:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
