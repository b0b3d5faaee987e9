"""``glacierfs copy … s3://BUCKET[/PREFIX]`` from a live mount into moto's S3 server: names from
every description format, duplicates and non-ASCII names become keys by ``cp -r``'s rules; each
object has the archive's bytes, a CRC64NVME equal to the bytes', the metadata (``mtime``,
``glacier-archive-id``, ``glacier-tree-hash``) and the storage class; the manifest lists them;
a rerun starts, downloads and uploads nothing; a foreign object at a key is left alone (exit 1);
a copy killed with SIGKILL half-way through a multipart upload is finished by a rerun with no
upload left behind; S3 answering SlowDown and 500 for a while loses and duplicates nothing; two
shards on two "machines" (two mounts with their own state directories) copy each archive once,
with one job per archive.

Each test has its own vault (mounted alone with ``vaults=``), so counters and jobs of one test
never show up in another. S3 requests go through a small proxy in front of moto that can delay
or refuse requests (SlowDown, 500) and counts what it forwards.
"""

from __future__ import annotations

import base64
import calendar
import http.client
import http.server
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest
from e2e_util import MIB, TOOL_ENV, archive_jobs, running_emulator, wait_listed
from mount_support import wait_for

from glacierfs.commands.demo import cloudberry, fastglacier, mt2
from glacierfs.sim import s3server

pytestmark = pytest.mark.e2e

BUCKET = "migration"
T0 = calendar.timegm((2019, 6, 1, 12, 0, 0))


def crc64nvme_b64(data: bytes) -> str:
    from awscrt import checksums
    return base64.b64encode(checksums.crc64nvme(data).to_bytes(8, "big")).decode()


def glacierfs(*args: object, timeout: float = 240, env: dict | None = None):
    proc = subprocess.run([sys.executable, "-m", "glacierfs.cli", *map(str, args)],
                          capture_output=True, timeout=timeout, env=env or TOOL_ENV)
    proc.stderr = proc.stderr.decode("utf-8", "replace")  # type: ignore[assignment]
    proc.stdout = proc.stdout.decode("utf-8", "replace")  # type: ignore[assignment]
    return proc


# --- a proxy in front of moto: counts requests, delays or refuses some -------------------------

class Proxy:
    """Forwards HTTP to moto. ``faults`` is a list of (operation, status, code) answered
    instead of forwarding, one per matching request, in order; ``delay`` seconds before each
    forwarded UploadPart; ``seen`` counts the requests forwarded per operation."""

    def __init__(self, target: str) -> None:
        self.target = urllib.parse.urlsplit(target)
        self.faults: list[tuple[str, int, str]] = []
        self.delay = 0.0
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                op = proxy.operation(self.command, self.path)
                with proxy.lock:
                    fault = next((f for f in proxy.faults if f[0] == op), None)
                    if fault is not None:
                        proxy.faults.remove(fault)
                    else:
                        proxy.seen[op] = proxy.seen.get(op, 0) + 1
                if fault is not None:
                    xml = (f"<?xml version='1.0'?><Error><Code>{fault[2]}</Code>"
                           f"<Message>injected</Message></Error>").encode()
                    self.send_response(fault[1])
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(xml)
                    return
                if op == "UploadPart" and proxy.delay:
                    time.sleep(proxy.delay)
                conn = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port,
                                                  timeout=120)
                headers = {k: v for k, v in self.headers.items()}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                         "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)) if self.command != "HEAD"
                                 else resp.getheader("Content-Length") or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def operation(method: str, path: str) -> str:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query, keep_blank_values=True)
        if method == "PUT":
            return "UploadPart" if "partNumber" in query else "PutObject"
        if method == "POST":
            return "CompleteMultipartUpload" if "uploadId" in query else \
                "CreateMultipartUpload" if "uploads" in query else "POST"
        return method

    def uploads_sent(self) -> int:
        return sum(self.seen.get(op, 0) for op in ("PutObject", "UploadPart",
                                                   "CreateMultipartUpload",
                                                   "CompleteMultipartUpload"))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def s3():
    local = s3server.start(buckets=(BUCKET,))
    yield local
    local.stop()


