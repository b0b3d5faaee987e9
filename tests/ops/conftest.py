"""Operations tests (tests/ops): the daemon run as mount(8), fstab and systemd run it, on a
real FUSE mount. Helpers live in ops_support.py. Everything here is skipped when FUSE is not
usable (not root, no fusermount3, /dev/fuse does not open)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ops_support import FILES, FUSE_UNAVAILABLE, VAULT, Mounts

from glacierfs.sim.testing import SimProcess, make_client, upload


@pytest.fixture(autouse=True)
def _needs_fuse() -> None:
    if FUSE_UNAVAILABLE:
        pytest.skip(f"FUSE unavailable: {FUSE_UNAVAILABLE}")


@pytest.fixture
def seeded(sim: SimProcess) -> SimProcess:
    client = make_client(sim.url, max_attempts=1)
    client.create_vault(vaultName=VAULT)
    for description, data in FILES.items():
        upload(client, VAULT, data, description)
    return sim


@pytest.fixture
def mounts(seeded: SimProcess, tmp_path: Path):
    m = Mounts(seeded, tmp_path)
    try:
        yield m
    finally:
        m.cleanup()


