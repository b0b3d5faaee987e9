"""``glacierfs sim``: run the Glacier emulator.

The first line on stdout is ``listening on http://HOST:PORT`` (flushed at once) so a test or
script starting it with ``--port 0`` learns the port; everything else goes to the log (stderr).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import socket
import sys
from pathlib import Path

from glacierfs.sim.config import (DEFAULT_ACCOUNT_ID, DEFAULT_JOB_TTL, DEFAULT_REGION, DELAY_KEYS,
                                  PRESETS, SimConfig)
from glacierfs.sim.bandwidth import parse_rate
from glacierfs.sim.context import Sim
from glacierfs.sim.faults import parse_spec
from glacierfs.sim.server import SimServer
from glacierfs.sim.store import Store

log = logging.getLogger("glacierfs.sim")

DESCRIPTION = """\
Run an Amazon S3 Glacier (vault API) emulator on loopback. It speaks the documented REST API, so
unmodified boto3 and the AWS CLI work against it (--endpoint-url http://127.0.0.1:PORT, any
credentials). State (vaults, archives, uploads, jobs) persists in --data-dir.

Jobs finish after a per-tier delay of emulated time. A control endpoint under /_sim/ on the same
port lets tests read request counts, inject faults, change delays, finish/fail/expire jobs, move
the emulated clock and synthesize archives (see glacierfs/sim/control.py).

