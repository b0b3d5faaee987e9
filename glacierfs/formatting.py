"""Bytes and durations as people read them, one way for the CLI and the daemon alike
(status lines, Queued messages, progress, summaries)."""

from __future__ import annotations


def human(n: float) -> str:
    """``1536`` → ``1.5 KiB``; whole bytes below a KiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def duration(seconds: float) -> str:
    """``75`` → ``75s``, ``605`` → ``10m05s``, ``7260`` → ``2h01m``; never negative."""
    seconds = int(max(seconds, 0))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
