"""Evaluate the subset of Salesforce formula syntax our report-only formulas use, so a test
can run ``SLA_Breached__c`` on the values the write-back put in the sandbox org.

Supported: ``IF(c, a, b)`` (lazy, as Salesforce evaluates it), ``ISBLANK(x)``, ``NOW()``,
``NULL``, numbers, field names, ``+ - * /``, ``> < >= <= = !=``, parentheses. DateTime
minus DateTime is days (a float), as in Salesforce. Anything else raises ``ValueError``
so a formula that grows past this subset fails its test instead of being misread.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|(>=|<=|!=|<>|[-+*/(),<>=]))")
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<>": lambda a, b: a != b,
}


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"cannot read the formula at {text[pos : pos + 20]!r}")
        out.append(next(group for group in match.groups() if group is not None))
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def _minus(a: Any, b: Any) -> Any:
    if isinstance(a, datetime) and isinstance(b, datetime):
        return (a - b).total_seconds() / 86400.0
    return a - b


class _Parser:
    def __init__(self, tokens: list[str], fields: Mapping[str, Any], now: datetime) -> None:
        self.tokens, self.pos, self.fields, self.now = tokens, 0, fields, now

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise ValueError(f"expected {expected!r}, found {token!r}")
        self.pos += 1
        return token

    # Each method returns a thunk, so IF only evaluates the branch it takes.
    def comparison(self) -> Callable[[], Any]:
        left = self.additive()
        if self.peek() in _COMPARE:
            compare = _COMPARE[self.take()]
            right = self.additive()
            return _binary(compare, left, right)
        return left

    def additive(self) -> Callable[[], Any]:
        value = self.term()
        while self.peek() in ("+", "-"):
            op, right = self.take(), self.term()
            apply = _minus if op == "-" else (lambda a, b: a + b)
            value = _binary(apply, value, right)
        return value

    def term(self) -> Callable[[], Any]:
        value = self.atom()
        while self.peek() in ("*", "/"):
            op, right = self.take(), self.atom()
            apply = (lambda a, b: a * b) if op == "*" else (lambda a, b: a / b)
            value = _binary(apply, value, right)
        return value

    def atom(self) -> Callable[[], Any]:
        token = self.take()
        if token == "(":
            inner = self.comparison()
            self.take(")")
            return inner
        if re.fullmatch(r"\d+(?:\.\d+)?", token):
            number = float(token)
            return lambda: number
        if token == "NULL":
            return lambda: None
        if self.peek() == "(":
            return self.call(token)
        if token not in self.fields:
            raise ValueError(f"the formula reads {token}, which the test did not supply")
        return lambda: self.fields[token]

    def call(self, name: str) -> Callable[[], Any]:
        self.take("(")
        args: list[Callable[[], Any]] = []
        while self.peek() != ")":
            args.append(self.comparison())
            if self.peek() == ",":
                self.take(",")
        self.take(")")
        if name == "IF" and len(args) == 3:
            cond, then, other = args
            return lambda: then() if cond() else other()
        if name == "ISBLANK" and len(args) == 1:
            return lambda: args[0]() is None
        if name == "NOW" and not args:
            return lambda: self.now
        raise ValueError(f"{name} with {len(args)} arguments is outside the supported subset")


def _binary(
    function: Callable[[Any, Any], Any], left: Callable[[], Any], right: Callable[[], Any]
) -> Callable[[], Any]:
    return lambda: _null_safe(function, left(), right())


def _null_safe(function: Callable[[Any, Any], Any], a: Any, b: Any) -> Any:
    return None if a is None or b is None else function(a, b)


def evaluate(formula: str, fields: Mapping[str, Any], *, now: datetime) -> Any:
    """The formula's value on ``fields`` (None for blank) with ``NOW()`` = ``now``."""
    parser = _Parser(_tokens(formula), fields, now)
    value = parser.comparison()
    if parser.peek() is not None:
        raise ValueError(f"unexpected {parser.peek()!r} after the formula's end")
    return value()