@pytest.fixture
def proxy(s3):
    p = Proxy(s3.url)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with running_emulator(tmp_path_factory.mktemp("sim"), "--delay", "Standard=1") as sim:
        yield sim


# --- vaults -------------------------------------------------------------------------------------

def mixed_tree(seed: int, big: int = 0) -> list[tuple[str, str, bytes, int]]:
    """[(path, description, data, mtime)]: names in mt2, FastGlacier and CloudBerry (UTF-7)
    descriptions, non-ASCII names, a duplicate name, and ``big`` bytes in one multipart-sized
    archive."""
    rng = random.Random(seed)
    rows = []
    paths = ["photos/2019/été.jpg", "photos/2019/b.jpg", "photos/2020/日本/c.jpg",
             "photos/2020/d e.txt", "photos/dup.txt", "photos/dup.txt"]
    describe = [mt2, fastglacier, cloudberry, mt2, fastglacier, mt2]
    for i, (path, fmt) in enumerate(zip(paths, describe, strict=True)):
        mtime = T0 + 86400 * i
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(mtime))
        rows.append((path, fmt(path, stamp), rng.randbytes(1000 + 77 * i), mtime))
    if big:
        mtime = T0 - 86400
        path = "photos/disk.img"
        rows.append((path, mt2(path, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(mtime))),
                     rng.randbytes(big), mtime))
    return rows


def upload_vault(emulator, mounts, vault: str, rows, name: str | None = None, **options):
    client = emulator.client()
    client.create_vault(vaultName=vault)
    ids = {}
    for path, description, data, _ in rows:
        aid = client.upload_archive(vaultName=vault, body=data,
                                    archiveDescription=description)["archiveId"]
        ids[aid] = (path, data)
    mnt = mount_vault(emulator, mounts, vault, name or vault, **options)
    return mnt, ids


def mount_vault(emulator, mounts, vault: str, name: str, **options):
    mnt = mounts(emulator.url, name, vaults=vault, **options)
    wait_listed(mnt / vault, {"photos"})
    return mnt


def objects(s3, prefix: str = "") -> dict[str, dict]:
    """{key: head_object answer} of everything under ``prefix``."""
    c = s3.client()
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = c.head_object(Bucket=BUCKET, Key=o["Key"], ChecksumMode="ENABLED")
    return out


def body(s3, key: str) -> bytes:
    c = s3.client()
    head = c.head_object(Bucket=BUCKET, Key=key)
    if head.get("StorageClass") in ("GLACIER", "DEEP_ARCHIVE"):
        c.restore_object(Bucket=BUCKET, Key=key, RestoreRequest={"Days": 1})
    return c.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def same(heads: dict[str, dict]) -> dict[str, tuple]:
    """What a rewrite would change: ETag, time, checksum, metadata."""
    return {k: (h["ETag"], h["LastModified"], h.get("ChecksumCRC64NVME"), h["Metadata"])
            for k, h in heads.items()}


def uploads_left(s3) -> list:
    return s3.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])


def mount_files(root) -> dict[str, str]:
    """{path relative to root: archive id} of the files under a mount directory."""
    out = {}
    for d, subdirs, files in os.walk(root):
        if ".by-id" in subdirs:
            subdirs.remove(".by-id")    # every archive is already under its name
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = os.getxattr(p, "user.glacier.archive_id").decode()
    return out


