"""Request counters for ``/_sim/stats``: tests assert how many calls a client made (for example
that polling uses ListJobs rather than one DescribeJob per job)."""

from __future__ import annotations

import threading
from collections import Counter


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._bytes = 0

    def count(self, operation: str) -> None:
        with self._lock:
            self._requests[operation] += 1

    def sent(self, nbytes: int) -> None:
        with self._lock:
            self._bytes += nbytes

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {"requests": dict(self._requests), "total": sum(self._requests.values()),
                    "bytes_sent": self._bytes}

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._bytes = 0
