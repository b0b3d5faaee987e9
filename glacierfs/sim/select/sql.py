"""The Glacier Select SQL subset, translated to SQLite.

This module owns the language, not its evaluation: a tokenizer and a recursive-descent translator
turn ``SELECT … FROM archive [s] [WHERE …]`` into one SQLite ``SELECT`` over a table of CSV
records (columns ``c1``…``cN``, all TEXT). SQLite evaluates it; the few things SQLite has no
word for (CAST with Select's failure rules, the timestamp functions) are small Python functions
registered on the connection by ``glacierfs.sim.select.engine``.

What Glacier documents and this accepts: ``*``, positional ``_N``, header names (plain: matched
case-insensitively; double-quoted: exactly), a FROM alias (``s._1``, ``s.name``), column aliases
(``AS x``), comparisons, AND/OR/NOT, LIKE [ESCAPE], BETWEEN, IN, IS [NOT] NULL, ``||``,
arithmetic, CASE, COALESCE, NULLIF, CAST(… AS type), CHAR_LENGTH, CHARACTER_LENGTH, LOWER,
UPPER, SUBSTRING, TRIM, DATE_ADD, DATE_DIFF, EXTRACT, TO_STRING, TO_TIMESTAMP, UTCNOW. Refused,
as Glacier refuses them: aggregates (COUNT, SUM, AVG, MIN, MAX), GROUP BY, HAVING, ORDER BY,
LIMIT, JOIN, DISTINCT, UNION, sub-queries.

CSV values are text; where a column meets a number (a comparison with a numeric operand,
arithmetic) it is read as a number (``glacier_num``: NULL when it is none), as Select coerces.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from glacierfs.sim.select.lexer import SqlError, Tok, tokenize

# Select's documented limit on an expression.
MAX_EXPRESSION_CHARS = 128_000

KEYWORDS = {
    "SELECT", "FROM", "WHERE", "AS", "AND", "OR", "NOT", "LIKE", "ESCAPE", "BETWEEN", "IN", "IS",
    "NULL", "TRUE", "FALSE", "CASE", "WHEN", "THEN", "ELSE", "END", "CAST", "MISSING",
}
REFUSED = {
    "COUNT": "aggregate functions (COUNT)", "SUM": "aggregate functions (SUM)",
    "AVG": "aggregate functions (AVG)", "MIN": "aggregate functions (MIN)",
    "MAX": "aggregate functions (MAX)", "GROUP": "GROUP BY", "HAVING": "HAVING",
    "ORDER": "ORDER BY", "LIMIT": "LIMIT", "JOIN": "JOIN", "DISTINCT": "DISTINCT",
    "UNION": "UNION", "INTERSECT": "INTERSECT", "EXCEPT": "EXCEPT", "OFFSET": "OFFSET",
}
AGGREGATES = {"COUNT", "SUM", "AVG", "MIN", "MAX"}
CAST_TYPES = {
    "BOOL": "bool", "BOOLEAN": "bool", "INT": "num", "INTEGER": "num", "FLOAT": "num",
    "DECIMAL": "num", "NUMERIC": "num", "STRING": "str", "TIMESTAMP": "ts",
}
DATE_PARTS = ("YEAR", "MONTH", "DAY", "HOUR", "MINUTE", "SECOND", "TIMEZONE_HOUR",
              "TIMEZONE_MINUTE")
COMPARISONS = {"=": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}

class UnknownColumn(SqlError):
    """A name the archive's header does not have (met when the job runs)."""


# A resolver turns a column reference into a 1-based column number: ("pos", "3") for ``_3``,
# ("name", "Price") / ("qname", "Price") for header names (plain / double-quoted).
Resolver = Callable[[str, str], int]


def any_column(kind: str, name: str) -> int:
    """The resolver InitiateJob validates with: the header is not known yet."""
    return int(name) if kind == "pos" else 1


@dataclass(frozen=True)
class Item:
    sql: str
    kind: str  # num, str, bool, ts, col, any