def check_objects(s3, prefix: str, mnt_dir, ids: dict, storage_class: str) -> dict[str, dict]:
    """Every file under ``mnt_dir`` is at PREFIX/RELPATH with its bytes, checksum, metadata
    and class; nothing else is under PREFIX."""
    found = objects(s3, prefix)
    expected = {f"{prefix}/{rel}": aid for rel, aid in mount_files(mnt_dir).items()}
    assert sorted(found) == sorted(expected)
    for key, aid in expected.items():
        head = found[key]
        _, data = ids[aid]
        meta = head["Metadata"]
        assert meta["glacier-archive-id"] == aid
        rel = key[len(prefix) + 1:]
        mount_path = os.path.join(mnt_dir, rel)
        assert meta["glacier-tree-hash"] == \
            os.getxattr(mount_path, "user.glacier.tree_hash").decode()
        assert int(meta["mtime"]) == int(os.stat(mount_path).st_mtime)
        assert head["ContentLength"] == len(data)
        assert head["ChecksumCRC64NVME"] == crc64nvme_b64(data), key
        assert head.get("StorageClass", "STANDARD") == storage_class
        assert body(s3, key) == data, key
    return found


def one_job_each(emulator, vault: str, ids: dict) -> None:
    for aid in ids:
        assert len(archive_jobs(emulator, vault, aid)) == 1, ids[aid][0]


def counters(emulator) -> tuple[int, int]:
    req = emulator.stats()["requests"]
    return req.get("InitiateJob", 0), req.get("GetJobOutput", 0)


# --- the tests ---------------------------------------------------------------------------------

def test_tree_to_s3_verified_named_and_rerun_writes_nothing(emulator, s3, proxy, mounts,
                                                            tmp_path):
    rows = mixed_tree(1, big=20 * MIB + 12345)
    mnt, ids = upload_vault(emulator, mounts, "tree", rows, cache_size="64M")
    src = mnt / "tree" / "photos"
    assert any(" " in p or "é" in p for p in mount_files(src))   # names as the mount shows

    dry = glacierfs("copy", "-r", "--dry-run", src, f"s3://{BUCKET}/migrated",
                    "--s3-endpoint-url", proxy.url)
    assert dry.returncode == 0, dry.stderr
    assert "as DEEP_ARCHIVE" in dry.stdout
    assert "storage in S3 at DEEP_ARCHIVE:" in dry.stdout and "a month" in dry.stdout
    assert all(archive_jobs(emulator, "tree", aid) == [] for aid in ids)
    assert objects(s3, "migrated") == {}

    manifest = tmp_path / "manifest.jsonl"
    proc = glacierfs("copy", "-r", "--manifest", manifest, src, f"s3://{BUCKET}/migrated",
                     "--s3-endpoint-url", proxy.url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.index("DEEP_ARCHIVE") < proc.stdout.index("copied")
    assert f"copied {len(rows)} files" in proc.stdout
    found = check_objects(s3, "migrated/photos", src, ids, "DEEP_ARCHIVE")
    assert proxy.seen.get("UploadPart", 0) >= 3       # the big one went in parts
    assert uploads_left(s3) == []
    one_job_each(emulator, "tree", ids)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert sorted(r["archive_id"] for r in lines) == sorted(ids)
    for r in lines:
        head = found[r["key"]]
        assert r["vault"] == "tree" and r["bucket"] == BUCKET and r["status"] == "copied"
        assert r["size"] == len(ids[r["archive_id"]][1])
        assert r["tree_hash"] == head["Metadata"]["glacier-tree-hash"]
        assert r["etag"] == head["ETag"].strip('"')
        assert r["checksum_crc64nvme"] == head["ChecksumCRC64NVME"]
        assert r["mtime"] == head["Metadata"]["mtime"]

    # Again: nothing retrieved, nothing uploaded, every object found done.
    jobs_before = counters(emulator)
    sent_before = proxy.uploads_sent()
    proc = glacierfs("copy", "-r", "--manifest", manifest, src, f"s3://{BUCKET}/migrated",
                     "--s3-endpoint-url", proxy.url)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(rows)} already up to date" in proc.stdout
    assert counters(emulator) == jobs_before
    assert proxy.uploads_sent() == sent_before
    assert same(objects(s3, "migrated/photos")) == same(found)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert sorted(r["archive_id"] for r in lines) == sorted(ids)
    assert {r["status"] for r in lines} == {"found"}


