"""The risk engine: each rule's edge exactly at its limit, the trading states, and a simulated book in which
no allowed order ever creates or worsens a limit breach."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings, target
from hypothesis import strategies as st
from pydantic import ValidationError

from workflows.models import OrderIntent, RiskDenial
from workflows.risk import (
    PositionSnapshot,
    PricePoint,
    RiskContext,
    RiskEngine,
    RiskLimits,
    TradingState,
    WorkingOrder,
    is_reducing,
    largest_move_pct,
)

NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
# Limits wide enough that only the rule under test can deny.
WIDE = {
    "max_order_notional_usd": 1e9,
    "max_position_shares_per_symbol": 1e9,
    "max_position_notional_usd_per_symbol": 1e9,
    "max_total_exposure_usd": 1e9,
    "max_buying_power_share_pct": 100,
    "max_orders_per_minute": 1000,
    "max_orders_per_hour": 1000,
}


def intent(**overrides: Any) -> OrderIntent:
    fields: dict[str, Any] = {
        "workflow": "price_alert",
        "symbol": "AAPL",
        "side": "BUY",
        "quantity": 10,
        "reference_price": 100.0,
    }
    return OrderIntent(**(fields | overrides))


def ctx(**overrides: Any) -> RiskContext:
    fields: dict[str, Any] = {
        "account_id": "DU1234567",
        "now": NOW,
        "buying_power_usd": 1e12,
        "net_liquidation_usd": 50_000.0,
        "market_open": True,
    }
    return RiskContext(**(fields | overrides))


def engine(**limits: Any) -> RiskEngine:
    return RiskEngine(RiskLimits(**limits))


def wide(**limits: Any) -> RiskEngine:
    return engine(**(WIDE | limits))


def denied_rules(eng: RiskEngine, order: OrderIntent, context: RiskContext) -> list[str]:
    return [d.rule for d in eng.check(order, context).denials]


def long_position(quantity: float, price: float = 100.0) -> dict[str, PositionSnapshot]:
    return {"AAPL": PositionSnapshot(quantity=quantity, market_price_usd=price)}


# ---- limits


def test_defaults_fit_a_small_paper_account() -> None:
    limits = RiskLimits()
    assert limits.max_order_notional_usd == 5_000
    assert limits.trading_mode == "paper"
    assert limits.enabled_strategies == frozenset({"price_alert"})
    assert limits.allowed_accounts == frozenset()
    assert limits.allow_extended_hours is False


def test_negative_limit_is_rejected_with_its_name() -> None:
    with pytest.raises(ValidationError, match="max_order_notional_usd must be 0 or more, got -1"):
        RiskLimits(max_order_notional_usd=-1)
    with pytest.raises(ValidationError, match="max_orders_per_minute must be 0 or more, got -3"):
        RiskLimits(max_orders_per_minute=-3)


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValidationError):
        ctx(now=datetime(2026, 3, 2, 15, 0))


# ---- max order notional


def test_order_notional_exactly_at_the_limit_is_allowed() -> None:
    assert engine().check(intent(quantity=50, reference_price=100.0), ctx()).allowed


def test_order_notional_one_cent_over_is_denied_with_the_numbers() -> None:
    decision = engine().check(intent(quantity=1, reference_price=5_000.01), ctx())
    assert decision.denials == [
        RiskDenial(rule="max_order_notional_usd", reason="order $5,000.01 > max_order_notional_usd $5,000.00")
    ]


def test_order_notional_uses_the_limit_price_and_formats_thousands() -> None:
    decision = wide(max_order_notional_usd=5_000).check(
        intent(quantity=124, order_type="LMT", limit_price=100.0, reference_price=1), ctx()
    )
    assert decision.summary == "max_order_notional_usd: order $12,400.00 > max_order_notional_usd $5,000.00"


def test_float_noise_does_not_deny_an_order_at_the_limit() -> None:
    assert wide(max_order_notional_usd=0.3).check(intent(quantity=3, reference_price=0.1), ctx()).allowed


# ---- position limits


def test_position_shares_edge_counts_held_and_working_buys() -> None:
    eng = wide(max_position_shares_per_symbol=1_000)
    held = ctx(positions=long_position(900))
    assert eng.check(intent(quantity=100), held).allowed
    assert denied_rules(eng, intent(quantity=101), held) == ["max_position_shares_per_symbol"]
    with_working = ctx(
        positions=long_position(900), working_orders=[WorkingOrder(symbol="AAPL", side="BUY", quantity=50)]
    )
    assert eng.check(intent(quantity=50), with_working).allowed
    assert denied_rules(eng, intent(quantity=51), with_working) == ["max_position_shares_per_symbol"]


def test_a_working_sell_does_not_make_room_for_a_buy() -> None:
    eng = wide(max_position_shares_per_symbol=1_000)
    context = ctx(positions=long_position(900), working_orders=[WorkingOrder(symbol="AAPL", side="SELL", quantity=100)])
    assert denied_rules(eng, intent(quantity=101), context) == ["max_position_shares_per_symbol"]


def test_position_shares_limit_applies_to_shorts() -> None:
    eng = wide(max_position_shares_per_symbol=1_000)
    assert eng.check(intent(side="SELL", quantity=1_000), ctx()).allowed
    decision = eng.check(intent(side="SELL", quantity=1_001), ctx())
    assert decision.denials == [
        RiskDenial(
            rule="max_position_shares_per_symbol",
            reason="AAPL position would reach 1,001 shares (incl. working orders) "
            "> max_position_shares_per_symbol 1,000",
        )
    ]


def test_over_limit_position_may_be_reduced_but_not_flipped_past_the_limit() -> None:
    eng = wide(max_position_shares_per_symbol=1_000)
    over = ctx(positions=long_position(1_500))
    assert eng.check(intent(side="SELL", quantity=100), over).allowed
    assert eng.check(intent(side="SELL", quantity=2_500), over).allowed
    assert denied_rules(eng, intent(side="SELL", quantity=2_501), over) == ["max_position_shares_per_symbol"]


def test_position_notional_edge_values_at_the_higher_of_mark_and_order_price() -> None:
    eng = wide(max_position_notional_usd_per_symbol=10_000)
    held = ctx(positions=long_position(90, price=100.0))
    assert eng.check(intent(quantity=10, reference_price=100.0), held).allowed
    assert denied_rules(eng, intent(quantity=10, reference_price=100.01), held) == [
        "max_position_notional_usd_per_symbol"
    ]
    marked_higher = ctx(positions=long_position(90, price=100.01))
    assert denied_rules(eng, intent(quantity=10, reference_price=100.0), marked_higher) == [
        "max_position_notional_usd_per_symbol"
    ]


def test_total_exposure_edge_counts_every_symbol_and_working_orders() -> None:
    eng = wide(max_total_exposure_usd=25_000)
    book = {"MSFT": PositionSnapshot(quantity=-200, market_price_usd=100.0)}
    assert eng.check(intent(quantity=50, reference_price=100.0), ctx(positions=book)).allowed
    assert denied_rules(eng, intent(quantity=50, reference_price=100.01), ctx(positions=book)) == [
        "max_total_exposure_usd"
    ]
    working = [WorkingOrder(symbol="TSLA", side="BUY", quantity=1, limit_price_usd=1.0)]
    assert denied_rules(eng, intent(quantity=50), ctx(positions=book, working_orders=working)) == [
        "max_total_exposure_usd"
    ]


def test_exposure_fails_closed_when_a_worked_symbol_has_no_price() -> None:
    working = [WorkingOrder(symbol="TSLA", side="BUY", quantity=5)]
    decision = wide().check(intent(), ctx(working_orders=working))
    assert decision.denials == [
        RiskDenial(rule="max_total_exposure_usd", reason="no price known for TSLA: exposure cannot be valued")
    ]
    priced = ctx(working_orders=working, recent_prices={"TSLA": [PricePoint(ts=NOW, price_usd=250.0)]})
    assert wide().check(intent(), priced).allowed


# ---- buying power


def test_buying_power_share_edge() -> None:
    eng = wide(max_buying_power_share_pct=25)
    assert eng.check(intent(quantity=50, reference_price=100.0), ctx(buying_power_usd=20_000)).allowed
    decision = eng.check(intent(quantity=50, reference_price=100.01), ctx(buying_power_usd=20_000))
    assert decision.denials == [
        RiskDenial(
            rule="max_buying_power_share_pct",
            reason="order $5,000.50 > 25% of buying power $20,000.00 = $5,000.00",
        )
    ]


def test_unknown_buying_power_blocks_entries_but_not_reductions() -> None:
    eng = wide()
    assert denied_rules(eng, intent(), ctx(buying_power_usd=None)) == ["max_buying_power_share_pct"]
    assert eng.check(intent(side="SELL"), ctx(buying_power_usd=None, positions=long_position(10))).allowed


# ---- order rate


def test_orders_per_minute_edge_and_window_end() -> None:
    eng = wide(max_orders_per_minute=5)
    four = [NOW - timedelta(seconds=s) for s in (1, 10, 20, 59)]
    assert eng.check(intent(), ctx(recent_order_times=four)).allowed
    five = [*four, NOW - timedelta(seconds=30)]
    decision = eng.check(intent(), ctx(recent_order_times=five))
    assert decision.denials == [
        RiskDenial(rule="max_orders_per_minute", reason="5 orders in the last 1 minute; max_orders_per_minute is 5")
    ]
    exactly_a_minute_ago = [*four, NOW - timedelta(minutes=1)]
    assert eng.check(intent(), ctx(recent_order_times=exactly_a_minute_ago)).allowed


def test_orders_per_hour_edge() -> None:
    eng = wide(max_orders_per_hour=30)
    spread = [NOW - timedelta(minutes=2 * i + 1) for i in range(29)]
    assert eng.check(intent(), ctx(recent_order_times=spread)).allowed
    more = [*spread, NOW - timedelta(minutes=59)]
    assert denied_rules(eng, intent(), ctx(recent_order_times=more)) == ["max_orders_per_hour"]


# ---- cooling-off and circuit breaker


def test_cooloff_blocks_entries_until_it_ends_and_allows_reductions() -> None:
    eng = wide(loss_cooloff_minutes=30)
    just_before = ctx(last_realized_loss_at=NOW - timedelta(minutes=29, seconds=59), positions=long_position(10))
    assert denied_rules(eng, intent(), just_before) == ["loss_cooloff_minutes"]
    assert eng.check(intent(side="SELL", quantity=10), just_before).allowed
    assert denied_rules(eng, intent(side="SELL", quantity=11), just_before) == ["loss_cooloff_minutes"]
    assert eng.check(intent(), ctx(last_realized_loss_at=NOW - timedelta(minutes=30))).allowed


def _prices(*points: tuple[float, float]) -> dict[str, list[PricePoint]]:
    return {"AAPL": [PricePoint(ts=NOW - timedelta(minutes=m), price_usd=p) for m, p in points]}


def test_circuit_breaker_edge_up_and_down() -> None:
    eng = wide(circuit_breaker_move_pct=5, circuit_breaker_window_minutes=5)
    assert eng.check(intent(), ctx(recent_prices=_prices((4, 100.0), (1, 105.0)))).allowed
    decision = eng.check(intent(), ctx(recent_prices=_prices((4, 100.0), (1, 105.01))))
    assert decision.denials == [
        RiskDenial(
            rule="circuit_breaker",
            reason="AAPL moved 5.01% in the last 5 minutes > circuit_breaker_move_pct 5%: no new entries",
        )
    ]
    assert eng.check(intent(), ctx(recent_prices=_prices((4, 100.0), (1, 95.0)))).allowed
    assert denied_rules(eng, intent(), ctx(recent_prices=_prices((4, 100.0), (1, 94.99)))) == ["circuit_breaker"]


def test_circuit_breaker_ignores_moves_before_the_window_and_allows_reductions() -> None:
    eng = wide(circuit_breaker_move_pct=5, circuit_breaker_window_minutes=5)
    assert eng.check(intent(), ctx(recent_prices=_prices((6, 80.0), (3, 100.0), (0, 101.0)))).allowed
    jumped = ctx(recent_prices=_prices((3, 100.0), (0, 120.0)), positions=long_position(10))
    assert eng.check(intent(side="SELL", quantity=10), jumped).allowed
    assert denied_rules(eng, intent(side="BUY"), jumped) == ["circuit_breaker"]


def test_largest_move_follows_time_order() -> None:
    points = [PricePoint(ts=NOW + timedelta(seconds=s), price_usd=p) for s, p in ((2, 90.0), (0, 100.0), (1, 80.0))]
    assert largest_move_pct(points) == pytest.approx(20.0)


# ---- trading state


def test_halted_denies_everything_even_a_reduction() -> None:
    halted = ctx(trading_state=TradingState.HALTED, positions=long_position(10))
    decision = wide().check(intent(side="SELL", quantity=10), halted)
    assert decision.denials == [RiskDenial(rule="trading_state", reason="trading is HALTED: no orders")]


def test_reducing_allows_a_sell_of_a_long_up_to_its_size_and_denies_a_flip() -> None:
    eng = wide()
    reducing = ctx(trading_state=TradingState.REDUCING, positions=long_position(100))
    assert eng.check(intent(side="SELL", quantity=100), reducing).allowed
    assert denied_rules(eng, intent(side="SELL", quantity=101), reducing) == ["trading_state"]
    assert denied_rules(eng, intent(side="BUY", quantity=1), reducing) == ["trading_state"]
    short = ctx(trading_state=TradingState.REDUCING, positions=long_position(-100))
    assert eng.check(intent(side="BUY", quantity=100), short).allowed
    assert denied_rules(eng, intent(side="SELL", quantity=1), short) == ["trading_state"]
    flat = ctx(trading_state=TradingState.REDUCING)
    assert denied_rules(eng, intent(side="SELL", quantity=1), flat) == ["trading_state"]


def test_reducing_counts_working_orders_on_the_same_side() -> None:
    working = [WorkingOrder(symbol="AAPL", side="SELL", quantity=50)]
    context = ctx(trading_state=TradingState.REDUCING, positions=long_position(100), working_orders=working)
    assert is_reducing(intent(side="SELL", quantity=50), context)
    assert not is_reducing(intent(side="SELL", quantity=51), context)


def test_a_brackets_two_exits_count_once_since_only_one_can_fill() -> None:
    # a 100-share long under a bracket: stop and target each SELL 100, one-cancels-all
    exits = [
        WorkingOrder(symbol="AAPL", side="SELL", quantity=100, oca_group="ovl-a1"),
        WorkingOrder(symbol="AAPL", side="SELL", quantity=100, limit_price_usd=210.0, oca_group="ovl-a1"),
    ]
    context = ctx(trading_state=TradingState.REDUCING, positions=long_position(100), working_orders=exits)
    assert context.working_shares("AAPL", "SELL") == 100
    assert not is_reducing(intent(side="SELL", quantity=1), context)
    plain = [o.model_copy(update={"oca_group": None}) for o in exits]
    assert ctx(working_orders=plain).working_shares("AAPL", "SELL") == 200
    two_brackets = [*exits, *(o.model_copy(update={"oca_group": "ovl-b1", "quantity": 30}) for o in exits)]
    assert ctx(working_orders=two_brackets).working_shares("AAPL", "SELL") == 130


# ---- strategies, hours, mode, accounts


def test_strategy_not_enabled_is_denied() -> None:
    decision = wide().check(intent(workflow="momentum_trade"), ctx())
    assert decision.denials == [
        RiskDenial(
            rule="enabled_strategies",
            reason="workflow 'momentum_trade' is not enabled for trading (enabled: price_alert)",
        )
    ]
    assert wide(enabled_strategies={"momentum_trade"}).check(intent(workflow="momentum_trade"), ctx()).allowed


def test_market_hours() -> None:
    strict = wide()
    extended = wide(allow_extended_hours=True)
    closed = ctx(market_open=False)
    pre_market = ctx(market_open=False, extended_hours=True)
    assert denied_rules(strict, intent(), closed) == ["market_hours"]
    assert denied_rules(extended, intent(outside_rth=True), closed) == ["market_hours"]
    assert denied_rules(extended, intent(), pre_market) == ["market_hours"]
    assert extended.check(intent(outside_rth=True), pre_market).allowed
    assert denied_rules(strict, intent(outside_rth=True), pre_market) == ["market_hours"]
    assert denied_rules(strict, intent(outside_rth=True), ctx()) == ["market_hours"]
    assert extended.check(intent(outside_rth=True), ctx()).allowed


def test_live_mode_without_the_explicit_setting_is_denied() -> None:
    eng = wide(trading_mode="live", allowed_accounts={"U7654321"})
    decision = eng.check(intent(), ctx(account_id="U7654321"))
    assert decision.denials == [
        RiskDenial(rule="trading_mode", reason="live mode needs live_trading_enabled to be set explicitly")
    ]
    assert eng.check(intent(), ctx(account_id="U7654321", live_trading_enabled=True)).allowed


def test_live_mode_refuses_a_paper_account_and_paper_mode_a_live_one() -> None:
    live = wide(trading_mode="live", allowed_accounts={"DU1234567"})
    assert denied_rules(live, intent(), ctx(live_trading_enabled=True)) == ["trading_mode"]
    paper = wide(allowed_accounts={"U7654321"})
    assert denied_rules(paper, intent(), ctx(account_id="U7654321")) == ["trading_mode"]


def test_account_allow_list() -> None:
    assert wide().check(intent(), ctx(account_id="DU1")).allowed
    listed = wide(allowed_accounts={"DU1"})
    assert listed.check(intent(), ctx(account_id="DU1")).allowed
    decision = listed.check(intent(), ctx(account_id="DU2"))
    assert decision.denials == [RiskDenial(rule="allowed_accounts", reason="account DU2 is not in allowed_accounts")]
    live = wide(trading_mode="live")
    assert denied_rules(live, intent(), ctx(account_id="U7654321", live_trading_enabled=True)) == ["allowed_accounts"]


# ---- engine


def test_every_denial_is_reported() -> None:
    context = ctx(trading_state=TradingState.HALTED, market_open=False)
    rules = denied_rules(engine(), intent(workflow="x", quantity=1_000), context)
    assert rules == [
        "trading_state",
        "enabled_strategies",
        "market_hours",
        "max_order_notional_usd",
        "max_position_notional_usd_per_symbol",
        "max_total_exposure_usd",
    ]


def test_custom_rule_list_replaces_the_defaults() -> None:
    @dataclass(frozen=True)
    class NoTesla:
        name: str = "no_tesla"

        def check(self, order: OrderIntent, context: RiskContext) -> RiskDenial | None:
            return RiskDenial(rule=self.name, reason="no TSLA") if order.symbol == "TSLA" else None

    eng = RiskEngine(RiskLimits(), rules=[NoTesla()])
    assert eng.check(intent(symbol="TSLA"), ctx(trading_state=TradingState.HALTED)).summary == "no_tesla: no TSLA"
    assert eng.check(intent(quantity=1e6), ctx(trading_state=TradingState.HALTED)).allowed


def test_describe_gives_limits_rules_and_live_state() -> None:
    eng = engine()
    context = ctx(
        positions=long_position(10, price=100.0),
        recent_order_times=[NOW - timedelta(seconds=5), NOW - timedelta(minutes=30)],
        last_realized_loss_at=NOW - timedelta(minutes=10),
        trading_state=TradingState.REDUCING,
    )
    description = eng.describe(context)
    assert description["limits"]["max_order_notional_usd"] == 5_000
    assert "circuit_breaker" in description["rules"]
    state = description["state"]
    assert state["trading_state"] == "REDUCING"
    assert state["is_paper"] is True
    assert state["gross_exposure_usd"] == 1_000.0
    assert (state["orders_last_minute"], state["orders_last_hour"]) == (1, 2)
    assert state["cooling_off_until"] == (NOW + timedelta(minutes=20)).isoformat()
    assert "state" not in eng.describe()


# ---- property: a simulated book

SYMBOLS = ("AAPL", "MSFT")
SIM_LIMITS = RiskLimits(
    max_order_notional_usd=12_000,
    max_position_shares_per_symbol=120,
    max_position_notional_usd_per_symbol=4_000,
    max_total_exposure_usd=7_000,
    max_buying_power_share_pct=50,
    max_orders_per_minute=20,
    max_orders_per_hour=100,
)


MAX_WORKING_ORDERS = 5


@dataclass
class SimOrder:
    symbol: str
    side: str
    quantity: int
    limit_price_usd: float

    @property
    def signed_quantity(self) -> int:
        return self.quantity if self.side == "BUY" else -self.quantity


@dataclass
class SimBook:
    """A tiny broker: orders fill at the mark; a price move cancels every working order (it was priced
    at the old quote), so an order always fills at the marks it was checked at."""

    now: datetime = NOW
    shares: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SYMBOLS, 0))
    marks: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SYMBOLS, 40.0))
    prices: dict[str, list[PricePoint]] = field(default_factory=lambda: {s: [] for s in SYMBOLS})
    working: list[SimOrder] = field(default_factory=list)
    order_times: list[datetime] = field(default_factory=list)
    prices_moved: bool = False
    peak_utilisation: float = 0.0
    """The highest metric/limit ratio any allowed order could reach: hypothesis steers towards it."""

    def context(self) -> RiskContext:
        return RiskContext(
            account_id="DU1",
            now=self.now,
            positions={
                s: PositionSnapshot(quantity=q, market_price_usd=self.marks[s]) for s, q in self.shares.items() if q
            },
            buying_power_usd=40_000,
            recent_order_times=self.order_times,
            recent_prices=self.prices,
            market_open=True,
            working_orders=[
                WorkingOrder(symbol=o.symbol, side=o.side, quantity=o.quantity, limit_price_usd=o.limit_price_usd)
                for o in self.working
            ],
        )

    def metrics(self, shares: dict[str, int]) -> dict[str, float]:
        values: dict[str, float] = {f"shares:{s}": abs(q) for s, q in shares.items()}
        values |= {f"notional:{s}": abs(q) * self.marks[s] for s, q in shares.items()}
        values["total"] = sum(abs(q) * self.marks[s] for s, q in shares.items())
        return values

    def assert_no_outcome_breaches(self, order: SimOrder) -> None:
        """Whichever working orders fill besides the new one, no limit is breached or a breach made worse."""
        now_values = self.metrics(self.shares)
        for count in range(len(self.working) + 1):
            for others in itertools.combinations(self.working, count):
                outcome = dict(self.shares)
                for filled in (*others, order):
                    outcome[filled.symbol] += filled.signed_quantity
                for name, value in self.metrics(outcome).items():
                    limit = _sim_limit(name)
                    assert value <= max(limit, now_values[name]) * (1 + 1e-9), (name, value, limit)
                    if not self.prices_moved:
                        assert value <= limit * (1 + 1e-9), (name, value, limit)
                    self.peak_utilisation = max(self.peak_utilisation, value / limit)

    def fill(self, order: SimOrder) -> None:
        self.shares[order.symbol] += order.signed_quantity


def _sim_limit(metric: str) -> float:
    if metric.startswith("shares:"):
        return SIM_LIMITS.max_position_shares_per_symbol
    if metric.startswith("notional:"):
        return SIM_LIMITS.max_position_notional_usd_per_symbol
    return SIM_LIMITS.max_total_exposure_usd


symbol_index = st.integers(0, len(SYMBOLS) - 1)
place = st.tuples(st.just("order"), symbol_index, st.sampled_from(["BUY", "SELL"]), st.integers(1, 150), st.booleans())
settle = st.tuples(st.sampled_from(["fill", "fill", "cancel"]), st.integers(0, MAX_WORKING_ORDERS))
operations = st.lists(
    st.one_of(
        *[place] * 4,
        *[settle] * 2,
        st.tuples(st.just("move"), symbol_index, st.floats(-0.04, 0.04)),
        st.tuples(st.just("wait"), st.integers(1, 900)),
    ),
    min_size=10,
    max_size=30,
)


@settings(max_examples=600, deadline=None)
@given(operations)
def test_an_allowed_order_never_creates_or_worsens_a_breach(ops: list[tuple[Any, ...]]) -> None:
    """Gating rules (state, cooling-off) have their own tests; here every order meets the exposure rules."""
    eng = RiskEngine(SIM_LIMITS)
    book = SimBook()
    for op in ops:
        book.now += timedelta(seconds=1)
        kind = op[0]
        if kind == "order":
            _, index, side, quantity, rests = op
            symbol = SYMBOLS[index]
            order = intent(symbol=symbol, side=side, quantity=quantity, reference_price=book.marks[symbol])
            context = book.context()
            if not eng.check(order, context).allowed:
                continue
            assert order.notional_usd <= SIM_LIMITS.max_order_notional_usd * (1 + 1e-9)
            assert context.orders_since(book.now - timedelta(minutes=1)) < SIM_LIMITS.max_orders_per_minute
            book.order_times.append(book.now)
            sim_order = SimOrder(symbol, side, quantity, book.marks[symbol])
            book.assert_no_outcome_breaches(sim_order)
            if rests and len(book.working) < MAX_WORKING_ORDERS:
                book.working.append(sim_order)
            else:
                book.fill(sim_order)
        elif kind in ("fill", "cancel") and book.working:
            chosen = book.working.pop(op[1] % len(book.working))
            if kind == "fill":
                book.fill(chosen)
        elif kind == "move":
            symbol = SYMBOLS[op[1]]
            book.working.clear()
            book.marks[symbol] = round(book.marks[symbol] * (1 + op[2]), 2)
            book.prices[symbol].append(PricePoint(ts=book.now, price_usd=book.marks[symbol]))
            book.prices_moved = True
        elif kind == "wait":
            book.now += timedelta(seconds=op[1])
    target(book.peak_utilisation, label="peak utilisation of a limit")


sides = st.sampled_from(["BUY", "SELL"])


@settings(max_examples=300, deadline=None)
@given(
    position=st.integers(-300, 300),
    working=st.lists(st.tuples(sides, st.integers(1, 300)), max_size=4),
    side=sides,
    quantity=st.integers(1, 400),
)
def test_reducing_state_allows_exactly_the_orders_that_only_reduce(
    position: int, working: list[tuple[str, int]], side: str, quantity: int
) -> None:
    """Allowed in REDUCING if and only if, with every working order on its side filled too, the position
    shrinks towards zero without crossing it."""
    context = ctx(
        trading_state=TradingState.REDUCING,
        positions=long_position(position) if position else {},
        working_orders=[WorkingOrder(symbol="AAPL", side=s, quantity=q) for s, q in working],
    )
    signed = quantity if side == "BUY" else -quantity
    same_side = sum(q if s == "BUY" else -q for s, q in working if s == side)
    after = position + same_side + signed
    only_reduces = 0 <= after * position < position**2
    assert wide().check(intent(side=side, quantity=quantity), context).allowed is only_reduces
