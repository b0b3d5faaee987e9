"""Streaming parser for Glacier vault inventories (JSON and CSV job output).

Pure module: it reads only the binary stream it is given, in ``BLOCK_SIZE`` blocks, and keeps at
most one block plus one archive entry in memory, so a vault of millions of archives (a JSON
inventory of ~400 MB on a single line) parses in flat memory. The namespace consumes the rows as
they come and stores them.

Damage is never fatal once the document is known to be an inventory:

* a row that fails validation is skipped and counted (``report.rows_skipped``);
* a document that ends early, or becomes unreadable part-way, yields every complete row before
  that point and then sets ``report.truncated`` (no exception);
* only a stream that is not an inventory at all (wrong type, garbage) raises
  :class:`InventoryFormatError`, and always before the first row is yielded.

Duplicate archive ids are yielded as they come; the caller deduplicates (the namespace keeps the
last row). Descriptions longer than Glacier's 1,024 characters are kept, cut to 1,024 characters
(noted in ``report.problems``); an archive entry larger than ``MAX_ITEM_CHARS`` cannot be a
Glacier row and is skipped without being held in memory.

JSON is parsed with ``json.JSONDecoder.raw_decode`` one ``ArchiveList`` entry at a time over a
bounded window. CSV is parsed by structure rather than with the ``csv`` module: Glacier escapes
``"`` as ``\\"`` but leaves ``\\`` alone, so a description ending in a backslash fools any
quote-scanning parser. The archive id has no comma, and the last three fields (date, size, tree
hash) have none either, so the description is exactly what lies between them.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

__all__ = [
    "InventoryArchive",
    "InventoryFormatError",
    "InventoryReport",
    "iter_inventory",
    "sniff_format",
]

BLOCK_SIZE = 1 << 20  # bytes per read: large enough for speed, small enough to not matter
# A Glacier entry is ~300 characters (a 1,024-character description with every character
# \u-escaped stays under 7 KiB); anything past this is skipped rather than held.
MAX_ITEM_CHARS = 1 << 20
MAX_LINE_BYTES = 1 << 20  # the same bound for one CSV line
MAX_DESCRIPTION_CHARS = 1024  # Glacier's own limit on archive descriptions
MAX_ARCHIVE_ID_CHARS = 1024  # real ids are 138; be generous, but bounded
MAX_SIZE = (1 << 63) - 1  # fits SQLite's INTEGER
MAX_PROBLEMS = 20  # reasons kept in the report; the counts cover the rest
CSV_HEADER = ("ArchiveId", "ArchiveDescription", "CreationDate", "Size", "SHA256TreeHash")
# How close to the end of the window a JSON error must be to mean "need more data".
_NEAR_END = 16

_ARCHIVE_ID = re.compile(r"[A-Za-z0-9_-]+")
_TREE_HASH = re.compile(r"[0-9a-fA-F]{64}")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_DIGITS = re.compile(r"[0-9]{1,19}")
_WS = re.compile(r"[ \t\r\n]*")
_STRUCTURAL = re.compile(r'[\[\]{}"]')
_STRING_END = re.compile(r'["\\]')
_SCALAR = re.compile(r"[^,\]}\s]*")
_WS_CHARS = " \t\r\n"


class InventoryFormatError(ValueError):
    """The stream is not a Glacier inventory at all (wrong type, garbage)."""


@dataclass(frozen=True)
class InventoryArchive:
    """One validated inventory row."""

    archive_id: str
    description: str
    creation_date: datetime  # aware, UTC
    size: int
    tree_hash: str  # 64 lowercase hex digits


@dataclass
class InventoryReport:
    """What the parser saw; filled in while parsing, readable during and after iteration."""

    vault_arn: str | None = None
    inventory_date: datetime | None = None
    rows_ok: int = 0
    rows_skipped: int = 0  # rows that failed validation: kept out, counted
    problems: list[str] = field(default_factory=list)  # first MAX_PROBLEMS reasons
    truncated: bool = False  # the document ended early (or was unreadable past some point)


# --- shared validation -----------------------------------------------------------------------

def _problem(report: InventoryReport, message: str) -> None:
    if len(report.problems) < MAX_PROBLEMS:
        report.problems.append(message)


def _skip(report: InventoryReport, message: str) -> None:
    report.rows_skipped += 1
    _problem(report, message)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_date(value: object) -> datetime | None:
    """ISO-8601 (``2012-05-15T17:19:46.700Z``, with or without fraction/zone) → aware UTC."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)  # Glacier's dates are UTC
    return parsed.astimezone(UTC)