def test_single_files_and_no_local_s3_folder(emulator, s3, mounts, tmp_path):
    rows = mixed_tree(2)
    mnt, ids = upload_vault(emulator, mounts, "single", rows)
    files = sorted(mount_files(mnt / "single" / "photos"))
    a, b = (mnt / "single" / "photos" / files[0]), (mnt / "single" / "photos" / files[1])
    env = {**TOOL_ENV, "AWS_ENDPOINT_URL_S3": s3.url}   # botocore's own variable
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    one = subprocess.run([sys.executable, "-m", "glacierfs.cli", "copy", str(a),
                          f"s3://{BUCKET}/x/"], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=240)
    assert one.returncode == 0, one.stderr
    assert list(cwd.iterdir()) == []        # no folder named "s3:"
    two = glacierfs("copy", "--storage-class", "standard", b, f"s3://{BUCKET}/renamed.bin",
                    env=env)
    assert two.returncode == 0, two.stderr
    both = glacierfs("copy", a, b, f"s3://{BUCKET}/both", env=env)
    assert both.returncode == 0, both.stderr
    by_id = {aid: data for aid, (_, data) in ids.items()}
    aid_a = os.getxattr(a, "user.glacier.archive_id").decode()
    aid_b = os.getxattr(b, "user.glacier.archive_id").decode()
    assert body(s3, f"x/{a.name}") == by_id[aid_a]
    assert body(s3, "renamed.bin") == by_id[aid_b]
    assert s3.client().head_object(Bucket=BUCKET, Key="renamed.bin").get(
        "StorageClass", "STANDARD") == "STANDARD"
    assert body(s3, f"both/{a.name}") == by_id[aid_a]
    assert body(s3, f"both/{b.name}") == by_id[aid_b]
    bad = glacierfs("copy", a, "s3://", env=env)
    assert bad.returncode == 2 and "s3://BUCKET" in bad.stderr
    missing = glacierfs("copy", a, "s3://no-such-bucket-here/k", env=env)
    assert missing.returncode == 2 and "no-such-bucket-here" in missing.stderr
    assert "Traceback" not in missing.stderr + bad.stderr


def test_foreign_object_is_left_alone(emulator, s3, mounts):
    rows = mixed_tree(3)
    mnt, ids = upload_vault(emulator, mounts, "foreign", rows)
    src = mnt / "foreign" / "photos"
    rel = sorted(mount_files(src))[0]
    key = f"foreign/photos/{rel}"
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=b"somebody else's data")
    proc = glacierfs("copy", "-r", "--json", src, f"s3://{BUCKET}/foreign",
                     "--s3-endpoint-url", s3.url)
    assert proc.returncode == 1, proc.stderr
    assert key in proc.stderr and "left alone" in proc.stderr
    doc = json.loads(proc.stdout.splitlines()[-1])
    assert doc["outcome"] == "failed" and doc["failed"] == 1
    assert doc["copied"] == len(rows) - 1
    assert doc["failures"][0]["dest"] == key and "left alone" in doc["failures"][0]["error"]
    assert body(s3, key) == b"somebody else's data"
    aid = mount_files(src)[rel]
    assert archive_jobs(emulator, "foreign", aid) == []     # not even retrieved
    others = {k for k in objects(s3, "foreign/photos")} - {key}
    assert len(others) == len(rows) - 1


