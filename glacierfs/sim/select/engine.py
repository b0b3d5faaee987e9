"""Running one Select query over one archive: CSV records into an in-memory SQLite table, the
translated expression (``sql.py``) over it, the result rows out as CSV parts.

SQLite does the evaluation; this module only registers the functions SQLite lacks (number
coercion, CAST with Select's failure rule, Unicode case mapping, the timestamp functions) and
turns what fails while running — bytes that are not CSV text, a CAST that fails, a name the
header does not have — into a ``RunError`` that the job writes under ``errors/``.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta

from glacierfs.sim.select import csvio, sql

# Rows per executemany batch, and the size of one results/ part: real Glacier splits results
# into several objects; parts this small make that visible on test-sized data.
INSERT_BATCH = 10_000
PART_CHARS = 64 * 1024


class RunError(Exception):
    """An error met while the job runs: the job fails, the message goes to errors/."""


class _CastFailed(Exception):
    pass


def run(data: bytes, expression: str, inp: csvio.CsvInput, out: csvio.CsvOutput) -> list[str]:
    """The query's result as CSV text, in parts of about PART_CHARS (whole records)."""
    if b"\x00" in data:
        raise RunError("The archive is not CSV text: it holds NUL bytes (binary data)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RunError(f"The archive is not CSV text: not UTF-8 at byte {exc.start}") from None
    try:
        rows = list(csvio.records(text, inp))
    except csvio.CsvError as exc:
        raise RunError(f"The archive could not be read as CSV: {exc}") from None
    header: list[str] | None = None
    if inp.file_header_info in ("USE", "IGNORE") and rows:
        first = rows.pop(0)
        header = first if inp.file_header_info == "USE" else None
    try:
        query = sql.parse(expression, _resolver(header))
    except sql.SqlError as exc:
        raise RunError(str(exc)) from None
    width = max([len(r) for r in rows] + [query.columns, 1])
    db = sqlite3.connect(":memory:")
    failures: list[str] = []
    try:
        _register(db, failures)
        cols = ", ".join(f"c{i} TEXT" for i in range(1, width + 1))
        db.execute(f"CREATE TABLE archive (_rowid INTEGER PRIMARY KEY, _n INTEGER, {cols})")
        marks = ", ".join("?" for _ in range(width + 1))
        names = ", ".join(f"c{i}" for i in range(1, width + 1))
        for start in range(0, len(rows), INSERT_BATCH):
            db.executemany(f"INSERT INTO archive (_n, {names}) VALUES ({marks})",
                           ((len(r), *r, *([None] * (width - len(r))))
                            for r in rows[start:start + INSERT_BATCH]))
        try:
            cursor = db.execute(query.sql("archive", width))
            result = [_row(query, r) for r in cursor]
        except sqlite3.Error as exc:
            if failures:
                raise RunError(failures[0]) from None
            raise RunError(f"The query failed: {exc}") from None
    finally:
        db.close()
    return _parts(result, out)


def _resolver(header: list[str] | None) -> sql.Resolver:
    def resolve(kind: str, name: str) -> int:
        if kind == "pos":
            return int(name)
        if header is None:
            raise sql.UnknownColumn(f"Column name {name!r} is not allowed without a header "
                                    "(FileHeaderInfo USE); use positions (_1, _2, …)")
        found = [i for i, h in enumerate(header, 1)
                 if ((h == name) if kind == "qname" else (h.lower() == name.lower()))]
        if len(found) > 1:
            raise sql.UnknownColumn(f"Column name {name!r} is ambiguous: the header has "
                                    f"{len(found)} columns of that name (quote it for an "
                                    "exact match)")
        if not found:
            raise sql.UnknownColumn(f"Column {name!r} is not in the archive's header")
        return found[0]
    return resolve


def _row(query: sql.Query, row: tuple) -> list[str]:
    if query.star:
        return [_text(v) for v in row[1:1 + row[0]]]
    return [_text(v) for v in row]


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
    return str(value)


def _parts(rows: list[list[str]], spec: csvio.CsvOutput) -> list[str]:
    parts, current, size = [], [], 0
    for row in rows:
        record = csvio.write([row], spec)
        if len(record) > csvio.MAX_RECORD_CHARS:
            raise RunError(f"An output record is longer than {csvio.MAX_RECORD_CHARS} "
                           "characters")
        if current and size + len(record) > PART_CHARS:
            parts.append("".join(current))
            current, size = [], 0
        current.append(record)
        size += len(record)
    if current:
        parts.append("".join(current))
    return parts


# --- functions SQLite lacks -----------------------------------------------------------------
def _register(db: sqlite3.Connection, failures: list[str]) -> None:
    def guarded(fn):
        def call(*args):
            try:
                return fn(*args)
            except _CastFailed as exc:
                failures.append(str(exc))
                raise
        return call

    db.execute("PRAGMA case_sensitive_like = ON")  # Select's LIKE is case-sensitive
    db.create_function("glacier_num", 1, number, deterministic=True)
    db.create_function("glacier_cast", 2, guarded(cast), deterministic=True)
    db.create_function("glacier_lower", 1, lambda v: None if v is None else str(v).lower(),
                       deterministic=True)
    db.create_function("glacier_upper", 1, lambda v: None if v is None else str(v).upper(),
                       deterministic=True)
    db.create_function("glacier_to_timestamp", 1, guarded(to_timestamp), deterministic=True)
    db.create_function("glacier_to_string", 2, guarded(to_string), deterministic=True)
    db.create_function("glacier_date_add", 3, guarded(date_add), deterministic=True)
    db.create_function("glacier_date_diff", 3, guarded(date_diff), deterministic=True)
    db.create_function("glacier_extract", 2, guarded(extract), deterministic=True)
    db.create_function("glacier_utcnow", 0, lambda: _fmt(datetime.now(UTC)))


def number(value: object) -> int | float | None:
    """A CSV value where a number is expected: the number, or NULL when it is none."""
    if value is None or isinstance(value, (int, float)):
        return value  # type: ignore[return-value]
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def cast(value: object, type_name: str) -> object:
    if value is None:
        return None
    kind = sql.CAST_TYPES[type_name]
    text = value if isinstance(value, str) else _text(value)
    if kind == "str":
        return text
    if kind == "ts":
        return to_timestamp(text)
    if kind == "bool":
        low = text.strip().lower()
        if low in ("true", "false"):
            return int(low == "true")
        n = number(text)
        if n is None:
            raise _CastFailed(f"CAST failed: {text!r} is not a {type_name}")
        return int(bool(n))
    n = number(value)
    if n is None:
        raise _CastFailed(f"CAST failed: {text!r} is not a {type_name}")
    if type_name in ("INT", "INTEGER"):
        return int(n)
    return float(n)


ISO_SHORT = re.compile(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?T?$")


def _parse_ts(text: str) -> datetime:
    value = text.strip()
    short = ISO_SHORT.match(value)
    if short:
        y, m, d = short.groups()
        return datetime(int(y), int(m or 1), int(d or 1), tzinfo=UTC)
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    dt = datetime.fromisoformat(value)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _fmt(dt: datetime) -> str:
    dt = dt.astimezone(UTC)
    frac = f".{dt.microsecond // 1000:03d}" if dt.microsecond else ""
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"


def to_timestamp(value: object) -> str | None:
    if value is None:
        return None
    try:
        return _fmt(_parse_ts(str(value)))
    except ValueError:
        raise _CastFailed(f"Cannot convert {value!r} to a timestamp") from None


def _ts(value: object) -> datetime | None:
    return None if value is None else _parse_ts(str(value))


def date_add(part: str, quantity: object, value: object) -> str | None:
    dt = _ts(value)
    if dt is None or quantity is None:
        return None
    q = int(quantity)  # type: ignore[call-overload]
    if part in ("YEAR", "MONTH"):
        months = dt.year * 12 + dt.month - 1 + (q * 12 if part == "YEAR" else q)
        year, month = divmod(months, 12)
        day = min(dt.day, _days_in(year, month + 1))
        return _fmt(dt.replace(year=year, month=month + 1, day=day))
    unit = {"DAY": "days", "HOUR": "hours", "MINUTE": "minutes", "SECOND": "seconds"}.get(part)
    if unit is None:
        raise _CastFailed(f"DATE_ADD cannot add {part}")
    return _fmt(dt + timedelta(**{unit: q}))


def _days_in(year: int, month: int) -> int:
    nxt = datetime(year + month // 12, month % 12 + 1, 1)
    return (nxt - timedelta(days=1)).day


def date_diff(part: str, a: object, b: object) -> int | None:
    x, y = _ts(a), _ts(b)
    if x is None or y is None:
        return None
    if part == "YEAR":
        return y.year - x.year
    if part == "MONTH":
        return (y.year - x.year) * 12 + y.month - x.month
    seconds = {"DAY": 86400, "HOUR": 3600, "MINUTE": 60, "SECOND": 1}.get(part)
    if seconds is None:
        raise _CastFailed(f"DATE_DIFF cannot count {part}")
    return int((y - x).total_seconds() // seconds)


def extract(part: str, value: object) -> int | None:
    dt = _ts(value)
    if dt is None:
        return None
    if part in ("TIMEZONE_HOUR", "TIMEZONE_MINUTE"):
        return 0  # timestamps are kept in UTC
    return getattr(dt, part.lower())


PATTERN = re.compile(r"y+|M+|d+|H+|h+|m+|s+|S+|a|'[^']*'|.")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")


def to_string(value: object, pattern: object) -> str | None:
    """TO_STRING with the reference's pattern letters (y M d H h m s S a)."""
    dt = _ts(value)
    if dt is None or pattern is None:
        return None
    out = []
    for tok in PATTERN.findall(str(pattern)):
        c, n = tok[0], len(tok)
        if c == "'":
            out.append(tok[1:-1])
        elif c == "y":
            out.append(f"{dt.year:04d}" if n != 2 else f"{dt.year % 100:02d}")
        elif c == "M":
            out.append(MONTHS[dt.month - 1] if n >= 4 else MONTHS[dt.month - 1][:3] if n == 3
                       else f"{dt.month:0{n}d}")
        elif c == "d":
            out.append(f"{dt.day:0{n}d}")
        elif c == "H":
            out.append(f"{dt.hour:0{n}d}")
        elif c == "h":
            out.append(f"{(dt.hour % 12) or 12:0{n}d}")
        elif c == "m":
            out.append(f"{dt.minute:0{n}d}")
        elif c == "s":
            out.append(f"{dt.second:0{n}d}")
        elif c == "S":
            out.append(f"{dt.microsecond:06d}"[:n].ljust(n, "0"))
        elif c == "a":
            out.append("AM" if dt.hour < 12 else "PM")
        else:
            out.append(tok)
    return "".join(out)
