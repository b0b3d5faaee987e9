"""Archive descriptions → safe relative paths (and the uploader's mtime, when there is one).

Pure module: no I/O. The namespace calls :func:`decode_description` once per inventory row and
builds directories from ``parts``; everything that reaches the kernel as a name goes through
:func:`safe_component` first, so this file is the one place that decides what a name may be.

Formats are tried in the order of ``reference.md``: mt-aws-glacier ``mt2`` and ``mt1``,
FastGlacier v4/v3/v2 (``<m>…</m>``), FastGlacier v1 (``<ArchiveMetadata>…``), CloudBerry JSON
(UTF-7 ``Path``), QNAP JSON (``path``), then plain text (the description is a path, ``\\`` is
``/``). Surrounding whitespace and one pair of matching surrounding quotes are ignored, and so is
whitespace inside tags and around values.

Broken input never raises. A description that *looks* like a structured format (``mt1 ``/``mt2 ``
prefix, ``<`` markup, ``{…}`` JSON) but whose payload does not decode is shown as plain text
in a single component: its slashes come from markup or base64, not from a path, so splitting it
into directories would only produce nonsense (``mt2 !!!`` → one file named ``mt2 !!!``).

Safety rules, applied to every component: ``/`` and control characters (C0, DEL, C1, bidi
overrides) become ``_``; lone surrogates become U+FFFD; ``.`` and empty components are dropped;
``..`` becomes ``__`` (it can never act as a parent); a component longer than 255 UTF-8 bytes is
cut on a character boundary, keeping a short extension. Paths deeper than 64 components keep the
first 63 directories and the file name. A first component in :data:`RESERVED_ROOT_NAMES` gets a
``_`` prefix.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "DecodedDescription",
    "MAX_DEPTH",
    "MAX_NAME_BYTES",
    "RESERVED_ROOT_NAMES",
    "archive_id_name",
    "decode_description",
    "duplicate_name",
    "safe_component",
    "safe_parts",
]

MAX_NAME_BYTES = 255  # NAME_MAX on Linux; the kernel refuses longer names
MAX_DEPTH = 64  # deeper than any real tree; bounds the work per archive
RESERVED_ROOT_NAMES: frozenset[str] = frozenset({".by-id"})  # the vault root's own entries
# An extension is kept across truncation only when it looks like one: short, after a dot that
# is not the first character.
MAX_EXT_CHARS = 16
# Glacier caps descriptions at 1,024 characters; anything much longer is not from an uploader
# we know, so it is only treated as plain text (keeps the regexes linear on hostile input).
MAX_STRUCTURED_CHARS = 8192
# A duplicate's suffix: 16 hex digits of SHA-256(archive id) = 64 bits, so even a million
# archives sharing one name collide with probability ~3e-8, whatever the ids look like.
DUPLICATE_TAG_HEX = 16
REPLACEMENT = "_"  # stands in for characters a name cannot hold

# C0 controls, DEL, C1 controls, "/" and the bidi overrides/isolates that can disguise a
# name's extension in a terminal or file manager.
_UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f/\u202a-\u202e\u2066-\u2069]")
_SURROGATES = re.compile("[\ud800-\udfff]")
_MTIME = re.compile(r"\s*(\d{4})(\d{2})(\d{2})[Tt](\d{2})(\d{2})(\d{2})[Zz]\s*")
_MT = re.compile(r"mt([12])\s+(\S+)(?:\s.*)?", re.S)  # mt-aws-glacier ignores later words
_MT_PREFIX = re.compile(r"mt[12]\s")
_FG_ENVELOPE = re.compile(r"<\s*m\s*>(.*)<\s*/\s*m\s*>", re.S | re.I)
_FG1_ENVELOPE = re.compile(r"<\s*ArchiveMetadata\s*>(.*)<\s*/\s*ArchiveMetadata\s*>", re.S | re.I)
_WHITESPACE = re.compile(r"\s+")
# Plain ASCII paths that every rule below leaves unchanged: components that start with a
# letter, digit, "_" or "-" (so never "", ".", "..", or the reserved ".by-id"), hold no
# character any format or repair looks at, are far below 255 bytes, and number at most
# MAX_DEPTH. Most inventories are mostly such paths; matching them first halves ingest time.
_SIMPLE_PATH = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.,+=@~-]{0,199}"
                          rf"(?:/[A-Za-z0-9_-][A-Za-z0-9_.,+=@~-]{{0,199}}){{0,{MAX_DEPTH - 1}}}")
_UTF7_RUN = re.compile(r"\+([A-Za-z0-9+/]*)(-?)")


def _tag_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"<\s*{name}\s*>(.*?)<\s*/\s*{name}\s*>", re.S | re.I)


_TAG_V, _TAG_P, _TAG_LM, _TAG_CE, _TAG_PATH = (_tag_re(n) for n in ("v", "p", "lm", "ce", "Path"))


@dataclass(frozen=True)
class DecodedDescription:
    """What a description tells us: where the archive goes, and when it was last modified."""

    parts: tuple[str, ...]  # safe components relative to the vault dir; () → name by archive id
    mtime: datetime | None  # uploader's mtime, aware UTC, when the format carries one
    is_folder: bool  # FastGlacier folder marker: show a directory, not a file
    format: str  # mt2 mt1 fastglacier4/3/2/1 cloudberry qnap plain none


# ---------------------------------------------------------------------------------------------
# Components


def _fix_surrogates(text: str) -> str:
    """Join surrogate pairs that arrived as two code points; lone halves become U+FFFD."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _split_ext(name: str) -> tuple[str, str]:
    dot = name.rfind(".")
    if 0 < dot and 2 <= len(name) - dot <= MAX_EXT_CHARS + 1:
        return name[:dot], name[dot:]
    return name, ""