def test_killed_half_way_then_rerun_leaves_no_upload(emulator, s3, proxy, mounts):
    rows = mixed_tree(4, big=40 * MIB)
    mnt, ids = upload_vault(emulator, mounts, "killed", rows, cache_size="64M")
    src = mnt / "killed" / "photos"
    proxy.delay = 1.0
    # STANDARD: moto lists every unfinished upload as STANDARD whatever its class, and an
    # upload of another class than asked for is aborted, not resumed.
    args = ["--storage-class", "STANDARD", "--s3-endpoint-url", proxy.url]
    proc = subprocess.Popen([sys.executable, "-m", "glacierfs.cli", "copy", "-r", str(src),
                             f"s3://{BUCKET}/killed", *args],
                            env=TOOL_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: proxy.seen.get("UploadPart", 0) >= 2 or proc.poll() is not None,
                 120, "two parts uploaded")
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [u["Key"] for u in uploads_left(s3)] == ["killed/photos/disk.img"]
    assert "killed/photos/disk.img" not in objects(s3, "killed")   # never a partial object
    proxy.delay = 0.0
    parts_before = proxy.seen.get("UploadPart", 0)
    again = glacierfs("copy", "-r", src, f"s3://{BUCKET}/killed", *args)
    assert again.returncode == 0, again.stderr
    assert uploads_left(s3) == []
    check_objects(s3, "killed/photos", src, ids, "STANDARD")
    one_job_each(emulator, "killed", ids)
    # The parts uploaded before the kill were kept: 40 MiB in 8-MiB parts is 5 parts.
    assert proxy.seen["UploadPart"] - parts_before < 5


def test_slowdown_and_500_lose_and_duplicate_nothing(emulator, s3, proxy, mounts, tmp_path):
    rows = mixed_tree(5, big=17 * MIB)
    mnt, ids = upload_vault(emulator, mounts, "flaky", rows, cache_size="64M")
    src = mnt / "flaky" / "photos"
    proxy.faults = ([("PutObject", 503, "SlowDown")] * 3 + [("UploadPart", 500,
                    "InternalError")] * 2 + [("CompleteMultipartUpload", 503, "SlowDown")]
                    + [("HEAD", 500, "InternalError")])
    manifest = tmp_path / "m.jsonl"
    proc = glacierfs("copy", "-r", "--manifest", manifest, "--storage-class", "GLACIER", src,
                     f"s3://{BUCKET}/flaky", "--s3-endpoint-url", proxy.url)
    assert proc.returncode == 0, proc.stderr
    assert proxy.faults == []          # every fault was met, and retried past
    check_objects(s3, "flaky/photos", src, ids, "GLACIER")
    assert uploads_left(s3) == []
    assert proxy.seen["PutObject"] == len(rows) - 1     # one successful PUT per small object
    assert proxy.seen["CompleteMultipartUpload"] == 1
    assert len(manifest.read_text().splitlines()) == len(rows)


def test_two_shards_on_two_machines_copy_each_archive_once(emulator, s3, mounts, tmp_path):
    rows = mixed_tree(6) + [(f"photos/many/{i}.bin", mt2(f"photos/many/{i}.bin",
                                                        "20200101T000000Z"),
                             os.urandom(500 + i), T0) for i in range(10)]
    mnt1, ids = upload_vault(emulator, mounts, "sharded", rows, name="machine1")
    mnt2 = mount_vault(emulator, mounts, "sharded", "machine2")
    procs = []
    manifests = []
    for k, mnt in ((1, mnt1), (2, mnt2)):
        manifests.append(tmp_path / f"shard{k}.jsonl")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "glacierfs.cli", "copy", "-r", "--shard", f"{k}/2",
             "--manifest", str(manifests[-1]), str(mnt / "sharded" / "photos"),
             f"s3://{BUCKET}/sharded", "--s3-endpoint-url", s3.url],
            env=TOOL_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    shares = [{json.loads(line)["archive_id"] for line in m.read_text().splitlines()}
              for m in manifests]
    assert shares[0] and shares[1] and not shares[0] & shares[1]
    assert shares[0] | shares[1] == set(ids)
    check_objects(s3, "sharded/photos", mnt1 / "sharded" / "photos", ids, "DEEP_ARCHIVE")
    one_job_each(emulator, "sharded", ids)
    # The same shard again, on the other machine: the same archives, all found done.
    again = glacierfs("copy", "-r", "--shard", "1/2", "--dry-run",
                      mnt2 / "sharded" / "photos", f"s3://{BUCKET}/sharded",
                      "--s3-endpoint-url", s3.url)
    assert again.returncode == 0, again.stderr
    assert f"{len(shares[0])} files" in again.stdout
    assert f"{len(shares[0])} already in DEST" in again.stdout
    bad = glacierfs("copy", "-r", "--shard", "3/2", mnt2 / "sharded", f"s3://{BUCKET}/x")
    assert bad.returncode == 2 and "K <= N" in bad.stderr


