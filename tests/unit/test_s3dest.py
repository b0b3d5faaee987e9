"""Pure parts of ``glacierfs copy … s3://``: DEST parsing, the keys' ``cp -r`` rules' edge,
object metadata (rclone's mtime, the 2 KB limit), part sizes within S3's limits, shards."""

from __future__ import annotations

import urllib.parse
from pathlib import Path, PurePosixPath

import pytest

from glacierfs.aws import s3upload
from glacierfs.commands import s3dest
from glacierfs.commands.copyplan import Item, PlanError, in_shard

MIB = 1024 * 1024


def item(description: str = "d", mtime_ns: int = 1_560_000_000_000_000_000) -> Item:
    return Item(src=Path("/m/v/f"), dest=PurePosixPath("k"), mount=Path("/m"), size=1,
                mtime_ns=mtime_ns, tree_hash="ab" * 32, cache="absent", job_status=None,
                archive_id="A" * 138, vault="photos", description=description, key="k")


@pytest.mark.parametrize("text, expected", [
    ("s3://bucket", ("bucket", "")), ("s3://bucket/", ("bucket", "")),
    ("s3://bucket/p", ("bucket", "p")), ("s3://bucket/x/", ("bucket", "x/")),
    ("s3://b-1.x/a/b/c", ("b-1.x", "a/b/c"))])
def test_dest(text, expected):
    assert s3dest.parse_dest(text) == expected


@pytest.mark.parametrize("text", ["s3://", "s3:///key", "s3://a b/k"])
def test_bad_dest(text):
    with pytest.raises(PlanError):
        s3dest.parse_dest(text)


def test_mtime_as_rclone_writes_it():
    assert s3dest.mtime_text(1_560_000_000_000_000_000) == "1560000000"
    assert s3dest.mtime_text(1_560_000_000_500_000_000) == "1560000000.5"
    assert s3dest.mtime_text(1_560_000_000_000_000_123) == "1560000000.000000123"


def test_metadata_keeps_the_contract_and_fits_2kb():
    meta = s3dest.metadata(item("photos/été 100%.jpg"))
    assert meta["mtime"] == "1560000000"
    assert meta["glacier-archive-id"] == "A" * 138
    assert meta["glacier-tree-hash"] == "ab" * 32
    assert meta["glacier-vault"] == "photos"
    assert meta["glacier-description"].isascii()
    assert urllib.parse.unquote(meta["glacier-description"]) == "photos/été 100%.jpg"
    long = s3dest.metadata(item("x" * 3000))
    assert "glacier-description" not in long           # would not fit S3's 2 KB
    assert sum(len(k) + len(v) for k, v in long.items()) <= s3upload.MAX_METADATA_BYTES
    assert long["glacier-tree-hash"] == "ab" * 32


def test_keys_S3_cannot_take():
    assert s3dest.key_problem("a/b.txt") is None
    assert "1024" in (s3dest.key_problem("x" * 1025) or "")
    assert "UTF-8" in (s3dest.key_problem("bad\udcff") or "")


@pytest.mark.parametrize("size", [0, 1, 8 * MIB, 80 * 1024 * MIB, 5 * 1024 ** 4,
                                  s3upload.MAX_OBJECT])
def test_parts_stay_within_s3_limits(size):
    part = s3upload.part_size(size)
    assert part % MIB == 0 and part >= 5 * MIB and part <= s3upload.MAX_PART
    assert -(-size // part) <= s3upload.MAX_PARTS


def test_crc64nvme_is_s3s():
    # The check value of CRC-64/NVME for "123456789".
    assert s3upload.crc64nvme(b"123456789") == 0xAE8B14860A799888
    assert s3upload.crc64nvme(b"6789", s3upload.crc64nvme(b"12345")) == 0xAE8B14860A799888


def test_shards_split_every_archive_exactly_once():
    ids = [f"archive-{i}" for i in range(2000)]
    for n in (1, 2, 3, 8):
        owners = [[k for k in range(1, n + 1) if in_shard(a, k, n)] for a in ids]
        assert all(len(o) == 1 for o in owners)
        counts = [sum(1 for o in owners if o == [k]) for k in range(1, n + 1)]
        assert min(counts) > len(ids) / n * 0.8      # roughly even
    assert in_shard("archive-7", 2, 3) == in_shard("archive-7", 2, 3)
