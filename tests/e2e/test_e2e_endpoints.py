"""Endpoints that send no tree hash per range or ignore Range: glacierfs holds the bytes
unreadable until the whole archive's tree hash equals the inventory's, then serves them;
otherwise the read fails (EIO) with the reason in ``user.glacier.job.status_message``.

Tried against moto's Glacier server (what LocalStack uses: it ignores Range, answering 200 with
the whole archive, sends no ``x-amz-sha256-tree-hash``, and its inventory's SHA256TreeHash is a
plain SHA-256 of the archive, which is the tree hash only up to 1 MiB) and against the
project's emulator with ``--no-tree-hash-header`` and ``--ignore-range``.
"""

from __future__ import annotations

import os
import random
import socket
import time
from pathlib import Path

import pytest
from e2e_util import (NOT_READY_TEXT, MIB, getfattr_all, getfattr_one, run, start_emulator,
                      wait_for, wait_listed)

from glacierfs.sim.testing import make_client

pytestmark = pytest.mark.e2e

VAULT = "v"
RNG = random.Random(1212)


def read_or_fail(path: Path, timeout: float = 40.0) -> tuple[int, bytes, str]:
    """``cat`` until it answers something other than EAGAIN."""
    deadline = time.monotonic() + timeout
    while True:
        proc = run("cat", path)
        if proc.returncode == 0 or NOT_READY_TEXT not in proc.stderr:
            return proc.returncode, proc.stdout, proc.stderr
        if time.monotonic() > deadline:
            pytest.fail(f"{path} still unavailable after {timeout}s")
        time.sleep(0.3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def moto_url():
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(),
                                           verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def test_moto_archives_read_exact_and_a_wrong_inventory_hash_is_refused(moto_url, mounts):
    client = make_client(moto_url)
    client.create_vault(vaultName=VAULT)
    files = {"a.txt": RNG.randbytes(1000), "b.bin": RNG.randbytes(MIB),
             "c.bin": RNG.randbytes(300_000)}
    for name, data in files.items():
        client.upload_archive(vaultName=VAULT, body=data, archiveDescription=name)
    # Over 1 MiB moto's inventory hash (SHA-256 of the whole) is not the tree hash: wrong.
    big = RNG.randbytes(2 * MIB + 5)
    client.upload_archive(vaultName=VAULT, body=big, archiveDescription="big.bin")
    mnt = mounts(moto_url, "moto", chunk_size="1M", tier="Expedited")
    wait_listed(mnt / VAULT, set(files) | {"big.bin"}, timeout=40)
    for name in files:
        run("cat", mnt / VAULT / name)  # start every job at once
    for name, data in files.items():
        code, out, err = read_or_fail(mnt / VAULT / name)
        assert code == 0, err
        assert out == data
        assert getfattr_one(mnt / VAULT / name, "user.glacier.cache") == "cached"
    code, out, err = read_or_fail(mnt / VAULT / "big.bin")
    assert code == 1 and out == b"" and "Input/output error" in err
    attrs = getfattr_all(mnt / VAULT / "big.bin")
    assert attrs["user.glacier.job.status"] == "Failed"
    assert "does not match" in attrs["user.glacier.job.status_message"] or \
        "!= the inventory's" in attrs["user.glacier.job.status_message"]
    assert attrs["user.glacier.cache"] == "absent"  # nothing of it kept


@pytest.mark.parametrize("flag", ["--no-tree-hash-header", "--ignore-range"])
def test_emulator_without_chunk_hashes_verifies_the_whole(tmp_path_factory, mounts, flag):
    sim = start_emulator(tmp_path_factory.mktemp("sim"), flag, "--delay", "Expedited=0.5")
    try:
        client = sim.client()
        client.create_vault(vaultName=VAULT)
        good = os.urandom(3 * MIB + 777)
        bad = os.urandom(2 * MIB + 1)
        client.upload_archive(vaultName=VAULT, body=good, archiveDescription="good.bin")
        client.upload_archive(vaultName=VAULT, body=bad, archiveDescription="bad.bin")
        mnt = mounts(sim.url, "sim", chunk_size="1M", tier="Expedited")
        wait_listed(mnt / VAULT, {"good.bin", "bad.bin"})
        before = sim.stats()["requests"].get("GetJobOutput", 0)
        code, out, err = read_or_fail(mnt / VAULT / "good.bin")
        assert code == 0, err
        assert out == good
        wait_for(lambda: getfattr_one(mnt / VAULT / "good.bin", "user.glacier.cache")
                 == "cached", 20, "good.bin cached")
        # Each chunk asked for at most about once (workers whose ranged request got the
        # whole body while another worker reads it drop theirs), never a whole body per read.
        assert sim.stats()["requests"]["GetJobOutput"] - before <= 4 + 3
        # Flipped bytes, and no hash per range to catch them: the whole must refuse them.
        # Every answer corrupted: with Range ignored, several workers may ask at once and only
        # one answer is read, so a single corrupted answer might be one that was dropped.
        sim.add_fault({"operation": "GetJobOutput", "fault": "corrupt"})
        code, out, err = read_or_fail(mnt / VAULT / "bad.bin")
        sim.clear_faults()
        assert code == 1 and out == b"" and "Input/output error" in err
        attrs = getfattr_all(mnt / VAULT / "bad.bin")
        assert attrs["user.glacier.job.status"] == "Failed"
        assert "!= the inventory's" in attrs["user.glacier.job.status_message"]
        assert attrs["user.glacier.cache"] == "absent"
        assert run("cat", mnt / VAULT / "good.bin").stdout == good
    finally:
        sim.stop()
