"""What every command shares: exit codes, the one-line error, reading a mount's xattrs, and
finding the glacierfs mount a path lies on. Commands talk to a running mount through its
extended attributes only, so they work for any user who can see the mount."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

STATUS_XATTR = "user.glacier.status"     # the mount root's JSON status document
BY_ID_DIR = ".by-id"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_STUCK = 0, 1, 2, 3, 4


class CommandError(Exception):
    """One line for the user; the command exits non-zero."""


def read_xattr(path: Path | str, name: str) -> str | None:
    """The attribute as text, or None when the file has none (or is gone). A path of an
    in-process source (``glaciersrc.GlacierPath``) answers for itself."""
    if hasattr(path, "xattr"):
        return path.xattr(name)  # type: ignore[union-attr]
    try:
        return os.getxattr(path, name).decode("utf-8", "replace")
    except OSError:
        return None


def glacierfs_mounts() -> list[Path]:
    """Every glacierfs mount point this process can see."""
    mounts = []
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "fuse.glacierfs":
                mounts.append(Path(fields[1].replace("\\040", " ")))
    return mounts


def mount_of(path: Path | str, mounts: list[Path] | None = None) -> Path | None:
    """The innermost glacierfs mount holding ``path`` (symlinks resolved), or None."""
    best = None
    try:
        resolved = Path(path).resolve()
    except OSError:
        return None
    for mnt in glacierfs_mounts() if mounts is None else mounts:
        if resolved == mnt or mnt in resolved.parents:
            if best is None or len(str(mnt)) > len(str(best)):
                best = mnt
    return best


def seconds(text: str) -> float:
    """An argparse type for --timeout: a number of seconds, not negative (nor nan/inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 or more seconds")
    return value