def _make_row(report: InventoryReport, archive_id: object, description: object,
              creation_date: object, size: object, tree_hash: object) -> InventoryArchive | None:
    """A validated row, or None after counting the row as skipped."""
    if (not isinstance(archive_id, str) or len(archive_id) > MAX_ARCHIVE_ID_CHARS
            or not _ARCHIVE_ID.fullmatch(archive_id)):
        _skip(report, f"bad ArchiveId {_short(archive_id)}")
        return None
    if isinstance(size, str) and _DIGITS.fullmatch(size):
        size = int(size)
    if type(size) is not int or not 0 <= size <= MAX_SIZE:
        _skip(report, f"archive {archive_id[:20]}: bad Size {_short(size)}")
        return None
    if not isinstance(tree_hash, str) or not _TREE_HASH.fullmatch(tree_hash):
        _skip(report, f"archive {archive_id[:20]}: bad SHA256TreeHash {_short(tree_hash)}")
        return None
    created = _parse_date(creation_date)
    if created is None:
        _skip(report, f"archive {archive_id[:20]}: bad CreationDate {_short(creation_date)}")
        return None
    if description is None:
        description = ""
    elif not isinstance(description, str):
        _skip(report, f"archive {archive_id[:20]}: bad ArchiveDescription {_short(description)}")
        return None
    elif not description.isascii() and _LONE_SURROGATE.search(description):
        # JSON may carry "\ud800": no UTF-8 store can hold it. Pairs are joined, halves
        # become U+FFFD, and the row stays (one bad character must not sink an inventory).
        description = description.encode("utf-16-le", "surrogatepass").decode(
            "utf-16-le", "replace")
        _problem(report, f"archive {archive_id[:20]}: description had lone surrogates")
    if len(description) > MAX_DESCRIPTION_CHARS:
        _problem(report, f"archive {archive_id[:20]}: description of {len(description)} "
                         f"characters cut to {MAX_DESCRIPTION_CHARS}")
        description = description[:MAX_DESCRIPTION_CHARS]
    report.rows_ok += 1
    return InventoryArchive(archive_id, description, created, size, tree_hash.lower())


# --- JSON ------------------------------------------------------------------------------------

class _EndOfData(Exception):
    """The document ended in the middle of something."""


class _BadSyntax(Exception):
    """The document is not valid JSON at this point."""


class _TooBig(Exception):
    """A value does not fit in MAX_ITEM_CHARS."""


