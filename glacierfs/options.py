"""Mount options: ``-o a=b,c`` text in, a frozen ``MountOptions`` out, or one clear error.

Pure module. ``mount.fuse3`` adds generic options of its own (``dev``, ``suid``, ``rw``…) and
fstab lines carry more (``_netdev``, ``nofail``, ``x-systemd.*``); those are accepted and either
used (``ro``, ``allow_other``) or ignored. Anything else that is not a glacierfs option is
refused, so a typo never silently changes what a mount costs.

The one lookup it makes is of user and group names in ``retrieve_users`` (the system's user
database), so that a name that does not exist is a mount error, not a silent hole.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
import urllib.parse
from dataclasses import dataclass, field, replace
from pathlib import Path

TIERS = ("Expedited", "Standard", "Bulk")
RETRIEVE_MODES = ("auto", "manual")
MAX_READAHEAD = 64 * 1024 ** 2  # the kernel clamps far below this anyway

# Crawlers that read every file they see: their reads never start a paid retrieval by default.
DEFAULT_RETRIEVE_IGNORE = (
    "updatedb", "updatedb.mlocat", "plocate", "locate", "mlocate", "tracker-miner-f",
    "tracker-extract", "tracker-miner-fs", "tracker-miner-fs-3", "tracker-extract-3",
    "tumblerd", "baloo_file", "baloo_file_extr", "gnome-desktop-thumbnailer", "ffmpegthumbnailer",
    "totem-video-thumbnailer", "evince-thumbnailer", "kded5", "kded6", "thumbnail.so",
    "nautilus", "gvfsd-metadata", "zeitgeist-datahub", "clamd", "freshclam",
)

# Generic mount options: accepted, applied by the kernel or mount(8), otherwise meaningless here.
GENERIC_IGNORED = frozenset({
    "dev", "nodev", "suid", "nosuid", "exec", "noexec", "rw", "auto", "noauto", "user", "users",
    "nouser", "owner", "group", "defaults", "_netdev", "nofail", "atime", "noatime", "relatime",
    "norelatime", "strictatime", "nostrictatime", "lazytime", "nolazytime", "diratime",
    "nodiratime", "async", "sync", "dirsync", "silent", "loud", "mand", "nomand", "iversion",
    "noiversion", "comment", "x-gvfs-show", "x-gvfs-hide",
})
GENERIC_PREFIXES = ("x-systemd.", "x-gvfs-", "comment=", "x-mount.", "x-initrd.")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]?)(i?b?)\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_ACCOUNT_RE = re.compile(r"^(-|\d{12})$")
# arn:PARTITION:sns:REGION:ACCOUNT:TOPIC, as SNS names topics (a FIFO topic cannot take
# Glacier's notifications, so .fifo is refused too).
_TOPIC_RE = re.compile(r"^arn:aws(-[a-z]+)*:sns:[a-z]{2}(-[a-z]+)+-\d+:\d{12}:[A-Za-z0-9_-]{1,256}$")


LOCAL_POLL = 2.0


@dataclass(frozen=True)
class Principal:
    """One entry of ``retrieve_users``, resolved when the mount line is read: a user (``uid``),
    a group (``gid``), or ``*`` (anyone: neither)."""
    name: str                 # as written: alice, 1001, @backup, @1002, *
    uid: int | None = None
    gid: int | None = None

    @property
    def anyone(self) -> bool:
        return self.uid is None and self.gid is None


def is_loopback_url(url: str | None) -> bool:
    if not url:
        return False
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OptionError(ValueError):
    """A bad mount line; the message is shown to the user as is."""


def parse_size(text: str, name: str) -> int:
    """``50G`` → bytes (binary multiples, as ``df -h`` users expect)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise OptionError(f"{name}={text}: expected a size such as 500M, 50G or 2T")
    number, unit = float(m.group(1)), m.group(2).lower()
    power = "kmgtpe".find(unit) + 1 if unit else 0
    return int(number * 1024 ** power)


