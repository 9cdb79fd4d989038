"""The trigger condition language: a hand-written tokenizer and recursive-descent parser, no eval.

Grammar (keywords and names are case-insensitive):

    condition   := or_expr | "plugin:" MODULE ":" FUNCTION
    or_expr     := and_expr ("or" and_expr)*
    and_expr    := not_expr ("and" not_expr)*
    not_expr    := "not" not_expr | "(" or_expr ")" | comparison
    comparison  := operand (">" | ">=" | "<" | "<=" | "crosses_above" | "crosses_below") operand
    operand     := NUMBER | field | indicator
    field       := price | bid | ask | last | volume
    indicator   := sma(N) | ema(N) | rsi(N) | vwap | percent_change_<N>s | percent_change_<N>min
                   | percent_change_<N>h

Numbers may be negative and have decimals (`-1.5`, `0.25`, `.5`). The language is small enough that a
parsing library would add a dependency without removing much code, and hand-written error messages
can say exactly where the text went wrong and what would have fit there.

Evaluation is three-valued: a comparison whose operand is unknown (an indicator still warming up, a
tick without a bid) is *unknown* (None), never an exception. `not` keeps unknown unknown, `and` is
False if any side is False, `or` is True if any side is True, otherwise unknown wins. A trigger
treats unknown as "not true" and also as "not false" (it neither fires nor re-arms), so
`not rsi(14) > 70` does not fire while RSI warms up.

`a crosses_above b` is true on the tick where a > b and on the previous tick a <= b;
`a crosses_below b` where a < b and previously a >= b. Both compare two series tick by tick.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from poller.indicators import FIELDS, MAX_PERIOD, MIN_PERIOD, IndicatorKind, IndicatorRef

Values = list[float | None]
Predicate = Callable[[Values, Values], bool | None]

COMPARISON_OPERATORS = (">", ">=", "<", "<=", "crosses_above", "crosses_below")
PERIOD_FUNCTIONS: dict[str, IndicatorKind] = {"sma": "sma", "ema": "ema", "rsi": "rsi"}
WINDOW_UNITS_S = {"s": 1.0, "min": 60.0, "h": 3600.0}
ALLOWED = (
    "fields: price, bid, ask, last, volume; indicators: sma(n), ema(n), rsi(n), vwap, "
    "percent_change_<N>s|min|h (e.g. percent_change_5min); operators: > >= < <= crosses_above "
    "crosses_below; and, or, not, parentheses, numbers; or the whole condition plugin:module:function"
)

_KEYWORDS = frozenset({"and", "or", "not", "crosses_above", "crosses_below"})
_PERCENT_CHANGE = re.compile(r"percent_change_(\d+)(s|min|h)")
_PLUGIN = re.compile(r"plugin:([A-Za-z_]\w*):([A-Za-z_]\w*)")
_TOKEN = re.compile(
    r"(?P<number>-?(?:\d+(?:\.\d*)?|\.\d+))|(?P<ident>[A-Za-z_]\w*)|(?P<op>>=|<=|>|<)|(?P<lparen>\()|(?P<rparen>\))"
)
_COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


class ConditionError(ValueError):
    """A condition that does not parse: `position` is the 0-based offset in `text` where it went wrong."""

    def __init__(self, text: str, position: int, message: str) -> None:
        self.text = text
        self.position = position
        self.reason = message
        pointer = " " * position + "^"
        super().__init__(f"{message} (at column {position + 1})\n    {text}\n    {pointer}")


@dataclass(frozen=True, slots=True)
class Number:
    value: float


@dataclass(frozen=True, slots=True)
class FieldRef:
    name: str


Operand = Number | FieldRef | IndicatorRef


@dataclass(frozen=True, slots=True)
class Comparison:
    op: str
    left: Operand
    right: Operand


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Node, ...]


Node = Comparison | Not | And | Or


@dataclass(frozen=True, slots=True)
class ExpressionCondition:
    """A parsed expression. `operands` are the fields and indicators it reads, each once, in order."""

    text: str
    root: Node
    operands: tuple[FieldRef | IndicatorRef, ...]

    @property
    def indicators(self) -> tuple[IndicatorRef, ...]:
        return tuple(op for op in self.operands if isinstance(op, IndicatorRef))

    def bind(self, slot_of: Callable[[FieldRef | IndicatorRef], int]) -> Predicate:
        """Compile to a closure over (current, previous) value lists; `slot_of` maps operands to slots."""
        return _compile(self.root, slot_of)


@dataclass(frozen=True, slots=True)
class PluginCondition:
    """`plugin:module:function`: a Python function in `<plugins_dir>/<module>.py` decides."""

    text: str
    module: str
    function: str


Condition = ExpressionCondition | PluginCondition


def parse_condition(text: str) -> Condition:
    """Parse a condition; raises ConditionError saying where and what was expected."""
    stripped = text.strip()
    if not stripped:
        raise ConditionError(text, 0, f"the condition is empty; write e.g. 'price > 200'. Allowed: {ALLOWED}")
    if stripped.lower().startswith("plugin:"):
        match = _PLUGIN.fullmatch(stripped)
        if match is None:
            raise ConditionError(text, text.index(stripped[0]), "a plugin condition is written plugin:module:function")
        return PluginCondition(text=text, module=match.group(1), function=match.group(2))
    parser = _Parser(text)
    root = parser.parse()
    return ExpressionCondition(text=text, root=root, operands=tuple(dict.fromkeys(parser.operands)))


def describe(operand: FieldRef | IndicatorRef) -> str:
    return operand.name if isinstance(operand, FieldRef) else operand.key


class _Token(NamedTuple):
    kind: str
    text: str
    position: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    length = len(text)
    while position < length:
        if text[position].isspace():
            position += 1
            continue
        match = _TOKEN.match(text, position)
        if match is None:
            char = text[position]
            hint = " (comparisons are > >= < <=)" if char in "=!" else ""
            raise ConditionError(text, position, f"unexpected character {char!r}{hint}")
        kind = match.lastgroup or ""
        value = match.group()
        tokens.append(_Token(kind, value.lower() if kind == "ident" else value, position))
        position = match.end()
    tokens.append(_Token("end", "", length))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self._text = text
        self._tokens = _tokenize(text)
        self._index = 0
        self.operands: list[FieldRef | IndicatorRef] = []

    def parse(self) -> Node:
        node = self._or()
        token = self._peek()
        if token.kind != "end":
            self._fail(token, "expected 'and', 'or' or the end of the condition")
        return node

    def _peek(self) -> _Token:
        return self._tokens[self._index]

    def _advance(self) -> _Token:
        token = self._tokens[self._index]
        self._index += 1
        return token

    def _at_keyword(self, word: str) -> bool:
        token = self._peek()
        return token.kind == "ident" and token.text == word

    def _fail(self, token: _Token, expected: str) -> None:
        got = "the end of the condition" if token.kind == "end" else repr(token.text)
        raise ConditionError(self._text, token.position, f"{expected}, got {got}")

    def _or(self) -> Node:
        items = [self._and()]
        while self._at_keyword("or"):
            self._advance()
            items.append(self._and())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def _and(self) -> Node:
        items = [self._not()]
        while self._at_keyword("and"):
            self._advance()
            items.append(self._not())
        return items[0] if len(items) == 1 else And(tuple(items))

    def _not(self) -> Node:
        if self._at_keyword("not"):
            self._advance()
            return Not(self._not())
        if self._peek().kind == "lparen":
            self._advance()
            node = self._or()
            if self._peek().kind != "rparen":
                self._fail(self._peek(), "expected ')'")
            self._advance()
            return node
        return self._comparison()

    def _comparison(self) -> Comparison:
        start = self._peek()
        left = self._operand("expected a comparison such as 'price > 200', 'not' or '('")
        token = self._peek()
        if not (token.kind == "op" or (token.kind == "ident" and token.text in COMPARISON_OPERATORS)):
            self._fail(token, f"expected a comparison ({' '.join(COMPARISON_OPERATORS)}) after {start.text!r}")
        self._advance()
        right = self._operand("expected a number, a field or an indicator")
        if isinstance(left, Number) and isinstance(right, Number):
            raise ConditionError(
                self._text,
                start.position,
                "this compares two numbers; one side must be a field or an indicator",
            )
        return Comparison(token.text, left, right)

    def _operand(self, expected: str) -> Operand:
        token = self._advance()
        if token.kind == "number":
            return Number(float(token.text))
        if token.kind != "ident" or token.text in _KEYWORDS:
            self._index -= 1
            self._fail(token, expected)
        name = token.text
        operand: FieldRef | IndicatorRef
        if name in FIELDS:
            operand = FieldRef(name)
        elif name == "vwap":
            if self._peek().kind == "lparen":
                self._fail(self._peek(), "vwap takes no argument: expected a comparison")
            operand = IndicatorRef("vwap", "vwap")
        elif name in PERIOD_FUNCTIONS:
            operand = self._period_function(token)
        elif (match := _PERCENT_CHANGE.fullmatch(name)) is not None:
            amount = int(match.group(1))
            if amount <= 0:
                raise ConditionError(self._text, token.position, "a percent_change window must be positive")
            unit = match.group(2)
            operand = IndicatorRef(
                "percent_change", f"percent_change_{amount}{unit}", window_s=amount * WINDOW_UNITS_S[unit]
            )
        else:
            if self._peek().kind == "lparen":
                message = f"unknown function {name!r}; allowed functions: sma(n), ema(n), rsi(n)"
            elif name.startswith("percent_change"):
                message = f"{name!r} is not a percent change window; write percent_change_<N>s, _<N>min or _<N>h"
            else:
                message = f"unknown name {name!r}; allowed: {ALLOWED}"
            raise ConditionError(self._text, token.position, message)
        self.operands.append(operand)
        return operand

    def _period_function(self, name_token: _Token) -> IndicatorRef:
        name = name_token.text
        if self._peek().kind != "lparen":
            self._fail(self._peek(), f"expected '(' after {name}: write {name}(n), e.g. {name}(14)")
        self._advance()
        period_token = self._advance()
        valid = period_token.kind == "number" and period_token.text.isdigit()
        if not valid or not MIN_PERIOD <= int(period_token.text) <= MAX_PERIOD:
            self._index -= 1
            self._fail(period_token, f"expected a whole number of bars from {MIN_PERIOD} to {MAX_PERIOD}")
        if self._peek().kind != "rparen":
            self._fail(self._peek(), f"expected ')' to close {name}(")
        self._advance()
        period = int(period_token.text)
        return IndicatorRef(PERIOD_FUNCTIONS[name], f"{name}({period})", period=period)


def _getter(operand: Operand, slot_of: Callable[[FieldRef | IndicatorRef], int]) -> Callable[[Values], float | None]:
    if isinstance(operand, Number):
        constant = operand.value
        return lambda _values: constant
    return operator.itemgetter(slot_of(operand))


def _compile(node: Node, slot_of: Callable[[FieldRef | IndicatorRef], int]) -> Predicate:
    if isinstance(node, Comparison):
        return _compile_comparison(node, slot_of)
    if isinstance(node, Not):
        inner = _compile(node.operand, slot_of)

        def negate(current: Values, previous: Values) -> bool | None:
            result = inner(current, previous)
            return None if result is None else not result

        return negate
    parts = tuple(_compile(item, slot_of) for item in node.items)
    decisive = isinstance(node, Or)

    def combine(current: Values, previous: Values) -> bool | None:
        unknown = False
        for part in parts:
            result = part(current, previous)
            if result is decisive:
                return decisive
            if result is None:
                unknown = True
        return None if unknown else not decisive

    return combine


def _compile_comparison(node: Comparison, slot_of: Callable[[FieldRef | IndicatorRef], int]) -> Predicate:
    left = _getter(node.left, slot_of)
    right = _getter(node.right, slot_of)
    if node.op in _COMPARATORS:
        compare = _COMPARATORS[node.op]
        if isinstance(node.right, Number) and not isinstance(node.left, Number):
            # The common shape ("price > 200", "rsi(14) < 30"): one list lookup, no getter calls.
            slot = slot_of(node.left)
            threshold = node.right.value

            def threshold_comparison(current: Values, previous: Values) -> bool | None:
                value = current[slot]
                return None if value is None else compare(value, threshold)

            return threshold_comparison

        def comparison(current: Values, previous: Values) -> bool | None:
            a = left(current)
            b = right(current)
            if a is None or b is None:
                return None
            return compare(a, b)

        return comparison
    above = node.op == "crosses_above"
    if not isinstance(node.left, Number) and not isinstance(node.right, Number):
        return _cross_of_slots(slot_of(node.left), slot_of(node.right), above)
    if isinstance(node.right, Number):
        return _cross_of_level(slot_of(node.left), node.right.value, above)

    def cross(current: Values, previous: Values) -> bool | None:
        a_now, b_now, a_before, b_before = left(current), right(current), left(previous), right(previous)
        if a_now is None or b_now is None or a_before is None or b_before is None:
            return None
        if above:
            return a_before <= b_before and a_now > b_now
        return a_before >= b_before and a_now < b_now

    return cross


# The two common shapes of a cross, as closures that index the value lists directly: a trigger is checked on
# every tick, and the general form's four getter calls cost more than the comparison itself.


def _cross_of_slots(a: int, b: int, above: bool) -> Predicate:
    """`a crosses_above b` / `crosses_below` for two series (e.g. "sma(20) crosses_above sma(50)")."""
    if above:

        def cross_above(current: Values, previous: Values) -> bool | None:
            a_now, b_now, a_before, b_before = current[a], current[b], previous[a], previous[b]
            if a_now is None or b_now is None or a_before is None or b_before is None:
                return None
            return a_before <= b_before and a_now > b_now

        return cross_above

    def cross_below(current: Values, previous: Values) -> bool | None:
        a_now, b_now, a_before, b_before = current[a], current[b], previous[a], previous[b]
        if a_now is None or b_now is None or a_before is None or b_before is None:
            return None
        return a_before >= b_before and a_now < b_now

    return cross_below


def _cross_of_level(a: int, level: float, above: bool) -> Predicate:
    """A series crossing a fixed level (e.g. "rsi(14) crosses_below 30")."""
    if above:

        def cross_above(current: Values, previous: Values) -> bool | None:
            now, before = current[a], previous[a]
            if now is None or before is None:
                return None
            return before <= level and now > level

        return cross_above

    def cross_below(current: Values, previous: Values) -> bool | None:
        now, before = current[a], previous[a]
        if now is None or before is None:
            return None
        return before >= level and now < level

    return cross_below