def test_an_archive_larger_than_the_cache_goes_window_by_window(emulator, s3, proxy, mounts):
    rows = mixed_tree(7, big=20 * MIB + 333)
    # 1-MiB windows in a 16-MiB cache: the copy asks for three or four windows ahead.
    mnt, ids = upload_vault(emulator, mounts, "huge", rows, cache_size="16M", chunk_size="1M",
                            range_size="1M")
    src = mnt / "huge" / "photos"
    dry = glacierfs("copy", "-r", "--dry-run", src, f"s3://{BUCKET}/huge",
                    "--s3-endpoint-url", proxy.url)
    assert dry.returncode == 0, dry.stderr
    assert "window by window" in dry.stdout
    assert all(archive_jobs(emulator, "huge", aid) == [] for aid in ids)
    sent_before = emulator.stats()["bytes_sent"]
    proc = glacierfs("copy", "-r", src, f"s3://{BUCKET}/huge", "--s3-endpoint-url", proxy.url)
    assert proc.returncode == 0, proc.stderr
    check_objects(s3, "huge/photos", src, ids, "DEEP_ARCHIVE")
    assert uploads_left(s3) == []
    big = next(aid for aid, (path, _) in ids.items() if path.endswith("disk.img"))
    windows = sorted(j["RetrievalByteRange"] for j in archive_jobs(emulator, "huge", big))
    size = 20 * MIB + 333
    assert windows == sorted(f"{k * MIB}-{min((k + 1) * MIB, size) - 1}"
                             for k in range(21))     # each window once
    one_job_each(emulator, "huge", {a: v for a, v in ids.items() if a != big})
    total = sum(len(d) for _, _, d, _ in rows)
    assert emulator.stats()["bytes_sent"] - sent_before <= 1.15 * total
    assert proxy.seen["UploadPart"] >= 3


# --- no FUSE: glacier:// sources ----------------------------------------------------------------

def test_glacier_source_without_a_mount_to_s3_and_to_a_folder(emulator, s3, mounts, tmp_path):
    rows = mixed_tree(8, big=9 * MIB)
    client = emulator.client()
    client.create_vault(vaultName="nofuse")
    ids = {}
    for path, description, data, _ in rows:
        ids[client.upload_archive(vaultName="nofuse", body=data,
                                  archiveDescription=description)["archiveId"]] = (path, data)
    state = tmp_path / "state"
    opts = f"endpoint_url={emulator.url},cache_dir={state},poll=1,cache_size=64M"
    src = "glacier://us-east-1/nofuse/photos"
    proc = glacierfs("copy", "-r", src, f"s3://{BUCKET}/nofuse", "-o", opts,
                     "--s3-endpoint-url", s3.url)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    found = objects(s3, "nofuse/photos")
    assert len(found) == len(rows)
    by_id = {h["Metadata"]["glacier-archive-id"]: (k, h) for k, h in found.items()}
    assert sorted(by_id) == sorted(ids)
    for aid, (key, head) in by_id.items():
        path, data = ids[aid]
        if not path.endswith("dup.txt"):
            assert key == f"nofuse/{path}"
        assert head["ChecksumCRC64NVME"] == crc64nvme_b64(data)
        assert body(s3, key) == data
    one_job_each(emulator, "nofuse", ids)
    assert uploads_left(s3) == []

    # The same source into a folder: the cache still holds it, so no job, no download.
    before = counters(emulator)
    dest = tmp_path / "out"
    proc = glacierfs("copy", "-r", src, dest, "-o", opts)
    assert proc.returncode == 0, proc.stderr
    for aid, (key, head) in by_id.items():
        local = dest / key[len("nofuse/"):]
        assert local.read_bytes() == ids[aid][1]
        assert int(local.stat().st_mtime) == int(head["Metadata"]["mtime"])
    assert counters(emulator)[0] == before[0]
    one_job_each(emulator, "nofuse", ids)

    # Through a cache smaller than the big archive: window by window, in process too.
    small = f"endpoint_url={emulator.url},cache_dir={tmp_path / 'small'},poll=1," \
            "cache_size=4M,chunk_size=1M,range_size=1M"
    proc = glacierfs("copy", "-r", src, tmp_path / "windows", "-o", small)
    assert proc.returncode == 0, proc.stderr
    for aid, (key, _) in by_id.items():
        assert (tmp_path / "windows" / key[len("nofuse/"):]).read_bytes() == ids[aid][1]

    # One user of a state directory at a time: a mount holds it, the copy says so.
    mounts(emulator.url, "holder", cache_dir=state, vaults="nofuse")
    busy = glacierfs("copy", "-r", src, tmp_path / "again", "-o", opts)
    assert busy.returncode == 2 and "in use" in busy.stderr, busy.stderr
    bad = glacierfs("copy", "-r", "glacier://us-east-1", tmp_path / "x", "-o", opts)
    assert bad.returncode == 2 and "glacier://[ACCOUNT@]REGION/VAULT" in bad.stderr
    assert "Traceback" not in busy.stderr + bad.stderr