def parse_duration(text: str, name: str) -> float:
    """``90``, ``90s``, ``15m``, ``4h``, ``1d`` → seconds."""
    m = _DURATION_RE.match(text)
    if not m:
        raise OptionError(f"{name}={text}: expected seconds or a duration such as 30s, 15m, 4h")
    unit = (m.group(2) or "s").lower()
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    return float(m.group(1)) * scale


def _parse_int(text: str, name: str, base: int = 10, minimum: int = 0) -> int:
    try:
        value = int(text, base)
    except ValueError:
        raise OptionError(f"{name}={text}: expected a whole number") from None
    if value < minimum:
        raise OptionError(f"{name}={text}: must be at least {minimum}")
    return value


def default_cache_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/cache/glacierfs")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "glacierfs"


@dataclass(frozen=True)
class MountOptions:
    region: str
    account_id: str = "-"
    endpoint_url: str | None = None
    s3_endpoint_url: str | None = None  # where select results are read (default: AWS's S3)
    # Job completion notifications: every job started names this SNS topic; the SQS queue
    # subscribed to it (or to the vault's notification topic) is long-polled for completions.
    sns_topic: str | None = None
    sqs_queue_url: str | None = None
    sqs_endpoint_url: str | None = None  # SQS API endpoint (default: AWS's, by region)
    profile: str | None = None
    vaults: tuple[str, ...] | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    cache_size: int = 10 * 1024 ** 3
    tier: str = "Standard"
    retrieve: str = "auto"
    wait: float = 0.0
    poll: float | None = None
    max_jobs: int = 0            # 0: no limit on jobs in flight
    budget: int | None = None    # bytes of retrievals started per rolling 24 h
    inventory_refresh: float = 86400.0
    expedited_fallback: bool = True
    retrieve_ignore: tuple[str, ...] = DEFAULT_RETRIEVE_IGNORE
    # Who besides root and the mounting user may start retrievals (jobs/spenders.py).
    retrieve_users: tuple[Principal, ...] = ()
    chunk_size: int = 16 * 1024 * 1024
    downloads: int = 4           # chunks fetched at once
    readahead: int = 1024 * 1024  # kernel readahead for the mount (root only); 0: kernel default
    # Ranged retrievals (ranges.py): reads of larger archives retrieve only the windows they
    # touch. None: the default by tier (see ranges.DEFAULT_RANGE_SIZE); 0: off.
    range_size: int | None = None
    allow_other: bool = False
    uid: int | None = None
    gid: int | None = None
    umask: int = 0o022
    read_only: bool = False      # "ro" was given; the kernel mount stays rw so setxattr works
    debug: bool = False
    log: Path | None = None
    foreground: bool = False

    @property
    def state_dir(self) -> Path:
        return state_dir_for(self.cache_dir, self.region, self.endpoint_url, self.account_id)

    @property
    def poll_interval(self) -> float | None:
        """``poll`` if given; 2 s for a loopback endpoint (an emulator or a local proxy, where
        jobs finish in seconds); otherwise None: the tier decides."""
        if self.poll:
            return self.poll
        return LOCAL_POLL if is_loopback_url(self.endpoint_url) else None


def state_dir_for(cache_dir: Path, region: str, endpoint_url: str | None = None,
                  account_id: str = "-") -> Path:
    """One folder per account, region and endpoint: two mounts of different accounts, or of
    an emulator and AWS, never mix vault lists, inventories or jobs."""
    name = f"{account_id}@{region}"
    if endpoint_url:
        parts = urllib.parse.urlsplit(endpoint_url)
        where = f"{parts.hostname or ''}_{parts.port or ''}{parts.path.rstrip('/')}"
        name += "@" + re.sub(r"[^A-Za-z0-9.-]+", "_", where).strip("_")
    return Path(cache_dir) / name


def parse_source(source: str) -> tuple[str | None, str]:
    """``REGION`` or ``ACCOUNT_ID@REGION`` → (account or None, region)."""
    account, _, region = source.rpartition("@")
    if not _REGION_RE.match(region):
        raise OptionError(f"{source}: the source must be a region such as us-east-1, "
                          "or ACCOUNT_ID@REGION")
    if account and not _ACCOUNT_RE.match(account):
        raise OptionError(f"{source}: the account id must be 12 digits or '-'")
    return (account or None), region