class _Window:
    """A bounded window of decoded text over the stream, consumed from ``pos``."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._decode = json.JSONDecoder(strict=False).raw_decode
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.consumed = 0  # characters dropped before buf[0], for messages

    def more(self) -> bool:
        """Append one block, dropping what was consumed; False at the end of the stream."""
        if self.eof:
            return False
        data = self._stream.read(BLOCK_SIZE)
        if data:
            text = self._utf8.decode(data)
        else:
            text = self._utf8.decode(b"", final=True)
            self.eof = True
        self.consumed += self.pos
        self.buf = self.buf[self.pos:] + text
        self.pos = 0
        return bool(data or text)

    def peek(self) -> str:
        """The next non-blank character, not consumed; raises _EndOfData at the end."""
        buf, pos = self.buf, self.pos
        if pos < len(buf) and buf[pos] not in _WS_CHARS:
            return buf[pos]
        while True:
            self.pos = pos = _WS.match(self.buf, self.pos).end()
            if pos < len(self.buf):
                return self.buf[pos]
            if not self.more():
                raise _EndOfData("end of document")

    def expect(self, char: str, what: str) -> None:
        if self.peek() != char:
            raise _BadSyntax(f"expected {what} at character {self.consumed + self.pos}")
        self.pos += 1

    def value(self) -> Any:
        """Decode the JSON value at ``pos``, reading more as needed, at most MAX_ITEM_CHARS."""
        self.peek()
        while True:
            try:
                value, end = self._decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                incomplete = (exc.pos >= len(self.buf) - _NEAR_END
                              or exc.msg.startswith("Unterminated string"))
                if not incomplete:
                    raise _BadSyntax(f"{exc.msg} at character {self.consumed + exc.pos}") from None
                if len(self.buf) - self.pos > MAX_ITEM_CHARS:
                    raise _TooBig from None
                if not self.more():
                    raise _EndOfData(exc.msg) from None
                continue
            except RecursionError:
                raise _BadSyntax("nesting too deep") from None
            if len(self.buf) - end < _NEAR_END and not self.eof:
                # A number cut by the block ("9" of "9.87") decodes fine but wrongly: look
                # further before trusting a value that ends this close to the edge.
                self.more()
                continue
            self.pos = end
            return value

    def skip_value(self) -> None:
        """Step over one JSON value of any size without holding it (lenient about syntax)."""
        first = self.peek()
        if first not in '"[{':
            while True:
                self.pos = _SCALAR.match(self.buf, self.pos).end()
                if self.pos < len(self.buf):
                    return
                if not self.more():
                    raise _EndOfData("end of document inside a value")
        depth, in_string = 0, False
        while True:
            if in_string:
                match = _STRING_END.search(self.buf, self.pos)
                if match is not None and match.group() == "\\" and match.end() < len(self.buf):
                    self.pos = match.end() + 1  # skip the escaped character
                    continue
                if match is not None and match.group() == '"':
                    self.pos = match.end()
                    in_string = False
                    if depth == 0:
                        return
                    continue
                self.pos = len(self.buf) if match is None else match.start()
            else:
                match = _STRUCTURAL.search(self.buf, self.pos)
                if match is not None:
                    self.pos = match.end()
                    char = match.group()
                    if char == '"':
                        in_string = True
                    elif char in "[{":
                        depth += 1
                    else:
                        depth -= 1
                        if depth <= 0:
                            return
                    continue
                self.pos = len(self.buf)
            if not self.more():
                raise _EndOfData("end of document inside a value")


class _JsonState:
    recognised = False  # seen enough to know this is an inventory


def _json_rows(window: _Window, report: InventoryReport,
               state: _JsonState) -> Iterator[InventoryArchive]:
    window.expect("[", "'[' after \"ArchiveList\"")
    state.recognised = True
    if window.peek() == "]":
        window.pos += 1
        return
    while True:
        try:
            item = window.value()
        except _TooBig:
            window.skip_value()
            _skip(report, f"archive entry larger than {MAX_ITEM_CHARS} characters")
        else:
            if isinstance(item, dict):
                row = _make_row(report, item.get("ArchiveId"), item.get("ArchiveDescription"),
                                item.get("CreationDate"), item.get("Size"),
                                item.get("SHA256TreeHash"))
                if row is not None:
                    yield row
            else:
                _skip(report, f"ArchiveList entry is not an object: {_short(item)}")
        # Fast path: Glacier writes "},{" with no blanks.
        buf, pos = window.buf, window.pos
        char = buf[pos] if pos < len(buf) else window.peek()
        if char == ",":
            window.pos += 1
            continue
        if char in _WS_CHARS:
            char = window.peek()
            if char == ",":
                window.pos += 1
                continue
        if char == "]":
            window.pos += 1
            return
        raise _BadSyntax(f"expected ',' or ']' at character {window.consumed + window.pos}")


def _json_document(window: _Window, report: InventoryReport,
                   state: _JsonState) -> Iterator[InventoryArchive]:
    if window.peek() == "\ufeff":
        window.pos += 1
    if window.peek() != "{":
        raise _BadSyntax("a JSON inventory starts with '{'")
    window.pos += 1
    saw_list = False
    first = True
    while window.peek() != "}":
        if not first:
            window.expect(",", "',' between keys")
        first = False
        if window.peek() != '"':
            raise _BadSyntax(f"expected a key at character {window.consumed + window.pos}")
        try:
            key = window.value()
        except _TooBig:
            raise _BadSyntax("a key longer than any inventory key") from None
        window.expect(":", "':' after a key")
        if key == "ArchiveList" and not saw_list:
            saw_list = True
            yield from _json_rows(window, report, state)
            continue
        try:
            value = window.value()
        except _TooBig:
            window.skip_value()
            _problem(report, f"skipped the oversized value of {_short(key)}")
            continue
        if key == "VaultARN" and isinstance(value, str):
            report.vault_arn = value
            state.recognised = state.recognised or value.startswith("arn:")
        elif key == "InventoryDate":
            report.inventory_date = _parse_date(value)
            if report.inventory_date is None:
                _problem(report, f"bad InventoryDate {_short(value)}")
    window.pos += 1
    if not saw_list:
        raise _BadSyntax("no ArchiveList")
    try:
        extra = window.peek()
    except _EndOfData:
        return
    _problem(report, f"ignored text after the inventory: {_short(extra)}")


def _iter_json(stream: BinaryIO, report: InventoryReport) -> Iterator[InventoryArchive]:
    window = _Window(stream)
    state = _JsonState()
    try:
        yield from _json_document(window, report, state)
    except _EndOfData:
        report.truncated = True
        _problem(report, f"document ends early, after {window.consumed + window.pos} characters")
    except _BadSyntax as exc:
        if not state.recognised and report.rows_ok == 0 and report.rows_skipped == 0:
            raise InventoryFormatError(f"not a JSON inventory: {exc}") from None
        report.truncated = True
        _problem(report, f"document unreadable past this point: {exc}")


# --- CSV -------------------------------------------------------------------------------------

def _lines(stream: BinaryIO, report: InventoryReport) -> Iterator[tuple[str, bool]]:
    """(line, ended_by_newline) pairs; lines over MAX_LINE_BYTES are skipped and counted."""
    pending = b""
    discarding = False  # inside an over-long line
    while True:
        data = stream.read(BLOCK_SIZE)
        if not data:
            break
        pending += data
        start = 0
        while True:
            end = pending.find(b"\n", start)
            if end < 0:
                break
            if end - start > MAX_LINE_BYTES:
                if not discarding:
                    _skip(report, f"line longer than {MAX_LINE_BYTES} bytes")
            elif not discarding:
                yield pending[start:end].decode("utf-8", "replace"), True
            discarding = False
            start = end + 1
        pending = pending[start:]
        if len(pending) > MAX_LINE_BYTES:
            if not discarding:
                _skip(report, f"line longer than {MAX_LINE_BYTES} bytes")
            discarding = True
            pending = b""
    if pending and not discarding:
        yield pending.decode("utf-8", "replace"), False


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return text[1:-1]
    return text


def _csv_description(text: str) -> str:
    """Strip the quotes and undo ``\\"`` (every ``"`` inside was escaped, ``\\`` never was)."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return text[1:-1].replace('\\"', '"')
    return text