# --- the demo migrates too -------------------------------------------------------------------

def test_the_demo_migrates_as_the_readme_shows(tmp_path):
    import re
    import shlex
    import socket
    from pathlib import Path

    import boto3

    from glacierfs.commands import demo
    from glacierfs.sim.testing import DUMMY_KEY_ID, DUMMY_SECRET

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Into S3", 1)[1]
    commands = [line for line in re.findall(r"```sh\n(.*?)```", section, re.S)[1]
                .splitlines() if line.startswith("glacierfs copy")]
    assert len(commands) == 2 and "glacier://" in commands[1]   # with and without the mount
    mnt, data = tmp_path / "mnt", tmp_path / "data"
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
                break
            except OSError:
                continue
    commands = [c.replace(demo.DEFAULT_MOUNT, str(mnt))
                .replace(f":{demo.DEFAULT_PORT + 1}", f":{port + 1}")
                .replace(f":{demo.DEFAULT_PORT}", f":{port}")
                .replace("cache_dir=/tmp/glacierfs-nofuse", f"cache_dir={tmp_path / 'nofuse'}")
                for c in commands]
    try:
        started = glacierfs("demo", "--mountpoint", mnt, "--data-dir", data, "--port", port,
                            timeout=180)
        assert started.returncode == 0, started.stderr
        for command in commands:
            proc = glacierfs(*shlex.split(command)[1:])
            assert proc.returncode == 0, (command, proc.stderr)
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port + 1}",
                          aws_access_key_id=DUMMY_KEY_ID, aws_secret_access_key=DUMMY_SECRET,
                          region_name="us-east-1")
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=demo.DEMO_BUCKET,
                                                    Prefix="migrated/")["Contents"]}
        files = {f"migrated/photos/{rel}" for rel in mount_files(mnt / "photos")}
        assert keys == files
        for key in keys:
            head = s3.head_object(Bucket=demo.DEMO_BUCKET, Key=key, ChecksumMode="ENABLED")
            local = (mnt / key[len("migrated/"):]).read_bytes()
            assert head["ChecksumCRC64NVME"] == crc64nvme_b64(local), key
            assert head["StorageClass"] == "DEEP_ARCHIVE"
            # The same object, copied without the mount (glacier://photos: keys photos/...).
            other = s3.head_object(Bucket=demo.DEMO_BUCKET, ChecksumMode="ENABLED",
                                   Key="migrated-nofuse/" + key[len("migrated/"):])
            assert other["ChecksumCRC64NVME"] == head["ChecksumCRC64NVME"]
            assert other["Metadata"] == head["Metadata"]
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        try:
            os.kill(int((data / demo.PID_FILE).read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
