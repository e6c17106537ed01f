"""ASAPO's query language: a SQL WHERE subset, compiled to parameterised SQLite SQL.

Grammar (keywords case-insensitive)::

    query     := condition [ORDER BY field [ASC | DESC]]
    condition := conjunct {OR conjunct}
    conjunct  := negation {AND negation}
    negation  := NOT negation | '(' condition ')' | predicate
    predicate := field ( cmp value
                       | [NOT] IN '(' value {',' value} ')'
                       | [NOT] BETWEEN value AND value
                       | [NOT] REGEXP string )
    cmp       := '=' | '!=' | '<>' | '<' | '>' | '<=' | '>='
    value     := number | string | TRUE | FALSE
    field     := _id | name | size | timestamp | dataset_substream | ingest_mode
               | meta.key{.key}

Strings are quoted with ' or " and a doubled quote inside stands for one; backslashes are
kept as they are (so regular expressions need no extra escaping). User text never becomes
SQL: column names come from a fixed table, values and JSON paths are bound parameters.
A record lacking a ``meta`` key matches no condition on that key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from asapo_hpc.errors import AsapoWrongInputError

#: Record fields a query may name, and the column each one reads.
FIELD_COLUMNS: dict[str, str] = {
    "_id": "data_id",
    "name": "name",
    "size": "size",
    "timestamp": "timestamp",
    "dataset_substream": "substream",
    "ingest_mode": "ingest_mode",
}

_KEYWORDS = frozenset(
    {"AND", "OR", "NOT", "IN", "BETWEEN", "REGEXP", "ORDER", "BY", "ASC", "DESC", "TRUE", "FALSE"}
)
_COMPARISONS = {"=": "=", "!=": "!=", "<>": "!=", "<": "<", ">": ">", "<=": "<=", ">=": ">="}
# Bounds that keep SQLite's own limits (expression depth 1000, 32766 parameters) out of reach.
MAX_NESTING = 64
MAX_PARAMETERS = 10_000

_TOKEN_RE = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![A-Za-z_.]))
  | (?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*")
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<punct>[(),])
    """,
    re.VERBOSE,
)


@dataclass(slots=True, frozen=True)
class Token:
    """One lexical token; ``kind`` is number, string, ident, keyword, op, punct or end."""

    kind: str
    text: str
    pos: int
    value: object = None


@dataclass(slots=True, frozen=True)
class CompiledQuery:
    """SQL fragments over the ``messages`` table with their parameters, in order."""

    where_sql: str
    where_params: tuple
    order_sql: str
    order_params: tuple


def _error(query: str, pos: int, what: str) -> AsapoWrongInputError:
    """An error that quotes the query and points at ``pos``."""
    return AsapoWrongInputError(f"bad query at position {pos}: {what}\n  {query}\n  {' ' * pos}^")


def tokenize(query: str) -> list[Token]:
    """Split ``query`` into tokens, ending with an ``end`` token."""
    tokens: list[Token] = []
    pos = 0
    while pos < len(query):
        match = _TOKEN_RE.match(query, pos)
        if match is None:
            raise _bad_token_error(query, pos)
        kind = match.lastgroup
        text = match.group()
        if kind == "number":
            value = float(text) if any(c in text for c in ".eE") else int(text)
            tokens.append(Token("number", text, pos, value))
        elif kind == "string":
            quote = text[0]
            tokens.append(Token("string", text, pos, text[1:-1].replace(quote * 2, quote)))
        elif kind == "ident" and text.upper() in _KEYWORDS:
            tokens.append(Token("keyword", text.upper(), pos))
        elif kind != "space":
            tokens.append(Token(kind, text, pos))
        pos = match.end()
    tokens.append(Token("end", "", len(query)))
    return tokens


def _bad_token_error(query: str, pos: int) -> AsapoWrongInputError:
    """The error for text at ``pos`` that starts no token."""
    char = query[pos]
    if char in "'\"":
        return _error(query, pos, f"unterminated string starting with {char}")
    return _error(query, pos, f"unexpected character {char!r}")


def _describe(token: Token) -> str:
    return "end of query" if token.kind == "end" else repr(token.text)