Job notifications: InitiateJob accepts SNSTopic (an SNS topic ARN) for every job type and
Set/Get/DeleteVaultNotifications configure a vault's topic for the ArchiveRetrievalCompleted and
InventoryRetrievalCompleted events. When a job completes (Succeeded or Failed) the emulator
publishes the job's DescribeJob JSON, as Glacier does, to the job's topic and to the vault's
topic for a matching event (both if both are set), through the SNS API at --sns-endpoint (e.g.
moto's server, which also serves SQS: subscribe a queue to the topic to receive them). Each
completion is published once, at its due time (a watcher completes due jobs even when nobody
asks about them). Without --sns-endpoint topics are validated and shown but nothing is sent. A
publish SNS refuses (no such topic) is logged and dropped, as Glacier does not check the topic.
Select jobs notify their own topic only (the vault events are the two retrieval kinds).

CompleteMultipartUpload is idempotent as documented: repeated with the same size and tree hash
within an hour of its success, it answers 201 with the same archive id.
"""

EPILOG = """\
fault SPEC: OPERATION:FAULT[:PROBABILITY[:COUNT[:DELAY]]]
  OPERATION  a Glacier API name (UploadArchive, InitiateJob, DescribeJob, ListJobs,
             GetJobOutput, ListVaults, DescribeVault, ...) or '*'
  FAULT      throttle (400 ThrottlingException), error500 / error503 (ServiceUnavailable),
             drop (connection closed mid-body), corrupt (GetJobOutput bytes flipped, header keeps
             the true tree hash), slow (wait DELAY seconds, default 1), insufficient_capacity
             (InitiateJob, Expedited only), policy (InitiateJob: PolicyEnforcedException),
             job_failed (InitiateJob: the archive-retrieval job ends Failed), expire
             (GetJobOutput: the job's output counts as expired, 404)
  PROBABILITY 0..1 (default 1); COUNT: fire at most COUNT times (default unlimited)
  example: --fault GetJobOutput:corrupt:0.5:3 --seed 7

inventory modes:
  live   an inventory job lists the vault as it is when the job completes (any vault, even
         empty or new); DescribeVault's LastInventoryDate is the last upload or deletion.
  daily  like Glacier: a snapshot at each emulated midnight (UTC) after the vault changed; a job
         returns the latest one. Before the first snapshot InitiateJob for an inventory answers
         404 ResourceNotFoundException. Move time with POST /_sim/clock {"advance": 86400}.
"""


def _delay(text: str) -> tuple[str, float]:
    tier, sep, seconds = text.partition("=")
    if not sep or tier not in DELAY_KEYS:
        raise argparse.ArgumentTypeError(
            f"want TIER=SECONDS with TIER one of {', '.join(DELAY_KEYS)}: {text!r}")
    try:
        value = float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {seconds!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("delays must be >= 0")
    return tier, value


def _fault(text: str):
    try:
        return parse_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> float:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _loopback(host: str) -> str:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise argparse.ArgumentTypeError(f"cannot resolve {host!r}") from None
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise argparse.ArgumentTypeError(f"{host!r} is not a loopback address; the emulator "
                                         "has no authentication and only listens on loopback")
    return host


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glacierfs sim", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0,
                   help="TCP port to listen on; 0 (default) picks a free one")
    p.add_argument("--data-dir", type=Path, required=True,
                   help="directory holding the state (created if missing)")
    p.add_argument("--host", type=_loopback, default="127.0.0.1",
                   help="loopback address to bind (default 127.0.0.1)")
    p.add_argument("--region", default=DEFAULT_REGION,
                   help=f"region used in ARNs (default {DEFAULT_REGION})")
    p.add_argument("--account-id", default=DEFAULT_ACCOUNT_ID,
                   help="the account: requests may use '-' or this id, any other id gets 403 "
                        f"AccessDeniedException (default {DEFAULT_ACCOUNT_ID})")
    p.add_argument("--preset", choices=sorted(PRESETS), default="test",
                   help="job delays: 'test' (default: Expedited 1 s, Standard 3 s, Bulk 6 s, "
                        "inventory 2 s) or 'realistic' (Expedited 3 min, Standard 4 h, Bulk 8 h, "
                        "inventory 4 h)")
    p.add_argument("--delay", type=_delay, action="append", default=[], metavar="TIER=SECONDS",
                   help="override one delay (TIER: Expedited, Standard, Bulk or inventory); "
                        "repeatable; applied after --preset")
    p.add_argument("--job-ttl", type=float, default=DEFAULT_JOB_TTL, metavar="SECONDS",
                   help="job output expires this long after completion; then GetJobOutput "
                        "answers 404 (default 86400)")
    p.add_argument("--inventory-mode", choices=("live", "daily"), default="live",
                   help="live (default): inventories reflect the vault at job completion; "
                        "daily: daily snapshots as Glacier makes them (see below)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed for fault injection draws (same seed, same requests, same faults)")
    p.add_argument("--fault", type=_fault, action="append", default=[], metavar="SPEC",
                   help="inject a fault (repeatable; see below)")
    p.add_argument("--bandwidth", type=_rate, default=None, metavar="RATE",
                   help="cap each connection's job-output bodies at RATE bytes per second "
                        "(K, M, G: KiB, MiB, GiB; e.g. 32M), as Glacier caps each "
                        "GetJobOutput stream; parallel ranged downloads get a multiple of it "
                        "(default: no cap)")
    p.add_argument("--bandwidth-total", type=_rate, default=None, metavar="RATE",
                   help="cap all job-output bodies together at RATE bytes per second, the "
                        "account's or the link's share (default: no cap)")
    p.add_argument("--no-tree-hash-header", action="store_true",
                   help="never send x-amz-sha256-tree-hash with job output, as some other "
                        "Glacier implementations do not")
    p.add_argument("--ignore-range", action="store_true",
                   help="answer a ranged GetJobOutput with the whole output (200), as some "
                        "other Glacier implementations do")
    p.add_argument("--access-key-id", default=None,
                   help="if given, requests signed with another access key id get 403 "
                        "UnrecognizedClientException (signatures themselves are not checked)")
    p.add_argument("--s3-endpoint", default=None, metavar="URL",
                   help="S3 endpoint (S3 API, e.g. a local S3 server) where select jobs write "
                        "their output; without it InitiateJob refuses select jobs")
    p.add_argument("--local-s3", type=int, default=None, metavar="PORT",
                   help="also run a local S3 endpoint (moto's S3 server, needs moto[server]) in "
                        "this process on 127.0.0.1:PORT (0: a free port) and write select "
                        "output there; what glacierfs demo uses")
    p.add_argument("--sns-endpoint", default=None, metavar="URL",
                   help="SNS endpoint (SNS API, e.g. moto's server) where job completion "
                        "notifications are published (see above); with --local-s3 and no "
                        "--sns-endpoint, that local server (moto serves SNS and SQS too)")
    p.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    p.add_argument("--verbose", action="store_true", help="log every HTTP exchange")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    delays = dict(PRESETS[args.preset])
    delays.update(dict(args.delay))
    config = SimConfig(region=args.region, account_id=args.account_id, job_ttl=args.job_ttl,
                       inventory_mode=args.inventory_mode, access_key_id=args.access_key_id,
                       delays=delays, bandwidth=args.bandwidth,
                       bandwidth_total=args.bandwidth_total,
                       tree_hash_header=not args.no_tree_hash_header,
                       honour_range=not args.ignore_range)
    try:
        store = Store(args.data_dir)
    except OSError as exc:
        print(f"glacierfs sim: cannot use data dir {args.data_dir}: {exc}", file=sys.stderr)
        return 2
    local_s3 = None
    if args.local_s3 is not None:
        try:
            from glacierfs.sim import s3server
            local_s3 = s3server.start(port=args.local_s3)
        except ImportError:
            print("glacierfs sim: --local-s3 needs moto's S3 server: pip install "
                  "'glacierfs[demo]' (or moto[server])", file=sys.stderr)
            store.close()
            return 2
        except OSError as exc:
            print(f"glacierfs sim: cannot start the local S3 on port {args.local_s3}: {exc}",
                  file=sys.stderr)
            store.close()
            return 2
        args.s3_endpoint = args.s3_endpoint or local_s3.url
        args.sns_endpoint = args.sns_endpoint or local_s3.url
        log.info("local S3 (moto) at %s", local_s3.url)
    sim = Sim.open(store, config, seed=args.seed, s3_endpoint=args.s3_endpoint,
                   sns_endpoint=args.sns_endpoint)
    if args.sns_endpoint:
        sim.jobs.watch()  # every due job completes (and notifies) on time
    elif args.s3_endpoint:
        sim.select.watch(sim.jobs)
    for rule in args.fault:
        sim.faults.append(rule)
    try:
        server = SimServer((args.host, args.port), sim)
    except OSError as exc:
        print(f"glacierfs sim: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        store.close()
        return 2
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    if local_s3 is not None:
        print(f"s3 on {local_s3.url}", flush=True)
    log.info("data dir %s, delays %s, inventory %s, bandwidth %s per connection, %s in total",
             args.data_dir, delays, args.inventory_mode, args.bandwidth or "unlimited",
             args.bandwidth_total or "unlimited")

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        server.server_close()
        sim.select.stop()
        sim.jobs.stop()
        sim.notifier.stop()
        if local_s3 is not None:
            local_s3.stop()
        store.close()
    return 0
