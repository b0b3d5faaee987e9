"""The mount daemon: ``glacierfs SOURCE MOUNTPOINT [-o OPTS] [-f]``.

Lifecycle: parse and check everything that can be checked without the network; fork (unless
``-f``) *before* any thread exists; the child builds the components, mounts, and only then
tells the parent, which exits 0. Any failure before that reaches the parent as one line and a
non-zero exit, as a mount helper must behave. SIGTERM/SIGINT end the FUSE loop cleanly; the
state database is written through, so there is nothing left to save but the cache index.
"""

from __future__ import annotations

import argparse
import errno
import faulthandler
import logging
import logging.handlers
import os
import signal
import sys
from pathlib import Path
from collections.abc import Callable

from glacierfs import __version__
from glacierfs.mount import MountError, run_mount
from glacierfs.options import MountOptions, OptionError, parse_options

log = logging.getLogger("glacierfs")

EXIT_USAGE = 2
EXIT_FAIL = 1
READY_TIMEOUT = 120.0  # seconds the parent waits for the child to mount
# A FUSE mount whose daemon died: ENOTCONN, or ECONNABORTED on the first access after the crash.
DEAD_MOUNT_ERRORS = (errno.ENOTCONN, errno.ECONNABORTED)


def _argument_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="glacierfs",
        description="Mount Amazon S3 Glacier vaults. Sub-commands: sim, status, restore, wait, "
                    "select, demo (glacierfs COMMAND --help).",
        epilog="Options (-o, comma-separated): endpoint_url, s3_endpoint_url, profile, account_id, vaults "
               "(a:b), cache_dir, cache_size (50G), tier (Expedited|Standard|Bulk), retrieve "
               "(auto|manual), wait (s), poll (s), max_jobs, budget (bytes/day, 100G), "
               "inventory_refresh (s|off), expedited_fallback, retrieve_ignore (a:b), "
               "retrieve_users (alice:@backup), "
               "chunk_size (16M), range_size (32M|off), downloads, sns_topic (ARN), "
               "sqs_queue_url (URL), sqs_endpoint_url (URL), allow_other, uid, gid, "
               "umask, debug, log (file). "
               "Generic mount options (dev, suid, _netdev, nofail, x-systemd.*, ro, rw…) are "
               "accepted.")
    p.add_argument("source", help="REGION or ACCOUNT_ID@REGION, e.g. us-east-1")
    p.add_argument("mountpoint", help="an empty directory")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTS")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-d", "--debug", action="store_true", help="foreground with debug logging")
    p.add_argument("-s", action="store_true", help=argparse.SUPPRESS)  # fuse's single-thread flag
    p.add_argument("-n", action="store_true", help=argparse.SUPPRESS)  # mount(8): no mtab
    p.add_argument("-v", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version=f"glacierfs {__version__}")
    return p


def check_mountpoint(path: Path) -> None:
    """Refuse a missing, non-directory, busy or stale mount point with the fix in the message."""
    try:
        path.stat()
    except FileNotFoundError:
        raise MountError(f"mount point {path} does not exist (mkdir -p {path})") from None
    except OSError as exc:
        if exc.errno in DEAD_MOUNT_ERRORS:
            raise MountError(_stale_message(path)) from None
        raise MountError(f"mount point {path}: {exc.strerror}") from None
    if not path.is_dir():
        raise MountError(f"mount point {path} is not a directory")
    if os.path.ismount(path):
        try:
            os.statvfs(path)  # stat() may answer from the kernel's cache; statfs always asks
        except OSError as exc:
            if exc.errno in DEAD_MOUNT_ERRORS:
                raise MountError(_stale_message(path)) from None
        raise MountError(f"{path} is already a mount point (umount {path} first)")


def _stale_message(path: Path) -> str:
    return (f"{path} is a dead FUSE mount left by a crash (Transport endpoint is not "
            f"connected); run: fusermount3 -u {path}  (or umount -l {path})")


def _private_file_handler(path: Path) -> logging.FileHandler:
    """Logs name archives and vaults: readable by the mounting user only (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    return logging.FileHandler(path)


def _setup_logging(opts: MountOptions, to_stderr: bool) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    level = logging.DEBUG if opts.debug else logging.INFO
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if opts.log:
        handler: logging.Handler = _private_file_handler(opts.log)
    elif to_stderr:
        handler = logging.StreamHandler(sys.stderr)
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        fmt = "glacierfs[%(process)d]: %(levelname)s %(name)s: %(message)s"
    else:
        handler = _private_file_handler(opts.state_dir / "glacierfs.log")
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str]) -> int:
    args = _argument_parser().parse_args(argv)
    try:
        opts = parse_options(args.source, args.options, foreground=args.foreground or args.debug)
        if args.debug:
            from dataclasses import replace
            opts = replace(opts, debug=True)
        mountpoint = Path(args.mountpoint).absolute()
        check_mountpoint(mountpoint)
        from glacierfs.store import StateDirError, prepare_state_dir
        try:
            prepare_state_dir(opts.state_dir)
        except (StateDirError, OSError) as exc:
            raise MountError(f"cache dir: {exc}") from None
        from glacierfs import statelock
        try:
            statelock.acquire(opts.state_dir, mountpoint)
        except statelock.StateInUse as exc:
            raise MountError(str(exc)) from None
        except OSError as exc:
            raise MountError(f"cache dir {opts.state_dir}: {exc.strerror}") from None
    except (OptionError, MountError) as exc:
        print(f"glacierfs: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, OptionError) else EXIT_FAIL

    if opts.foreground:
        _setup_logging(opts, to_stderr=True)
        # logs already go to stderr (unless log=FILE): the reason is not printed twice
        fail = _print_failure if opts.log else (lambda message: None)
        return _run(opts, mountpoint, ready=lambda: None, fail=fail)
    return _daemonize(opts, mountpoint)


def _print_failure(message: str) -> None:
    print(f"glacierfs: {message}", file=sys.stderr)


def _daemonize(opts: MountOptions, mountpoint: Path) -> int:
    """Fork; the parent returns once the child reports the mount live (0) or failed (1)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            message = pipe.read().decode("utf-8", "replace").strip()
        if message == "ok":
            return 0
        _print_failure(message or "the mount process exited before mounting (see the log)")
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        return EXIT_FAIL
    os.close(read_fd)
    os.setsid()
    pipe = os.fdopen(write_fd, "wb", buffering=0)

    def ready() -> None:
        pipe.write(b"ok")
        pipe.close()
        _detach_stdio()

    def fail(message: str) -> None:
        if not pipe.closed:
            pipe.write(message.encode())
            pipe.close()

    _setup_logging(opts, to_stderr=False)
    code = _run(opts, mountpoint, ready, fail)
    os._exit(code)


def _detach_stdio() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def _run(opts: MountOptions, mountpoint: Path, ready: Callable[[], None],
         fail: Callable[[str], None]) -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    import trio

    try:
        trio.run(run_mount, opts, mountpoint, ready)
    except MountError as exc:
        log.error("%s", exc)
        fail(str(exc))
        return EXIT_FAIL
    except KeyboardInterrupt:  # Ctrl-C before the mount was live (afterwards it unmounts)
        fail("interrupted before the mount was live")
        return 130
    except Exception as exc:  # the one place an unexpected error becomes a clean exit
        log.exception("glacierfs stopped on an internal error")
        fail(f"internal error: {exc}")
        return EXIT_FAIL
    return 0