class _Parser:
    """Recursive descent over the token list; emits SQL text and parameters left to right."""

    def __init__(self, query: str):
        self.query = query
        self.tokens = tokenize(query)
        self.index = 0
        self.params: list[object] = []
        self.depth = 0

    @property
    def token(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def accept_keyword(self, word: str) -> bool:
        if self.token.kind == "keyword" and self.token.text == word:
            self.index += 1
            return True
        return False

    def expect_keyword(self, word: str, context: str) -> None:
        if not self.accept_keyword(word):
            self.fail(f"expected {word} {context}, found {_describe(self.token)}")

    def expect_punct(self, char: str, context: str) -> None:
        if self.token.kind == "punct" and self.token.text == char:
            self.index += 1
            return
        self.fail(f"expected '{char}' {context}, found {_describe(self.token)}")

    def fail(self, what: str, token: Token | None = None) -> None:
        raise _error(self.query, (token or self.token).pos, what)

    def parse(self) -> CompiledQuery:
        if self.token.kind == "end":
            self.fail("empty query; write a condition such as _id > 0")
        where_sql = self.condition()
        where_params = tuple(self.params)
        self.params = []
        order_sql = self.order_by()
        if self.token.kind != "end":
            self.fail(f"unexpected {_describe(self.token)} after a complete condition")
        return CompiledQuery(where_sql, where_params, order_sql, tuple(self.params))

    def condition(self) -> str:
        parts = [self.conjunct()]
        while self.accept_keyword("OR"):
            parts.append(self.conjunct())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def conjunct(self) -> str:
        parts = [self.negation()]
        while self.accept_keyword("AND"):
            parts.append(self.negation())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def negation(self) -> str:
        self.depth += 1
        if self.depth > MAX_NESTING:
            self.fail(f"nesting deeper than {MAX_NESTING} levels")
        if self.accept_keyword("NOT"):
            sql = "(NOT " + self.negation() + ")"
        elif self.token.kind == "punct" and self.token.text == "(":
            self.advance()
            sql = self.condition()
            self.expect_punct(")", "to close the parenthesis")
        else:
            sql = self.predicate()
        self.depth -= 1
        return sql

    def predicate(self) -> str:
        column = self.field()
        negated = self.accept_keyword("NOT")
        token = self.token
        if token.kind == "op" and not negated:
            self.advance()
            return f"{column} {_COMPARISONS[token.text]} {self.value()}"
        if self.accept_keyword("IN"):
            return self.in_list(column, negated)
        if self.accept_keyword("BETWEEN"):
            low = self.value()
            self.expect_keyword("AND", "between the bounds of BETWEEN")
            high = self.value()
            return f"({column} {'NOT ' if negated else ''}BETWEEN {low} AND {high})"
        if self.accept_keyword("REGEXP"):
            return f"({'NOT ' if negated else ''}{column} REGEXP {self.pattern()})"
        expected = "IN, BETWEEN or REGEXP after NOT" if negated else "a comparison operator"
        self.fail(f"expected {expected}, found {_describe(token)}")
        raise AssertionError  # fail() always raises

    def in_list(self, column: str, negated: bool) -> str:
        self.expect_punct("(", "after IN")
        values = [self.value()]
        while self.token.kind == "punct" and self.token.text == ",":
            self.advance()
            values.append(self.value())
        self.expect_punct(")", "to close the IN list")
        return f"({column} {'NOT ' if negated else ''}IN ({', '.join(values)}))"

    def field(self) -> str:
        token = self.token
        if token.kind != "ident":
            self.fail(f"expected a field name, found {_describe(token)}")
        self.advance()
        if token.text in FIELD_COLUMNS:
            return FIELD_COLUMNS[token.text]
        if token.text.startswith("meta.") and len(token.text) > len("meta."):
            keys = token.text.split(".")[1:]
            return "json_extract(meta, " + self.bind('$."' + '"."'.join(keys) + '"') + ")"
        known = ", ".join(FIELD_COLUMNS)
        self.fail(f"unknown field {token.text!r}; use one of {known} or meta.<key>", token)
        raise AssertionError

    def value(self) -> str:
        token = self.advance()
        if token.kind in ("number", "string"):
            return self.bind(token.value)
        if token.kind == "keyword" and token.text in ("TRUE", "FALSE"):
            return self.bind(1 if token.text == "TRUE" else 0)
        self.fail(f"expected a number, a quoted string, TRUE or FALSE, found {_describe(token)}",
                  token)
        raise AssertionError

    def pattern(self) -> str:
        token = self.advance()
        if token.kind != "string":
            self.fail(f"expected a quoted regular expression, found {_describe(token)}", token)
        try:
            compiled_regexp(token.value)
        except re.error as exc:
            self.fail(f"invalid regular expression: {exc}", token)
        return self.bind(token.value)

    def bind(self, value: object) -> str:
        if len(self.params) >= MAX_PARAMETERS:
            self.fail(f"more than {MAX_PARAMETERS} values")
        self.params.append(value)
        return "?"

    def order_by(self) -> str:
        if not self.accept_keyword("ORDER"):
            return ""
        self.expect_keyword("BY", "after ORDER")
        column = self.field()
        direction = "DESC" if self.accept_keyword("DESC") else "ASC"
        if direction == "ASC":
            self.accept_keyword("ASC")
        return f"{column} {direction}"


def compile_query(query: str) -> CompiledQuery:
    """Compile an ASAPO query into SQL fragments; raises AsapoWrongInputError with a pointer."""
    if not isinstance(query, str):
        raise AsapoWrongInputError(f"query must be a string, not {type(query).__name__}")
    return _Parser(query).parse()


@lru_cache(maxsize=256)
def compiled_regexp(pattern: str) -> re.Pattern:
    """Compile a REGEXP pattern once."""
    return re.compile(pattern)


def sqlite_regexp(pattern: str, value: object) -> bool:
    """SQLite's ``value REGEXP pattern``: true when the pattern matches anywhere (as MySQL)."""
    if value is None:
        return False
    return compiled_regexp(pattern).search(str(value)) is not None