def _bool_flag(value: str | None, name: str) -> bool:
    if value is None or value.lower() in ("1", "yes", "true", "on"):
        return True
    if value.lower() in ("0", "no", "false", "off"):
        return False
    raise OptionError(f"{name}={value}: expected yes or no")


def split_option_string(text: str) -> list[tuple[str, str | None]]:
    """``a=1,b,c=x`` → [("a","1"),("b",None),("c","x")]; ``\\,`` escapes a comma."""
    items: list[tuple[str, str | None]] = []
    for raw in re.split(r"(?<!\\),", text):
        raw = raw.replace("\\,", ",").strip()
        if not raw:
            continue
        key, eq, value = raw.partition("=")
        items.append((key.strip(), value if eq else None))
    return items


def parse_options(source: str, option_strings: list[str], foreground: bool = False) -> MountOptions:
    """Build MountOptions from SOURCE and the ``-o`` strings; raises OptionError."""
    account, region = parse_source(source)
    values: dict[str, object] = {"region": region, "foreground": foreground}
    if account:
        values["account_id"] = account
    for text in option_strings:
        for key, value in split_option_string(text):
            _apply(values, key, value)
    opts = MountOptions(**values)  # type: ignore[arg-type]
    if opts.cache_size < opts.chunk_size:
        # A chunk is the unit stored and verified: a cache smaller than one could hold nothing.
        raise OptionError(f"cache_size={opts.cache_size} bytes is smaller than one chunk "
                          f"(chunk_size={opts.chunk_size}); raise cache_size or lower chunk_size")
    if opts.sqs_endpoint_url and not opts.sqs_queue_url:
        raise OptionError("sqs_endpoint_url= needs sqs_queue_url= (the queue to listen to)")
    if opts.range_size and opts.range_size % opts.chunk_size:
        # Windows are downloaded in chunks: a window must hold whole chunks to be verified.
        raise OptionError(f"range_size={opts.range_size // 1024 ** 2}M is not a multiple of "
                          f"chunk_size={opts.chunk_size // 1024 ** 2}M")
    return opts


def _need(value: str | None, key: str) -> str:
    if value is None or value == "":
        raise OptionError(f"{key} needs a value ({key}=...)")
    return value