def _cut_utf8(text: str, limit: int) -> str:
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def _fit(name: str, limit: int = MAX_NAME_BYTES) -> str:
    """Cut ``name`` to ``limit`` UTF-8 bytes on a character boundary, keeping the extension."""
    if len(name) <= limit // 4 or len(name.encode("utf-8")) <= limit:
        return name
    stem, ext = _split_ext(name)
    ext_bytes = len(ext.encode("utf-8"))
    if ext and ext_bytes <= limit // 4:
        return _cut_utf8(stem, limit - ext_bytes) + ext
    return _cut_utf8(name, limit)


def safe_component(name: str) -> str | None:
    """``name`` made into one safe path component, or None when nothing usable remains.

    Context-free: the reserved root names are the caller's (or :func:`decode_description`'s)
    business, since they only matter at the vault root.
    """
    if _SURROGATES.search(name):
        name = _fix_surrogates(name)
    name = _UNSAFE_CHARS.sub(REPLACEMENT, name)
    if name == "" or name == ".":
        return None
    if name == "..":
        return REPLACEMENT * 2
    return _fit(name)


def _parts_from_path(path: str, backslash_is_slash: bool) -> tuple[str, ...]:
    if backslash_is_slash:
        path = path.replace("\\", "/")
    parts = [c for c in map(safe_component, path.split("/")) if c is not None]
    if len(parts) > MAX_DEPTH:
        parts = parts[: MAX_DEPTH - 1] + parts[-1:]
    if parts and parts[0] in RESERVED_ROOT_NAMES:
        parts[0] = _fit(REPLACEMENT + parts[0])
    return tuple(parts)


def safe_parts(path: str) -> tuple[str, ...]:
    """A ``/``-separated path from an uploader's own records (not a description) as safe
    components: the same rules as every decoded path; ``\\`` stays part of a name."""
    return _parts_from_path(path, backslash_is_slash=False)


def _single_part(text: str) -> tuple[str, ...]:
    """The whole text as one component: for descriptions whose slashes are not separators."""
    return _parts_from_path(text.replace("/", REPLACEMENT), backslash_is_slash=False)


