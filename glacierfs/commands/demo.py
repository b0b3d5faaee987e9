"""``glacierfs demo``: a Glacier account on this machine, mounted, to try glacierfs on.

Starts the emulator (in the background, state in ``--data-dir``), fills it once with vaults
whose archives carry descriptions in every format real uploaders write (mt-aws-glacier,
FastGlacier, CloudBerry, QNAP, plain paths; folders, non-ASCII names, duplicates), sizes from
a few bytes to hundreds of MB, a Synology Glacier Backup pair (a data vault and its
``_mapping`` vault holding the SQLite names database), and a CSV archive to query with
``glacierfs select``; runs a local S3 endpoint (moto's server, in the emulator's process) for
the select results, which also serves SNS and SQS: the emulator publishes job completions to a
topic there, a queue subscribed to it is what the mount listens to, so a restore is cached as
soon as its job is done; then mounts it and prints what to try. Running it again reuses what is
there.
"""

from __future__ import annotations

import argparse
import base64
import errno
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

MIB = 1024 * 1024
DEFAULT_PORT = 7380
DEFAULT_MOUNT = "/mnt/glacier-demo"
DEFAULT_DATA = "/var/lib/glacierfs-demo"
# Short tier delays so a restore can be watched from start to finish.
DEMO_DELAYS = ("Expedited=5", "Standard=20", "Bulk=45", "inventory=3")
SEEDED_MARK = "seeded-v1"
CSV_MARK = "seeded-csv-v1"      # the CSV archive came later: demos seeded before get it too
SYNOLOGY_MARK = "seeded-synology-v1"   # so did the Synology pair
SYNOLOGY_VAULT = "NAS_0012345ABCDE_1"  # a Synology Glacier Backup task's data vault
DEMO_BUCKET = "glacierfs-demo"  # select results go there, in the emulator's local S3
CSV_PATH = "reports/sales-2023.csv"
CSV_VAULT = "documents"
PID_FILE = "emulator.pid"
DEMO_TOPIC = "glacierfs-demo"   # job completions: SNS topic and SQS queue in the local moto
NOTIFIED_POLL = 60              # with notifications, polling is only the safety net
INVENTORY_WAIT = 60.0   # seconds; the emulator's inventory jobs take a few


# --- descriptions as real uploaders write them --------------------------------------------

def mt2(path: str, mtime: str) -> str:
    payload = json.dumps({"filename": path, "mtime": mtime}, ensure_ascii=False)
    return "mt2 " + base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def fastglacier(path: str, mtime: str, version: int = 4) -> str:
    p = base64.b64encode(path.encode()).decode()
    ce = "<ce>UTF-8</ce>" if version >= 3 else ""
    return f"<m><v>{version}</v><p>{p}</p><lm>{mtime}</lm>{ce}</m>"


def cloudberry(path: str, mtime: str) -> str:
    utf7 = path.encode("utf-7").decode("ascii")
    return json.dumps({"Path": utf7, "UTCDateModified": mtime, "Flags": 0})


def qnap(path: str) -> str:
    return json.dumps({"path": path, "type": "file"})


TEXT_SUFFIXES = (".txt", ".tex", "hosts")
TEXT_CONTENT = {"hello.txt": b"Hello, world\n"}


