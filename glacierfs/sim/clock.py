"""Emulated time and the date formats Glacier uses.

Emulated time is wall-clock time plus an offset that tests can only move forward
(``POST /_sim/clock``). Job completion, output expiry and daily inventory snapshots all read this
clock, and the offset is persisted so a restart does not move time backwards.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, UTC
from collections.abc import Callable

DAY = 86400.0


class Clock:
    """Wall clock plus a persisted, monotonically growing offset."""

    def __init__(self, offset: float = 0.0, on_change: Callable[[float], None] | None = None,
                 source: Callable[[], float] = time.time) -> None:
        self._offset = offset
        self._on_change = on_change
        self._source = source
        self._lock = threading.Lock()

    @property
    def offset(self) -> float:
        return self._offset

    def now(self) -> float:
        return self._source() + self._offset

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("the emulated clock only moves forward")
        with self._lock:
            self._offset += seconds
            if self._on_change:
                self._on_change(self._offset)
        return self.now()


def iso(ts: float | None) -> str | None:
    """Glacier's timestamp format, millisecond precision: 2012-05-15T17:19:46.700Z."""
    if ts is None:
        return None
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> float:
    """Parse an ISO 8601 date or timestamp (``Z`` or an offset; naive means UTC)."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def midnight_at_or_before(ts: float) -> float:
    """Start (UTC) of the emulated day holding ``ts``."""
    return ts - (ts % DAY)
