"""Tokens of the Glacier Select SQL subset: numbers, 'strings', "quoted names", names and
operators, with their positions for error messages. The translator is ``sql.py``."""

from __future__ import annotations

import re
from dataclasses import dataclass

TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<str>'(?:[^']|'')*')
  | (?P<qid>"(?:[^"]|"")*")
  | (?P<id>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|<>|!=|\|\||[=<>+\-*/%(),.])
""", re.VERBOSE)


class SqlError(ValueError):
    """The expression is not in the subset: a one-line reason for InitiateJob's 400."""


@dataclass(frozen=True)
class Tok:
    kind: str  # num, str, qid, id, op, end
    text: str
    pos: int

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "id" else self.text


def tokenize(text: str) -> list[Tok]:
    out, pos = [], 0
    while pos < len(text):
        match = TOKEN.match(text, pos)
        if not match:
            raise SqlError(f"unexpected character {text[pos]!r} at position {pos + 1}")
        kind = match.lastgroup or ""
        if kind != "ws":
            out.append(Tok(kind, match.group(), pos))
        pos = match.end()
    out.append(Tok("end", "", len(text)))
    return out