def _apply(values: dict[str, object], key: str, value: str | None) -> None:
    if key in GENERIC_IGNORED or key.startswith(GENERIC_PREFIXES):
        return
    if key == "ro":
        values["read_only"] = True
        return
    if key in ("endpoint_url", "profile", "s3_endpoint_url"):
        values[key] = _need(value, key)
    elif key == "sns_topic":
        v = _need(value, key)
        if not _TOPIC_RE.match(v):
            raise OptionError(f"sns_topic={v}: expected an SNS topic ARN such as "
                              "arn:aws:sns:us-east-1:123456789012:glacier-jobs")
        values[key] = v
    elif key in ("sqs_queue_url", "sqs_endpoint_url"):
        v = _need(value, key)
        parts = urllib.parse.urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OptionError(f"{key}={v}: expected an http(s) URL")
        if key == "sqs_queue_url" and parts.path.strip("/").count("/") != 1:
            raise OptionError(f"{key}={v}: expected a queue URL such as "
                              "https://sqs.us-east-1.amazonaws.com/123456789012/glacier-jobs")
        values[key] = v
    elif key == "account_id":
        v = _need(value, key)
        if not _ACCOUNT_RE.match(v):
            raise OptionError(f"account_id={v}: expected 12 digits or '-'")
        values[key] = v
    elif key == "vaults":
        names = tuple(n for n in _need(value, key).split(":") if n)
        if not names:
            raise OptionError("vaults= needs at least one vault name (vaults=a:b)")
        values[key] = names
    elif key == "cache_dir":
        values[key] = Path(_need(value, key)).expanduser().absolute()
    elif key == "cache_size":
        values[key] = parse_size(_need(value, key), key)
    elif key == "tier":
        v = _need(value, key).capitalize()
        if v not in TIERS:
            raise OptionError(f"tier={value}: expected one of {', '.join(TIERS)}")
        values[key] = v
    elif key == "retrieve":
        v = _need(value, key).lower()
        if v not in RETRIEVE_MODES:
            raise OptionError(f"retrieve={value}: expected auto or manual")
        values[key] = v
    elif key in ("wait", "poll", "inventory_refresh"):
        v = _need(value, key)
        if key == "inventory_refresh" and v.lower() in ("off", "never", "no"):
            values[key] = 0.0
        else:
            values[key] = parse_duration(v, key)
    elif key == "max_jobs":
        values[key] = _parse_int(_need(value, key), key)
    elif key == "downloads":
        values[key] = _parse_int(_need(value, key), key, minimum=1)
    elif key == "readahead":
        size = parse_size(_need(value, key), key)
        if size > MAX_READAHEAD:
            raise OptionError(f"readahead={value}: at most {MAX_READAHEAD // 1024 ** 2}M")
        values[key] = size
    elif key == "budget":
        v = _need(value, key)
        values[key] = None if v.lower() in ("off", "none", "unlimited") else parse_size(v, key)
    elif key == "chunk_size":
        size = parse_size(_need(value, key), key)
        mib = size // (1024 * 1024)
        if size % (1024 * 1024) or mib < 1 or mib & (mib - 1):
            raise OptionError(f"chunk_size={value}: must be a power-of-two number of MiB (1M, 2M, … 64M)")
        values[key] = size
    elif key == "range_size":
        v = _need(value, key)
        if v.lower() in ("off", "no", "none", "0"):
            values[key] = 0
            return
        size = parse_size(v, key)
        mib = size // (1024 * 1024)
        if size % (1024 * 1024) or mib < 1 or mib & (mib - 1):
            raise OptionError(f"range_size={value}: must be a power-of-two number of MiB "
                              "(16M, 32M, … 1G) or off")
        values[key] = size
    elif key == "expedited_fallback":
        values[key] = _bool_flag(value, key)
    elif key == "retrieve_ignore":
        v = value or ""
        values[key] = tuple(n for n in v.split(":") if n)
    elif key == "retrieve_users":
        values[key] = parse_principals(_need(value, key))
    elif key in ("uid", "gid"):
        values[key] = _parse_int(_need(value, key), key)
    elif key == "umask":
        values[key] = _parse_int(_need(value, key), key, base=8)
    elif key in ("allow_other", "debug"):
        values[key] = _bool_flag(value, key)
    elif key == "log":
        values[key] = Path(_need(value, key)).expanduser().absolute()
    elif key in ("foreground", "f"):
        values["foreground"] = True
    else:
        raise OptionError(f"unknown option '{key}' (see glacierfs --help for the options)")


def parse_principals(text: str, name: str = "retrieve_users") -> tuple[Principal, ...]:
    """``alice:1001:@backup:@1002`` → principals; ``*`` is anyone. Names must exist here;
    numbers are taken as they are (a uid or gid need not have a name)."""
    out: list[Principal] = []
    for item in (i.strip() for i in text.split(":")):
        if not item:
            continue
        if item == "*":
            out.append(Principal("*"))
        elif item.startswith("@"):
            group = item[1:]
            if group.isdigit():
                out.append(Principal(item, gid=int(group)))
                continue
            try:
                out.append(Principal(item, gid=grp.getgrnam(group).gr_gid))
            except KeyError:
                raise OptionError(f"{name}: there is no group named '{group}' on this "
                                  "system (groups are written @NAME or @GID)") from None
        elif item.isdigit():
            out.append(Principal(item, uid=int(item)))
        else:
            try:
                out.append(Principal(item, uid=pwd.getpwnam(item).pw_uid))
            except KeyError:
                raise OptionError(f"{name}: there is no user named '{item}' on this system "
                                  "(groups are written @NAME)") from None
    if not out:
        raise OptionError(f"{name} needs at least one user or @group ({name}=alice:@backup)")
    return tuple(out)


def with_overrides(opts: MountOptions, **changes: object) -> MountOptions:
    return replace(opts, **changes)
