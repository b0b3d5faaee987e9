"""CSV in and out as Glacier Select's InputSerialization / OutputSerialization describe them.

Reading: Python's csv module has no record delimiter of its own choosing (it splits lines), and
Select's is any single character, so records are split by a small state machine that knows the
quote and quote-escape characters; fields are then plain strings. Writing uses the csv module
(QuoteFields ALWAYS → QUOTE_ALL, ASNEEDED → QUOTE_MINIMAL).

Both sides are pure: text in, rows out; rows in, text out.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# Select's documented limit on one input or output record.
MAX_RECORD_CHARS = 1024 * 1024
HEADER_MODES = ("USE", "IGNORE", "NONE")
QUOTE_MODES = ("ALWAYS", "ASNEEDED")


class CsvError(ValueError):
    """The archive cannot be read as CSV (met while the job runs)."""


@dataclass(frozen=True)
class CsvInput:
    file_header_info: str = "NONE"
    field_delimiter: str = ","
    record_delimiter: str = "\n"
    quote_character: str = '"'
    quote_escape_character: str = '"'
    comments: str | None = None


@dataclass(frozen=True)
class CsvOutput:
    quote_fields: str = "ASNEEDED"
    field_delimiter: str = ","
    record_delimiter: str = "\n"
    quote_character: str = '"'
    quote_escape_character: str = '"'


def records(text: str, spec: CsvInput) -> Iterator[list[str]]:
    """Split ``text`` into records of fields. A quote opens a quoted field only at the start of
    a field; inside one, the escape character before a quote (or a doubled quote when both are
    the same) is a literal quote. With the default ``\\n`` delimiter a ``\\r`` before it is
    dropped, so CRLF files read as expected. Comment lines are skipped."""
    fd, rd, q, esc = (spec.field_delimiter, spec.record_delimiter, spec.quote_character,
                      spec.quote_escape_character)
    crlf = rd == "\n"
    n = len(text)
    i = 0
    while i < n:
        if spec.comments and text.startswith(spec.comments, i):
            end = text.find(rd, i)
            i = n if end < 0 else end + len(rd)
            continue
        fields: list[str] = []
        field: list[str] = []
        quoted = in_quotes = False
        start = i
        while True:
            if i - start > MAX_RECORD_CHARS:
                raise CsvError(f"a record is longer than {MAX_RECORD_CHARS} characters")
            if i >= n:
                if in_quotes:
                    raise CsvError("the archive ends inside a quoted field")
                fields.append("".join(field))
                break
            c = text[i]
            if in_quotes:
                if c == esc and esc != q and i + 1 < n and text[i + 1] == q:
                    field.append(q)
                    i += 2
                elif c == q:
                    if esc == q and i + 1 < n and text[i + 1] == q:
                        field.append(q)
                        i += 2
                    else:
                        in_quotes = False
                        i += 1
                else:
                    field.append(c)
                    i += 1
                continue
            if c == q and not field and not quoted:
                in_quotes = quoted = True
                i += 1
            elif c == fd:
                fields.append("".join(field))
                field, quoted = [], False
                i += 1
            elif text.startswith(rd, i):
                if crlf and field and field[-1] == "\r" and not quoted:
                    field.pop()
                fields.append("".join(field))
                i += len(rd)
                break
            else:
                field.append(c)
                i += 1
        if fields == [""] and not quoted:
            continue  # an empty line is no record
        yield fields


def write(rows: Iterable[list[str]], spec: CsvOutput) -> str:
    out = io.StringIO()
    escape = None if spec.quote_escape_character == spec.quote_character \
        else spec.quote_escape_character
    writer = csv.writer(out, delimiter=spec.field_delimiter, quotechar=spec.quote_character,
                        escapechar=escape, doublequote=escape is None,
                        lineterminator=spec.record_delimiter,
                        quoting=csv.QUOTE_ALL if spec.quote_fields == "ALWAYS"
                        else csv.QUOTE_MINIMAL)
    for row in rows:
        writer.writerow(row)
    return out.getvalue()
