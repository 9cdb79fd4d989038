"""The condition language: what parses, what it means, and where errors point."""

from __future__ import annotations

import pytest

from poller.conditions import (
    And,
    Comparison,
    ConditionError,
    ExpressionCondition,
    FieldRef,
    Not,
    Number,
    Or,
    PluginCondition,
    parse_condition,
)
from poller.indicators import IndicatorRef


def expression(text: str) -> ExpressionCondition:
    condition = parse_condition(text)
    assert isinstance(condition, ExpressionCondition)
    return condition


def evaluate(text: str, current: dict[str, float | None], previous: dict[str, float | None] | None = None):
    """Bind the condition to slots numbered in the order of its operands and evaluate it once."""
    condition = expression(text)
    names = [operand.name if isinstance(operand, FieldRef) else operand.key for operand in condition.operands]
    slots = {operand: index for index, operand in enumerate(condition.operands)}
    predicate = condition.bind(slots.__getitem__)
    before = previous or {}
    return predicate([current.get(name) for name in names], [before.get(name) for name in names])


def test_seed_conditions_parse() -> None:
    assert expression("price > 200").root == Comparison(">", FieldRef("price"), Number(200.0))
    change = expression("percent_change_5min > 1.5").root
    assert change == Comparison(">", IndicatorRef("percent_change", "percent_change_5min", window_s=300.0), Number(1.5))


@pytest.mark.parametrize(
    ("name", "window_s"),
    [("percent_change_30s", 30.0), ("percent_change_5min", 300.0), ("percent_change_1h", 3600.0)],
)
def test_percent_change_windows(name: str, window_s: float) -> None:
    (operand,) = expression(f"{name} < -0.5").operands
    assert isinstance(operand, IndicatorRef)
    assert (operand.key, operand.window_s) == (name, window_s)


def test_precedence_not_binds_tighter_than_and_than_or() -> None:
    root = expression("not bid > 1 and ask < 2 or last >= 3").root
    assert isinstance(root, Or)
    first, second = root.items
    assert isinstance(first, And)
    assert isinstance(first.items[0], Not)
    assert second == Comparison(">=", FieldRef("last"), Number(3.0))


def test_parentheses_group_and_keywords_are_case_insensitive() -> None:
    root = expression("NOT (Price > 1 OR volume <= 2)").root
    assert isinstance(root, Not)
    assert isinstance(root.operand, Or)


def test_numbers_negative_and_decimal() -> None:
    root = expression("percent_change_1h>-1.25 and price < .5 and price > 3.").root
    assert isinstance(root, And)
    assert [item.right for item in root.items] == [Number(-1.25), Number(0.5), Number(3.0)]  # type: ignore[union-attr]


def test_operands_are_listed_once_each() -> None:
    condition = expression("price crosses_above sma(50) and sma(50) > ema(20) and rsi(14) < 70 and vwap > 0")
    assert [getattr(op, "key", getattr(op, "name", None)) for op in condition.operands] == [
        "price",
        "sma(50)",
        "ema(20)",
        "rsi(14)",
        "vwap",
    ]


def test_plugin_condition() -> None:
    assert parse_condition("plugin:my_rules:gap_up") == PluginCondition("plugin:my_rules:gap_up", "my_rules", "gap_up")


@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("price > 200", {"price": 200.5}, True),
        ("price > 200", {"price": 200.0}, False),
        ("price >= 200", {"price": 200.0}, True),
        ("price < 10 or price > 20", {"price": 25.0}, True),
        ("price > 10 and bid < 5", {"price": 25.0, "bid": 6.0}, False),
        # warming up: unknown, not an exception, and `not` does not turn it into true
        ("rsi(14) > 70", {"rsi(14)": None}, None),
        ("not rsi(14) > 70", {"rsi(14)": None}, None),
        ("rsi(14) > 70 and price > 1", {"rsi(14)": None, "price": 0.5}, False),
        ("rsi(14) > 70 or price > 1", {"rsi(14)": None, "price": 2.0}, True),
        ("rsi(14) > 70 or price > 1", {"rsi(14)": None, "price": 0.5}, None),
    ],
)
def test_evaluation(text: str, values: dict[str, float | None], expected: bool | None) -> None:
    assert evaluate(text, values) is expected


@pytest.mark.parametrize(
    ("text", "previous", "current", "expected"),
    [
        ("price crosses_above sma(3)", {"price": 9.0, "sma(3)": 10.0}, {"price": 11.0, "sma(3)": 10.0}, True),
        ("price crosses_above sma(3)", {"price": 10.0, "sma(3)": 10.0}, {"price": 11.0, "sma(3)": 10.5}, True),
        ("price crosses_above sma(3)", {"price": 11.0, "sma(3)": 10.0}, {"price": 12.0, "sma(3)": 10.0}, False),
        ("price crosses_above sma(3)", {"price": 9.0, "sma(3)": None}, {"price": 11.0, "sma(3)": 10.0}, None),
        ("rsi(14) crosses_below 30", {"rsi(14)": 31.0}, {"rsi(14)": 29.0}, True),
        ("rsi(14) crosses_below 30", {"rsi(14)": 29.0}, {"rsi(14)": 28.0}, False),
        ("rsi(14) crosses_below 30", {"rsi(14)": 30.0}, {"rsi(14)": 30.0}, False),
    ],
)
def test_crossings_compare_two_ticks(
    text: str, previous: dict[str, float | None], current: dict[str, float | None], expected: bool | None
) -> None:
    assert evaluate(text, current, previous) is expected


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("price >> 200", 7, "expected a number, a field or an indicator, got '>'"),
        ("prise > 200", 0, "unknown name 'prise'; allowed: fields: price, bid, ask, last, volume"),
        ("price > 200 and", 15, "expected a comparison such as 'price > 200'"),
        ("price == 200", 6, "unexpected character '='"),
        ("macd(12) > 0", 0, "unknown function 'macd'; allowed functions: sma(n), ema(n), rsi(n)"),
        ("sma(1) > 0", 4, "whole number of bars from 2 to 10000"),
        ("sma(2.5) > 0", 4, "whole number of bars"),
        ("sma 20 > 0", 4, "expected '(' after sma"),
        ("rsi(14 > 30", 7, "expected ')' to close rsi("),
        ("vwap(5) > 1", 4, "vwap takes no argument"),
        ("percent_change_5m > 1", 0, "write percent_change_<N>s, _<N>min or _<N>h"),
        ("percent_change_0s > 1", 0, "window must be positive"),
        ("(price > 1", 10, "expected ')'"),
        ("price > 1 price > 2", 10, "expected 'and', 'or' or the end of the condition"),
        ("price", 5, "expected a comparison (> >= < <= crosses_above crosses_below) after 'price'"),
        ("3 > 4", 0, "compares two numbers"),
        ("  ", 0, "the condition is empty"),
        ("plugin:bad-module:fn", 0, "plugin:module:function"),
    ],
)
def test_errors_say_where_and_what(text: str, position: int, fragment: str) -> None:
    with pytest.raises(ConditionError) as caught:
        parse_condition(text)
    assert caught.value.position == position
    assert fragment in caught.value.reason
    assert f"column {position + 1}" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_error_message_draws_a_caret_under_the_problem() -> None:
    with pytest.raises(ConditionError) as caught:
        parse_condition("price > sma(20) and rsx(14) < 30")
    lines = str(caught.value).splitlines()
    assert lines[1].strip() == "price > sma(20) and rsx(14) < 30"
    assert lines[2].index("^") == lines[1].index("rsx")