def duplicate_name(name: str, archive_id: str) -> str:
    """A deterministic, distinct name for an older archive that shares ``name``.

    ``report.pdf`` → ``report (1a2b3c4d5e6f7a8b).pdf``: the extension stays last so the file
    still opens with the right program; the tag is a hash of the archive id (uniform whatever the
    ids look like) and survives truncation, so distinct ids give distinct names.
    """
    base = safe_component(name) or "archive"
    tag = f" ({hashlib.sha256(archive_id.encode('utf-8', 'surrogatepass')).hexdigest()[:DUPLICATE_TAG_HEX]})"
    stem, ext = _split_ext(base)
    room = MAX_NAME_BYTES - len(tag) - len(ext.encode("utf-8"))
    return _cut_utf8(stem, room) + tag + ext


def archive_id_name(archive_id: str) -> str:
    """The file name of an archive whose description gives no path (also used under ``.by-id``).

    Real ids are 138 url-safe characters and come back unchanged; anything unusual is made safe,
    and an id too long for a name keeps its start plus a hash so names stay distinct.
    """
    name = safe_component(archive_id)
    if name == archive_id and name not in RESERVED_ROOT_NAMES:
        return name
    digest = hashlib.sha256(archive_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return _cut_utf8(name or "archive", MAX_NAME_BYTES - 33) + "~" + digest


# ---------------------------------------------------------------------------------------------
# Decoders: each returns None when the description is not (decodably) in its format.


def _parse_mtime(value: object) -> datetime | None:
    """``YYYYMMDDTHHMMSSZ`` → aware UTC datetime; anything else → None."""
    if not isinstance(value, str):
        return None
    match = _MTIME.fullmatch(value)
    if match is None:
        return None
    try:
        return datetime(*map(int, match.groups()), tzinfo=UTC)
    except ValueError:
        return None


def _b64decode(text: str) -> bytes | None:
    """Lenient base64: either alphabet, whitespace and missing padding tolerated."""
    text = _WHITESPACE.sub("", text).rstrip("=").replace("-", "+").replace("_", "/")
    if len(text) % 4 == 1:
        return None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _json_object(text: str | bytes) -> dict | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # deep nesting in hostile JSON recurses
        return None
    return value if isinstance(value, dict) else None


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def _decode_mt(text: str) -> DecodedDescription | None:
    match = _MT.fullmatch(text)
    if match is None:
        return None
    version, payload = match.groups()
    raw = _b64decode(payload)
    if raw is None:
        return None
    meta = None
    if version == "1":
        # mt1 encoded the JSON as UTF-8 twice; undo both. A payload that was encoded only once
        # fails one of the steps and is read as mt2 would be.
        try:
            meta = _json_object(raw.decode("utf-8").encode("latin-1").decode("utf-8"))
        except (UnicodeDecodeError, UnicodeEncodeError):
            meta = None
    if meta is None:
        try:
            meta = _json_object(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return None
    if meta is None or not isinstance(meta.get("filename"), str):
        return None
    parts = _parts_from_path(meta["filename"], backslash_is_slash=False)
    return DecodedDescription(parts, _parse_mtime(meta.get("mtime")), False, f"mt{version}")


def _tag(body: str, pattern: re.Pattern[str]) -> str | None:
    match = pattern.search(body)
    return None if match is None else _unquote(match.group(1))


def _decoded_path(b64: str | None) -> str | None:
    raw = None if b64 is None else _b64decode(b64)
    # UTF-8 as FastGlacier writes it; a stray bad byte costs one character, not the name.
    return None if raw is None else raw.decode("utf-8", "replace")


def _folder_result(path: str, mtime: datetime | None, fmt: str) -> DecodedDescription:
    parts = _parts_from_path(path, backslash_is_slash=False)
    # A folder marker with no usable path (e.g. "/") is shown as an id-named file.
    is_folder = path.endswith("/") and bool(parts)
    return DecodedDescription(parts, mtime, is_folder, fmt)


def _decode_fastglacier(text: str) -> DecodedDescription | None:
    match = _FG_ENVELOPE.fullmatch(text)
    if match is None:
        return None
    body = match.group(1)
    path = _decoded_path(_tag(body, _TAG_P))
    if path is None:
        return None
    version_text = _tag(body, _TAG_V)
    if version_text is not None and version_text.isascii() and version_text.isdigit():
        version = min(max(int(version_text), 2), 4)  # v5+ reads like v4, v1 here like v2
    else:
        version = 3 if _tag(body, _TAG_CE) is not None else 2
    return _folder_result(path, _parse_mtime(_tag(body, _TAG_LM)), f"fastglacier{version}")


def _decode_fastglacier1(text: str) -> DecodedDescription | None:
    match = _FG1_ENVELOPE.fullmatch(text)
    if match is None:
        return None
    path = _decoded_path(_tag(match.group(1), _TAG_PATH))
    return None if path is None else _folder_result(path, None, "fastglacier1")


def _utf7_run(match: re.Match[str]) -> str:
    run, dash = match.groups()
    if not run:
        return "+" if dash else match.group(0)  # "+-" is a literal "+"
    usable = len(run) - len(run) % 4 if len(run) % 4 == 1 else len(run)
    raw = base64.b64decode(run[:usable] + "=" * (-usable % 4))
    if len(raw) < 2:
        return match.group(0)
    return raw[: len(raw) & ~1].decode("utf-16-be", "replace")


def decode_utf7(text: str) -> str:
    """UTF-7 (RFC 2152) as CloudBerry writes paths, decoded leniently: never raises.

    ``+<base64 of UTF-16BE>-`` runs are decoded, ``+-`` is ``+``; a run that does not decode is
    kept as it stands, and lone surrogates become U+FFFD.
    """
    if "+" not in text:
        return text
    return _UTF7_RUN.sub(_utf7_run, text)


def _decode_json(text: str) -> DecodedDescription | None:
    meta = _json_object(text)
    if meta is None:
        return None
    path = meta.get("Path")
    if isinstance(path, str):
        parts = _parts_from_path(decode_utf7(path), backslash_is_slash=True)
        return DecodedDescription(parts, _parse_mtime(meta.get("UTCDateModified")), False,
                                  "cloudberry")
    path = meta.get("path")
    if isinstance(path, str):
        kind = meta.get("type")
        parts = _parts_from_path(path, backslash_is_slash=False)
        is_folder = bool(parts) and isinstance(kind, str) and kind.lower() in (
            "folder", "dir", "directory")
        return DecodedDescription(parts, None, is_folder, "qnap")
    return None


def _looks_structured(text: str) -> bool:
    return (_MT_PREFIX.match(text) is not None
            or text[:1] == "<"  # markup, possibly cut short; Windows forbids "<" in names
            or (text[:1] == "{" and text[-1:] == "}"))


def decode_description(description: str) -> DecodedDescription:
    """Decode a Glacier archive description into safe path components; never raises."""
    text = _unquote(description)
    if not text:
        return DecodedDescription((), None, False, "none")
    if _SIMPLE_PATH.fullmatch(text):
        # The common plain path needs no decoding and no repair (see _SIMPLE_PATH).
        return DecodedDescription(tuple(text.split("/")), None, False, "plain")
    return _decode_general(text)


def _decode_general(text: str) -> DecodedDescription:
    """Every format in turn, then plain text with every repair."""
    if len(text) <= MAX_STRUCTURED_CHARS:
        first = text[0]
        decoders = (
            (_decode_mt,) if first == "m"
            else (_decode_fastglacier, _decode_fastglacier1) if first == "<"
            else (_decode_json,) if first == "{"
            else ()
        )
        for decoder in decoders:
            result = decoder(text)
            if result is not None:
                return result
        if _looks_structured(text):
            parts = _single_part(text)
            return DecodedDescription(parts, None, False, "plain" if parts else "none")
    parts = _parts_from_path(text, backslash_is_slash=True)
    return DecodedDescription(parts, None, False, "plain" if parts else "none")