@dataclass(frozen=True)
class Query:
    star: bool
    items: tuple[Item, ...]
    where: str | None
    columns: int  # the highest column number referenced

    def sql(self, table: str, width: int) -> str:
        if self.star:
            cols = ", ".join(f"c{i}" for i in range(1, width + 1)) or "NULL"
            select = f"_n, {cols}"
        else:
            select = ", ".join(_render(item) for item in self.items)
        where = f" WHERE {self.where}" if self.where else ""
        return f"SELECT {select} FROM {table}{where} ORDER BY _rowid"


def _render(item: Item) -> str:
    if item.kind == "bool":  # Select prints booleans as true/false
        return f"CASE WHEN ({item.sql}) IS NULL THEN NULL WHEN ({item.sql}) THEN 'true' " \
               f"ELSE 'false' END"
    return item.sql


def parse(expression: str, resolver: Resolver = any_column) -> Query:
    """Translate a Select expression; raises SqlError with a one-line reason."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise SqlError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    return _Translator(tokenize(expression), resolver).query()


class _Translator:
    def __init__(self, toks: list[Tok], resolver: Resolver) -> None:
        self.toks = toks
        self.i = 0
        self.resolver = resolver
        self.alias: str | None = None
        self.max_col = 0
        # Column references are only known after FROM (the alias); keep them as tokens until
        # then by translating the select list after the FROM clause.

    # --- token plumbing ---------------------------------------------------------------------
    @property
    def tok(self) -> Tok:
        return self.toks[self.i]

    def peek(self, ahead: int = 1) -> Tok:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def next(self) -> Tok:
        tok = self.tok
        self.i += 1
        return tok

    def at(self, *words: str) -> bool:
        return self.tok.kind in ("id", "op") and self.tok.upper in words

    def accept(self, *words: str) -> bool:
        if self.at(*words):
            self.i += 1
            return True
        return False

    def expect(self, word: str) -> None:
        if not self.accept(word):
            raise self.error(f"expected {word}")

    def error(self, what: str) -> SqlError:
        tok = self.tok
        found = "the end of the expression" if tok.kind == "end" else repr(tok.text)
        return SqlError(f"{what}, found {found} at position {tok.pos + 1}")

    def check_refused(self) -> None:
        for n, tok in enumerate(self.toks):
            if tok.kind != "id" or tok.upper not in REFUSED:
                continue
            following = self.toks[n + 1]
            if tok.upper in AGGREGATES and following.text != "(":
                continue  # a column of that name
            if tok.upper in ("GROUP", "ORDER") and following.upper != "BY":
                continue
            raise SqlError(f"Glacier Select does not support {REFUSED[tok.upper]}")
        for tok in self.toks:
            if tok.kind == "id" and tok.upper == "SELECT" and tok is not self.toks[0]:
                raise SqlError("Glacier Select does not support sub-queries")

    # --- statement --------------------------------------------------------------------------
    def query(self) -> Query:
        self.check_refused()
        self.expect("SELECT")
        list_start = self.i
        depth = 0
        while not (depth == 0 and self.at("FROM")):  # skip to FROM to learn the alias first
            if self.tok.kind == "end":
                raise self.error("expected FROM archive")
            if self.tok.text == "(":
                depth += 1
            elif self.tok.text == ")":
                depth -= 1
            self.i += 1
        list_end = self.i
        self.expect("FROM")
        if not (self.tok.kind == "id" and self.tok.upper in ("ARCHIVE", "OBJECT")):
            raise self.error("expected FROM archive (the archive is the only table)")
        self.next()
        if self.accept("AS"):
            if self.tok.kind != "id":
                raise self.error("expected an alias")
            self.alias = self.next().text
        elif self.tok.kind == "id" and self.tok.upper not in KEYWORDS:
            self.alias = self.next().text
        where = None
        if self.accept("WHERE"):
            cond = self.expr()
            where = cond.sql
        if self.tok.kind != "end":
            if self.tok.text == ",":
                raise SqlError("Glacier Select does not support JOIN (one table: archive)")
            raise self.error("expected the end of the expression")
        after = self.i
        self.toks = self.toks[:list_end] + [Tok("end", "", self.toks[list_end].pos)]
        self.i = list_start
        star, items = self.select_list()
        self.i = after
        return Query(star=star, items=tuple(items), where=where, columns=self.max_col)

    def select_list(self) -> tuple[bool, list[Item]]:
        if self.at("*"):
            self.next()
            self.end_of_list()
            return True, []
        if self.alias and self.tok.text.upper() == self.alias.upper() and \
                self.peek().text == "." and self.peek(2).text == "*":
            self.i += 3
            self.end_of_list()
            return True, []
        items = []
        while True:
            if self.tok.kind == "end":
                raise self.error("expected a column or an expression")
            item = self.expr()
            if self.accept("AS"):
                if self.tok.kind not in ("id", "qid"):
                    raise self.error("expected a column alias")
                self.next()
            elif self.tok.kind in ("id", "qid") and self.tok.upper not in KEYWORDS:
                self.next()
            items.append(item)
            if not self.accept(","):
                break
        self.end_of_list()
        return False, items

    def end_of_list(self) -> None:
        if self.tok.kind != "end":
            raise self.error("expected , or FROM")

    # --- expressions ------------------------------------------------------------------------
    def expr(self) -> Item:
        left = self.and_expr()
        while self.accept("OR"):
            right = self.and_expr()
            left = Item(f"({left.sql} OR {right.sql})", "bool")
        return left

    def and_expr(self) -> Item:
        left = self.not_expr()
        while self.accept("AND"):
            right = self.not_expr()
            left = Item(f"({left.sql} AND {right.sql})", "bool")
        return left

    def not_expr(self) -> Item:
        if self.accept("NOT"):
            inner = self.not_expr()
            return Item(f"(NOT {inner.sql})", "bool")
        return self.predicate()

    def predicate(self) -> Item:
        left = self.concat()
        if self.tok.kind == "op" and self.tok.text in COMPARISONS:
            op = COMPARISONS[self.next().text]
            right = self.concat()
            a, b = _coerce_pair(left, right)
            return Item(f"({a} {op} {b})", "bool")
        if self.accept("IS"):
            negate = self.accept("NOT")
            if not self.accept("NULL", "MISSING"):
                raise self.error("expected NULL after IS")
            return Item(f"({left.sql} IS {'NOT ' if negate else ''}NULL)", "bool")
        negate = self.accept("NOT")
        if self.accept("BETWEEN"):
            low = self.concat()
            self.expect("AND")
            high = self.concat()
            kind = _numeric_kind(low, high)
            value = _as(left, kind)
            sql = f"({value} {'NOT ' if negate else ''}BETWEEN {_as(low, kind)} AND " \
                  f"{_as(high, kind)})"
            return Item(sql, "bool")
        if self.accept("IN"):
            self.expect("(")
            values = [self.concat()]
            while self.accept(","):
                values.append(self.concat())
            self.expect(")")
            kind = _numeric_kind(*values)
            listed = ", ".join(_as(v, kind) for v in values)
            return Item(f"({_as(left, kind)} {'NOT ' if negate else ''}IN ({listed}))", "bool")
        if self.accept("LIKE"):
            pattern = self.concat()
            sql = f"({left.sql} {'NOT ' if negate else ''}LIKE {pattern.sql}"
            if self.accept("ESCAPE"):
                sql += f" ESCAPE {self.concat().sql}"
            return Item(sql + ")", "bool")
        if negate:
            raise self.error("expected BETWEEN, IN or LIKE after NOT")
        return left

    def concat(self) -> Item:
        left = self.additive()
        while self.accept("||"):
            right = self.additive()
            left = Item(f"({left.sql} || {right.sql})", "str")
        return left

    def additive(self) -> Item:
        left = self.term()
        while self.at("+", "-"):
            op = self.next().text
            right = self.term()
            left = Item(f"({_num(left)} {op} {_num(right)})", "num")
        return left

    def term(self) -> Item:
        left = self.unary()
        while self.at("*", "/", "%"):
            op = self.next().text
            right = self.unary()
            left = Item(f"({_num(left)} {op} {_num(right)})", "num")
        return left

    def unary(self) -> Item:
        if self.at("-", "+"):
            op = self.next().text
            inner = self.unary()
            return Item(f"({op}{_num(inner)})", "num")
        return self.primary()

    def primary(self) -> Item:
        tok = self.tok
        if tok.kind == "num":
            self.next()
            return Item(tok.text, "num")
        if tok.kind == "str":
            self.next()
            return Item(tok.text, "str")
        if tok.kind == "op" and tok.text == "(":
            self.next()
            inner = self.expr()
            self.expect(")")
            return Item(f"({inner.sql})", inner.kind)
        if tok.kind == "qid":
            return self.column()
        if tok.kind != "id":
            raise self.error("expected a value")
        word = tok.upper
        if word in ("TRUE", "FALSE"):
            self.next()
            return Item("1" if word == "TRUE" else "0", "bool")
        if word in ("NULL", "MISSING"):
            self.next()
            return Item("NULL", "any")
        if word == "CASE":
            return self.case()
        if word == "CAST":
            return self.cast()
        if self.peek().text == "(" and self.peek().kind == "op":
            return self.function()
        if word in KEYWORDS:
            raise self.error("expected a value")
        return self.column()

    def column(self) -> Item:
        tok = self.next()
        if self.alias and tok.kind == "id" and tok.text.upper() == self.alias.upper() and \
                self.tok.text == ".":
            self.next()
            tok = self.next()
            if tok.kind not in ("id", "qid"):
                raise SqlError(f"expected a column name after {self.alias}. at position "
                               f"{tok.pos + 1}")
            if tok.kind == "id" and tok.upper in KEYWORDS:
                raise SqlError(f"{tok.text} is a reserved keyword: write it in double quotes "
                               f"to name a column (position {tok.pos + 1})")
        if tok.kind == "qid":
            number = self.resolver("qname", tok.text[1:-1].replace('""', '"'))
        elif re.fullmatch(r"_[1-9][0-9]*", tok.text):
            number = self.resolver("pos", tok.text[1:])
        else:
            number = self.resolver("name", tok.text)
        if self.tok.text == ".":
            raise self.error("unknown table alias or nested path")
        self.max_col = max(self.max_col, number)
        return Item(f"c{number}", "col")

    def case(self) -> Item:
        self.expect("CASE")
        parts = ["CASE"]
        kinds = []
        if not self.at("WHEN"):
            subject = self.expr()
            parts.append(subject.sql)
        while self.accept("WHEN"):
            cond = self.expr()
            self.expect("THEN")
            value = self.expr()
            kinds.append(value.kind)
            parts += ["WHEN", cond.sql, "THEN", _render(value)]
        if len(parts) < 3:
            raise self.error("expected WHEN")
        if self.accept("ELSE"):
            value = self.expr()
            kinds.append(value.kind)
            parts += ["ELSE", _render(value)]
        self.expect("END")
        parts.append("END")
        kind = kinds[0] if len(set(kinds)) == 1 and kinds[0] != "bool" else "any"
        return Item("(" + " ".join(parts) + ")", kind)

    def cast(self) -> Item:
        self.expect("CAST")
        self.expect("(")
        value = self.expr()
        self.expect("AS")
        if self.tok.kind != "id" or self.tok.upper not in CAST_TYPES:
            raise self.error(f"expected a type ({', '.join(CAST_TYPES)})")
        type_name = self.next().upper
        self.expect(")")
        return Item(f"glacier_cast({_render(value)}, '{type_name}')", CAST_TYPES[type_name])

    def args(self) -> list[Item]:
        self.expect("(")
        out: list[Item] = []
        if self.accept(")"):
            return out
        out.append(self.expr())
        while self.accept(","):
            out.append(self.expr())
        self.expect(")")
        return out

    def date_part(self) -> str:
        if self.tok.kind != "id" or self.tok.upper not in DATE_PARTS:
            raise self.error(f"expected a date part ({', '.join(DATE_PARTS)})")
        return self.next().upper

    def function(self) -> Item:
        name = self.next().upper
        if name in REFUSED:  # pragma: no cover - check_refused caught it
            raise SqlError(f"Glacier Select does not support {REFUSED[name]}")
        if name in ("CHAR_LENGTH", "CHARACTER_LENGTH"):
            (arg,) = self.fixed(1, name)
            return Item(f"length({arg.sql})", "num")
        if name in ("LOWER", "UPPER"):
            (arg,) = self.fixed(1, name)
            return Item(f"glacier_{name.lower()}({arg.sql})", "str")
        if name == "COALESCE":
            args = self.args()
            if not args:
                raise SqlError("COALESCE needs at least one argument")
            kind = args[0].kind if len({a.kind for a in args}) == 1 else "any"
            return Item(f"coalesce({', '.join(_render(a) for a in args)}, NULL)", kind)
        if name == "NULLIF":
            a, b = self.fixed(2, name)
            x, y = _coerce_pair(a, b)
            return Item(f"nullif({x}, {y})", a.kind)
        if name == "SUBSTRING":
            return self.substring()
        if name == "TRIM":
            return self.trim()
        if name == "EXTRACT":
            self.expect("(")
            part = self.date_part()
            self.expect("FROM")
            ts = self.expr()
            self.expect(")")
            return Item(f"glacier_extract('{part}', {_ts(ts)})", "num")
        if name == "DATE_ADD":
            self.expect("(")
            part = self.date_part()
            self.expect(",")
            qty = self.expr()
            self.expect(",")
            ts = self.expr()
            self.expect(")")
            return Item(f"glacier_date_add('{part}', {_num(qty)}, {_ts(ts)})", "ts")
        if name == "DATE_DIFF":
            self.expect("(")
            part = self.date_part()
            self.expect(",")
            a = self.expr()
            self.expect(",")
            b = self.expr()
            self.expect(")")
            return Item(f"glacier_date_diff('{part}', {_ts(a)}, {_ts(b)})", "num")
        if name == "TO_STRING":
            ts, fmt = self.fixed(2, name)
            return Item(f"glacier_to_string({_ts(ts)}, {fmt.sql})", "str")
        if name == "TO_TIMESTAMP":
            (arg,) = self.fixed(1, name)
            return Item(f"glacier_to_timestamp({arg.sql})", "ts")
        if name == "UTCNOW":
            self.fixed(0, name)
            return Item("glacier_utcnow()", "ts")
        raise SqlError(f"unknown function {name}")

    def fixed(self, count: int, name: str) -> list[Item]:
        args = self.args()
        if len(args) != count:
            raise SqlError(f"{name} takes {count} argument{'s' if count != 1 else ''}, "
                           f"got {len(args)}")
        return args

    def substring(self) -> Item:
        self.expect("(")
        value = self.expr()
        if self.accept("FROM"):
            start = self.expr()
            length = self.expr() if self.accept("FOR") else None
        else:
            self.expect(",")
            start = self.expr()
            length = self.expr() if self.accept(",") else None
        self.expect(")")
        if length is None:
            return Item(f"substr({value.sql}, max({_num(start)}, 1))", "str")
        # Select counts a start before 1 against the length, as SQL does.
        return Item(f"substr({value.sql}, max({_num(start)}, 1), "
                    f"max({_num(start)} + {_num(length)} - max({_num(start)}, 1), 0))", "str")

    def trim(self) -> Item:
        self.expect("(")
        fn = "trim"
        if self.accept("LEADING"):
            fn = "ltrim"
        elif self.accept("TRAILING"):
            fn = "rtrim"
        else:
            self.accept("BOTH")
        chars = None
        if not self.accept("FROM"):
            first = self.expr()
            if self.accept("FROM"):
                chars, value = first, self.expr()
            else:
                value = first
        else:
            value = self.expr()
        self.expect(")")
        chars_sql = chars.sql if chars is not None else "' '"
        return Item(f"{fn}({value.sql}, {chars_sql})", "str")


def _num(item: Item) -> str:
    return f"glacier_num({item.sql})" if item.kind in ("col", "str", "any") else item.sql


def _ts(item: Item) -> str:
    return item.sql if item.kind == "ts" else f"glacier_to_timestamp({item.sql})"


def _numeric_kind(*items: Item) -> str:
    kinds = {i.kind for i in items}
    if "num" in kinds:
        return "num"
    if "ts" in kinds:
        return "ts"
    return "str"


def _as(item: Item, kind: str) -> str:
    if kind == "num" and item.kind == "col":
        return _num(item)
    if kind == "ts" and item.kind in ("col", "str"):
        return _ts(item)
    return item.sql


def _coerce_pair(a: Item, b: Item) -> tuple[str, str]:
    """A column compared with a number is read as a number; with a timestamp, as one."""
    kind = _numeric_kind(a, b)
    if kind == "str" and "bool" in (a.kind, b.kind):
        return a.sql, b.sql
    return _as(a, kind), _as(b, kind)
