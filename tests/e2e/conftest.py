"""End-to-end fixtures: the Glacier emulator and real kernel mounts of glacierfs against it.

Every test here runs the daemon as a user would (``python -m glacierfs.cli REGION MNT -o ...``,
which returns once the mount is live) and looks at the mount only through ordinary tools
(ls, find, stat, getfattr, setfattr, cat, cp, rsync, dd) run as subprocesses. Mounts are always
taken down in teardown, even when a test fails, so a dead mount never breaks the next test.

The whole directory is skipped when FUSE cannot be used here (not root, no fusermount3, /dev/fuse
does not open, or a tool is missing).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_util import Mounts, fuse_unavailable


@pytest.fixture(scope="session", autouse=True)
def _fuse_available() -> None:
    reason = fuse_unavailable()
    if reason:
        pytest.skip(reason)


def _mounts(base: Path) -> Iterator[Mounts]:
    mounts = Mounts(base)
    try:
        yield mounts
    finally:
        problems = mounts.close()
    if problems:
        pytest.fail("glacierfs logged internal errors:\n" + "\n".join(problems[:20]))


@pytest.fixture
def mounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounts]:
    """Factory of mounts unmounted at the end of the test."""
    yield from _mounts(tmp_path_factory.mktemp("mounts"))


@pytest.fixture(scope="module")
def module_mounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounts]:
    """Factory of mounts shared by a module, unmounted after its last test."""
    yield from _mounts(tmp_path_factory.mktemp("mounts"))