def _csv_fields(line: str) -> tuple[str, str, str, str, str] | None:
    archive_id, sep, rest = line.partition(",")
    tail = rest.rsplit(",", 3)
    if not sep or len(tail) != 4:
        return None
    description, date, size, tree_hash = tail
    return (_unquote(archive_id), _csv_description(description), _unquote(date), _unquote(size),
            _unquote(tree_hash))


def _is_header(line: str) -> bool:
    return tuple(_unquote(f) for f in line.split(",")) == CSV_HEADER


def _iter_csv(stream: BinaryIO, report: InventoryReport) -> Iterator[InventoryArchive]:
    header_seen = False
    for raw, complete in _lines(stream, report):
        line = raw.rstrip("\r")
        if not header_seen:
            line = line.lstrip("\ufeff").strip()
            if not line:
                continue
            if _is_header(line):
                header_seen = True
                continue
            if not complete and ",".join(CSV_HEADER).startswith(line.replace('"', "")):
                break  # the document ends inside its header
            raise InventoryFormatError(f"not a CSV inventory: first line {_short(line)}")
        if not line.strip():
            continue
        fields = _csv_fields(line)
        if not complete:
            # No newline at the very end: a complete row is kept, a cut one means truncation.
            row = None if fields is None else _make_row(InventoryReport(), *fields)
            if row is None:
                break
            report.rows_ok += 1
            yield row
            return
        if fields is None:
            _skip(report, f"CSV line without five fields: {_short(line)}")
            continue
        row = _make_row(report, *fields)
        if row is not None:
            yield row
    else:
        if header_seen:
            return
    report.truncated = True
    _problem(report, "document ends early")


# --- entry points ----------------------------------------------------------------------------

def sniff_format(first_bytes: bytes) -> str:
    """``"JSON"`` or ``"CSV"`` from the start of a document; InventoryFormatError otherwise."""
    head = first_bytes.removeprefix(codecs.BOM_UTF8).lstrip()
    if head.startswith(b"{"):
        return "JSON"
    if head.startswith((b"ArchiveId", b'"ArchiveId"')):
        return "CSV"
    raise InventoryFormatError(f"not an inventory: starts with {_short(first_bytes[:40])}")


def iter_inventory(stream: BinaryIO, fmt: str,
                   report: InventoryReport) -> Iterator[InventoryArchive]:
    """Yield the valid archive rows of an inventory document, streaming, in document order.

    ``fmt`` is ``"JSON"`` or ``"CSV"`` (Glacier's names; any case). ``report`` is filled in as
    rows go by. Duplicate archive ids are all yielded: deduplicating is the caller's job.
    """
    kind = fmt.upper()
    if kind == "JSON":
        return _iter_json(stream, report)
    if kind == "CSV":
        return _iter_csv(stream, report)
    raise ValueError(f"unknown inventory format {fmt!r}; expected 'JSON' or 'CSV'")