def _pattern(seed: str, size: int, name: str = "") -> bytes:
    """Deterministic bytes, so a restore can be checked by hash: readable text for small text
    files (``cat`` shows something sensible), incompressible-looking bytes otherwise."""
    if name in TEXT_CONTENT and len(TEXT_CONTENT[name]) == size:
        return TEXT_CONTENT[name]
    if (not name or name.endswith(TEXT_SUFFIXES)) and 0 < size < MIB:
        label = name or "an archive without a description"
        lines = "".join(f"{label}: line {n} of a glacierfs demo file\n"
                        for n in range(1, size // 20 + 2)).encode()
        return lines[:size - 1] + b"\n"
    block = hashlib.sha256(seed.encode()).digest() * (MIB // 32)
    return (block * (size // len(block) + 1))[:size]


def demo_archives() -> dict[str, list[tuple[str, int]]]:
    """vault -> [(description, size)]."""
    return {
        "photos": [
            (mt2("2019/holiday/beach.jpg", "20190812T101500Z"), 2 * MIB + 12345),
            (mt2("2019/holiday/sunset.jpg", "20190812T203000Z"), 3 * MIB),
            (mt2("2020/Zürich/Grossmünster.jpg", "20200105T090000Z"), 700_000),
            (fastglacier("2021/", "20210101T000000Z"), 0),
            (fastglacier("2021/family/ёлка.png", "20211231T235900Z"), 1 * MIB + 1),
            (fastglacier("2021/family/notes.txt", "20211230T120000Z", version=2), 42),
            ("2018/IMG_0001.jpg", 5 * MIB),
            ("2018/IMG_0001.jpg", 4 * MIB),   # a duplicate description: older gets a suffix
        ],
        "documents": [
            (cloudberry("taxes/2022/return.pdf", "20230401T080000Z"), 300_000),
            (cloudberry("letters/письмо.txt", "20230115T101010Z"), 1234),
            (qnap("/Public/manuals/router.pdf"), 2_500_000),
            ("projects\\thesis\\thesis-final.tex", 90_000),
            ("", 17),                          # no description: named by archive id
            ("hello.txt", 13),
        ],
        "backups": [
            ("nightly/db-2024-01-01.tar", 64 * MIB),
            ("nightly/db-2024-01-02.tar", 300 * MIB),
            (mt2("etc/hosts", "20240101T000000Z"), 200),
        ],
    }


def demo_vaults() -> set[str]:
    """Every vault the demo creates."""
    return set(demo_archives()) | {SYNOLOGY_VAULT, SYNOLOGY_VAULT + "_mapping"}


# --- orchestration ---------------------------------------------------------------------------

def _wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        try:
            with urllib.request.urlopen(url + "/_sim/stats", timeout=2):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def sales_csv() -> bytes:
    """The demo's CSV archive: a year of orders, deterministic, with a header line."""
    countries = ("FR", "DE", "US", "JP", "BR", "IN")
    products = ("kayak", "tent", "stove", "lamp", "rope", "boots")
    lines = ["order_id,date,customer,country,product,quantity,total"]
    for n in range(1, 2001):
        h = int(hashlib.sha256(str(n).encode()).hexdigest()[:8], 16)
        quantity = h % 9 + 1
        lines.append(f"{n},2023-{h % 12 + 1:02d}-{h % 28 + 1:02d},customer-{h % 97:02d},"
                     f"{countries[h % 6]},{products[(h >> 4) % 6]},{quantity},"
                     f"{quantity * ((h >> 8) % 200 + 5)}.{h % 100:02d}")
    return ("\n".join(lines) + "\n").encode()


def _s3_ready(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # S3 answered (an error for an anonymous listing is an answer)
        except OSError:
            time.sleep(0.2)
    return False


def prepare_s3(s3_url: str) -> bool:
    """The bucket select jobs write to (S3 in the emulator's process keeps it in memory)."""
    if not _s3_ready(s3_url, 15):
        print(f"no S3 endpoint at {s3_url}: glacierfs select will not work in this demo")
        return False
    import boto3
    client = boto3.client("s3", region_name="us-east-1", endpoint_url=s3_url,
                          aws_access_key_id="demo", aws_secret_access_key="demo")
    try:
        client.create_bucket(Bucket=DEMO_BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return True


def prepare_notifications(s3_url: str) -> tuple[str, str] | None:
    """The topic the emulator publishes job completions to, and the queue subscribed to it
    that the mount listens to (both in the local moto server); None if that fails."""
    import boto3
    kwargs = {"region_name": "us-east-1", "endpoint_url": s3_url,
              "aws_access_key_id": "demo", "aws_secret_access_key": "demo"}
    try:
        sns, sqs = boto3.client("sns", **kwargs), boto3.client("sqs", **kwargs)
        topic = sns.create_topic(Name=DEMO_TOPIC)["TopicArn"]
        queue = sqs.create_queue(QueueName=DEMO_TOPIC)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue,
                                       AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        subscribed = sns.list_subscriptions_by_topic(TopicArn=topic).get("Subscriptions", [])
        if not any(s.get("Endpoint") == arn for s in subscribed):
            sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    except Exception as exc:  # noqa: BLE001 — the demo goes on with polling alone
        print(f"job notifications not set up ({exc}); the mount polls instead")
        return None
    return topic, queue


def _last_line(path: str) -> str:
    try:
        lines = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "nothing logged"


def start_emulator(data_dir: Path, port: int, s3_port: int | None = None) -> str:
    url = f"http://127.0.0.1:{port}"
    if _wait_http(url, 0.5):
        print(f"emulator already running at {url}")
        return url
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir / "emulator.log", "ab")
    cmd = [sys.executable, "-m", "glacierfs.cli", "sim", "--port", str(port), "--data-dir",
           str(data_dir / "glacier")]
    for d in DEMO_DELAYS:
        cmd += ["--delay", d]
    if s3_port is not None:
        cmd += ["--local-s3", str(s3_port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    (data_dir / PID_FILE).write_text(f"{proc.pid}\n")
    if not _wait_http(url, 30, proc):
        if proc.poll() is None:   # up but not answering: never leave it running behind
            proc.kill()
        proc.wait()
        (data_dir / PID_FILE).unlink(missing_ok=True)
        raise SystemExit(f"glacierfs demo: the emulator did not start: {_last_line(log.name)} "
                         f"(see {log.name})")
    print(f"emulator running at {url} (state in {data_dir}/glacier)")
    return url


# Synology Glacier Backup: files of the NAS share "photo" and "homes", one archive each with no
# description; (share, path, backup time, content) — one file backed up twice (two versions),
# one deduplicated (the same archive at two paths).
SYNOLOGY_FILES = (
    ("photo", "important/photos/march 2015/IMG_20150507_194814.JPG", 1431027000, "img-1"),
    ("photo", "important/photos/march 2015/IMG_20150507_195102.JPG", 1431027000, "img-2"),
    ("homes", "admin/Documents/budget.txt", 1431027000, "budget-v1"),
    ("homes", "admin/Documents/budget.txt", 1500000000, "budget-v2"),
)
SYNOLOGY_COPY = ("homes", "admin/Desktop/IMG_20150507_194814.JPG")  # a copy of img-1


def synology_mapping(rows: list[tuple[str, str, str, int, int, int]], path: Path) -> bytes:
    """A mapping database as Synology's Glacier Backup writes it: ``file_info_tb`` (share,
    path, archive id, backup time, version, current) and ``backup_info_tb``."""
    import sqlite3
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE file_info_tb (key INTEGER PRIMARY KEY, shareName TEXT, "
               "basePath TEXT, archiveID TEXT, lastBkpTime INTEGER, fileSize INTEGER, "
               "archiveVersion INTEGER, current INTEGER, checksum TEXT)")
    db.execute("CREATE TABLE backup_info_tb (key TEXT, value TEXT)")
    db.executemany("INSERT INTO file_info_tb(shareName, basePath, archiveID, lastBkpTime, "
                   "archiveVersion, current) VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.executemany("INSERT INTO backup_info_tb VALUES (?, ?)", [
        ("taskName", "DiskStation backup"), ("hostName", "DiskStation"),
        ("bkpFolder", "photo,homes"), ("lastBkpTime", "1500000000")])
    db.commit()
    db.close()
    data = path.read_bytes()
    path.unlink()
    return data


def seed_synology(client, data_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """The data vault (raw files, no descriptions) and its ``_mapping`` vault."""
    client.create_vault(vaultName=SYNOLOGY_VAULT)
    client.create_vault(vaultName=SYNOLOGY_VAULT + "_mapping")
    rows: list[tuple[str, str, str, int, int, int]] = []
    by_content: dict[str, str] = {}
    versions: dict[str, int] = {}
    for share, path, when, content in SYNOLOGY_FILES:
        body = (f"{share}/{path} ({content}): a file of a Synology Glacier Backup task\n"
                * 40).encode()
        archive_id = client.upload_archive(vaultName=SYNOLOGY_VAULT, archiveDescription="",
                                           body=body)["archiveId"]
        by_content[content] = archive_id
        versions[path] = versions.get(path, 0) + 1
        rows.append((share, path, archive_id, when, versions[path], 1))
    # only the last version of a path is current
    rows = [(s, p, a, w, v, int(v == versions[p])) for s, p, a, w, v, _ in rows]
    rows.append((*SYNOLOGY_COPY, by_content["img-1"], 1431027000, 1, 1))
    client.upload_archive(vaultName=SYNOLOGY_VAULT + "_mapping", archiveDescription="",
                          body=synology_mapping(rows, data_dir / "mapping.sqlite.tmp"))


def seed(url: str, data_dir: Path) -> None:
    import boto3
    client = boto3.client("glacier", region_name="us-east-1", endpoint_url=url,
                          aws_access_key_id="demo", aws_secret_access_key="demo")
    mark = data_dir / SEEDED_MARK
    csv_mark = data_dir / CSV_MARK
    synology_mark = data_dir / SYNOLOGY_MARK
    if not synology_mark.exists():
        seed_synology(client, data_dir)
        synology_mark.write_text("ok\n")
    if mark.exists():
        if not csv_mark.exists():
            client.upload_archive(vaultName=CSV_VAULT, archiveDescription=CSV_PATH,
                                  body=sales_csv())
            csv_mark.write_text("ok\n")
        return
    for vault, archives in demo_archives().items():
        client.create_vault(vaultName=vault)
        for i, (description, size) in enumerate(archives):
            data = _pattern(f"{vault}/{i}", size, _plain_name(description))
            print(f"  uploading {vault}: {size:>11,} bytes", flush=True)
            _upload(client, vault, description, data)
    client.upload_archive(vaultName=CSV_VAULT, archiveDescription=CSV_PATH, body=sales_csv())
    csv_mark.write_text("ok\n")
    mark.write_text("ok\n")


def _plain_name(description: str) -> str:
    """The file name a description decodes to, for choosing demo content."""
    from glacierfs.catalog.names import decode_description
    parts = decode_description(description).parts
    return parts[-1] if parts else ""


def _upload(client, vault: str, description: str, data: bytes) -> None:  # type: ignore[no-untyped-def]
    from glacierfs.treehash import tree_hash_hex
    part = 8 * MIB
    if len(data) <= part:
        client.upload_archive(vaultName=vault, archiveDescription=description, body=data)
        return
    up = client.initiate_multipart_upload(vaultName=vault, archiveDescription=description,
                                          partSize=str(part))
    for start in range(0, len(data), part):
        piece = data[start:start + part]
        client.upload_multipart_part(vaultName=vault, uploadId=up["uploadId"],
                                     range=f"bytes {start}-{start + len(piece) - 1}/*",
                                     body=piece)
    client.complete_multipart_upload(vaultName=vault, uploadId=up["uploadId"],
                                     archiveSize=str(len(data)), checksum=tree_hash_hex(data))


def _dead_mount(mountpoint: Path) -> bool:
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def mount(url: str, mountpoint: Path, data_dir: Path, s3_url: str | None = None,
          notices: tuple[str, str] | None = None) -> None:
    if _dead_mount(mountpoint):
        print(f"{mountpoint}: clearing a dead mount left by a crash (fusermount3 -u)")
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
    if os.path.ismount(mountpoint):
        print(f"{mountpoint} is already mounted")
        return
    mountpoint.mkdir(parents=True, exist_ok=True)
    own = Path(sys.executable).with_name("glacierfs")   # this install, not another on PATH
    exe = str(own) if own.exists() else (shutil.which("glacierfs") or sys.argv[0])
    poll = NOTIFIED_POLL if notices and s3_url else 2
    opts = f"endpoint_url={url},cache_dir={data_dir}/cache,poll={poll},inventory_refresh=off"
    if s3_url:
        opts += f",s3_endpoint_url={s3_url}"
        if notices:
            opts += f",sns_topic={notices[0]},sqs_queue_url={notices[1]},sqs_endpoint_url={s3_url}"
    cmd = [exe, "us-east-1", str(mountpoint), "-o", opts]
    print("mounting:", " ".join(cmd))
    result = subprocess.run(cmd)
    if result.returncode:
        raise SystemExit(result.returncode)


def wait_for_inventories(mountpoint: Path) -> None:
    """Open every vault (which starts its inventory job) and wait until all are listed, so
    the first ``ls`` shows names. Real inventories take hours; the emulator's seconds."""
    vaults = sorted(os.listdir(mountpoint))
    print(f"waiting for the inventories of {len(vaults)} vaults "
          "(hours on Glacier, seconds here)…", flush=True)
    deadline = time.monotonic() + INVENTORY_WAIT
    pending = set(vaults)
    while pending and time.monotonic() < deadline:
        for vault in sorted(pending):
            os.listdir(mountpoint / vault)
            try:
                status = os.getxattr(mountpoint / vault, "user.glacier.inventory.job.status")
            except OSError:
                continue
            if status == b"Succeeded":
                pending.discard(vault)
        if pending:
            time.sleep(0.5)
    if pending:
        print(f"still waiting for: {', '.join(sorted(pending))} (their directories fill "
              "when the inventory is in)")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="glacierfs demo",
        description="Start the Glacier emulator with sample vaults (and a local S3 for select "
                    "results), mount it and print what to try. Running it again reuses what "
                    "is there.",
        epilog=f"stop it: umount MOUNTPOINT; kill $(cat DATA_DIR/{PID_FILE})")
    p.add_argument("--mountpoint", default=DEFAULT_MOUNT, help=f"default: {DEFAULT_MOUNT}")
    p.add_argument("--data-dir", default=DEFAULT_DATA,
                   help=f"the emulator's state, log and pid file, and the cache (default: "
                        f"{DEFAULT_DATA})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"the emulator's port (default: {DEFAULT_PORT})")
    p.add_argument("--s3-port", type=int, default=None,
                   help="port of the local S3 for select results (default: --port + 1)")
    args = p.parse_args(argv)
    data_dir = Path(args.data_dir)
    mnt = Path(args.mountpoint)
    s3_port = args.s3_port if args.s3_port is not None else args.port + 1
    s3_url = f"http://127.0.0.1:{s3_port}"
    has_moto = importlib.util.find_spec("moto") is not None
    if not has_moto:
        print("moto[server] is not installed: the demo runs without S3, so glacierfs select "
              "will not work (pip install 'glacierfs[demo]')")
    url = start_emulator(data_dir, args.port, s3_port if has_moto else None)
    select_ok = has_moto and prepare_s3(s3_url)
    notices = prepare_notifications(s3_url) if select_ok else None
    seed(url, data_dir)
    mount(url, mnt, data_dir, s3_url if select_ok else None, notices)
    wait_for_inventories(mnt)
    print(f"""
glacierfs demo is mounted on {mnt}: a Glacier account served by a local emulator, where a
Standard retrieval takes 20 seconds instead of hours. Try:
  ls {mnt}                          # one directory per vault
  ls -lR {mnt}/photos               # names decoded from mt-aws-glacier, FastGlacier, …
  ls -lR {mnt}/{SYNOLOGY_VAULT}   # Synology Glacier Backup: names from its _mapping vault's
                                    # database, once that archive is retrieved (~20 s here)
  getfattr -d -m user.glacier.names {mnt}/{SYNOLOGY_VAULT}
  getfattr -d -m user.glacier {mnt}/documents/hello.txt
  cat {mnt}/documents/hello.txt     # starts a retrieval: "Object is remote"
  glacierfs status {mnt}            # jobs, downloads, cache; cat again after ~20 s
                                    # (the completion arrives through SNS and SQS at once)
  glacierfs restore -r {mnt}/photos && glacierfs wait -r {mnt}/photos && rsync -a {mnt}/photos/ /tmp/photos/
  glacierfs select {mnt}/{CSV_VAULT}/{CSV_PATH} --header use --tier Expedited --wait \\
      --query "SELECT s.order_id, s.customer, s.total FROM archive s WHERE s.country = 'FR' AND s.total > 1000" \\
      --output s3://{DEMO_BUCKET}/select     # SQL inside Glacier: only the matching rows come back
  glacierfs copy -r {mnt}/photos s3://{DEMO_BUCKET}/migrated --s3-endpoint-url {s3_url}
                                    # migrate into the local S3, verified (Deep Archive class)
Stop it: umount {mnt}; kill $(cat {data_dir / PID_FILE})   (the emulator)""")
    return 0
