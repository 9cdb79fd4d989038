"""The trigger engine's batch path and the indicators' fast paths give the same answers as the plain ones.

`TriggerEngine.on_ticks` (what the poller calls each cycle) against `on_tick` one tick at a time; the
specialised crosses against their definition; VWAP's cached session bounds against a per-tick session
lookup across New York's DST changes; the bank's one deque of recent prices against the prices fed.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from itertools import product

import pytest

from poller.conditions import ExpressionCondition, parse_condition
from poller.events import Tick
from poller.indicators import NEW_YORK, IndicatorBank, IndicatorRef, Vwap
from poller.triggers import TriggerEngine, TriggerSpec

T0 = datetime(2026, 3, 6, 14, 30, tzinfo=UTC)
CONDITIONS = (
    "price > 101",
    "percent_change_5min > 0.3",
    "rsi(14) crosses_below 45",
    "rsi(14) crosses_above 55",
    "sma(5) crosses_above sma(20)",
    "sma(5) crosses_below sma(20)",
    "price crosses_above sma(20) and not rsi(14) > 80",
    "vwap < price or bid > 102",
)


def _specs(symbols: list[str]) -> list[TriggerSpec]:
    return [
        TriggerSpec(name=f"{symbol}-{n}", symbol=symbol, condition=condition, cooldown_s=30 * (n % 3))
        for symbol in symbols
        for n, condition in enumerate(CONDITIONS)
    ]


def _batches(symbols: list[str], count: int) -> list[list[Tick]]:
    rng = random.Random(3)
    prices = dict.fromkeys(symbols, 100.0)
    volume = dict.fromkeys(symbols, 0.0)
    batches = []
    for index in range(count):
        ts = T0 + timedelta(seconds=20 * index)
        batch = []
        for symbol in symbols:
            prices[symbol] *= 1 + rng.gauss(0, 0.003)
            volume[symbol] += rng.randint(0, 500)
            price = round(prices[symbol], 2)
            batch.append(
                Tick(symbol=symbol, price=price, bid=price - 0.01, ask=price + 0.01, volume=volume[symbol], ts=ts)
            )
        batches.append(batch)
    return batches


def test_on_ticks_fires_exactly_what_on_tick_fires_one_by_one() -> None:
    symbols = ["AAPL", "MSFT", "NVDA"]
    by_batch, by_tick = TriggerEngine(_specs(symbols)), TriggerEngine(_specs(symbols))
    batched, single = [], []
    for batch in _batches(symbols, 400):
        batched += by_batch.on_ticks(batch)
        for tick in batch:
            single += by_tick.on_tick(tick)
    assert len(batched) > 50
    assert [(e.trigger_name, e.ts, e.price, e.indicators, e.recent_prices) for e in batched] == [
        (e.trigger_name, e.ts, e.price, e.indicators, e.recent_prices) for e in single
    ]
    for symbol in symbols:
        assert by_batch.indicator_values(symbol) == by_tick.indicator_values(symbol)


def test_a_lower_case_and_naive_tick_reaches_its_symbols_triggers() -> None:
    engine = TriggerEngine([TriggerSpec(name="a", symbol="AAPL", condition="price > 100")])
    [event] = engine.on_ticks([Tick(symbol="aapl", price=101.0, ts=datetime(2026, 3, 6, 15, 0))])
    assert event.symbol == "AAPL"
    assert event.ts == datetime(2026, 3, 6, 15, 0, tzinfo=UTC)


def test_disabling_and_expiry_still_stop_a_trigger_in_a_batch() -> None:
    engine = TriggerEngine(
        [
            TriggerSpec(name="off", symbol="X", condition="price > 1", enabled=False),
            TriggerSpec(name="late", symbol="X", condition="price > 1", expires_at=T0 + timedelta(seconds=10)),
        ]
    )
    assert engine.on_ticks([Tick(symbol="X", price=2.0, ts=T0 + timedelta(seconds=20))]) == []
    assert set(engine.disabled_reasons()) == {"late"}
    assert engine.set_enabled("off", True)
    assert [e.trigger_name for e in engine.on_ticks([Tick(symbol="X", price=2.0, ts=T0)])] == ["off"]


VALUES = (None, 99.0, 100.0, 101.0)


def _crossed(
    above: bool, a_before: float | None, b_before: float | None, a_now: float | None, b_now: float | None
) -> bool | None:
    """The definition in poller.conditions' docstring."""
    if a_before is None or b_before is None or a_now is None or b_now is None:
        return None
    if above:
        return a_before <= b_before and a_now > b_now
    return a_before >= b_before and a_now < b_now


@pytest.mark.parametrize("above", [True, False])
def test_a_cross_of_two_series_follows_the_definition(above: bool) -> None:
    condition = parse_condition(f"rsi(14) {'crosses_above' if above else 'crosses_below'} sma(3)")
    assert isinstance(condition, ExpressionCondition)
    slots = {operand: index for index, operand in enumerate(condition.operands)}
    check = condition.bind(slots.__getitem__)
    for a_before, b_before, a_now, b_now in product(VALUES, repeat=4):
        assert check([a_now, b_now], [a_before, b_before]) == _crossed(above, a_before, b_before, a_now, b_now)


@pytest.mark.parametrize("above", [True, False])
def test_a_cross_of_a_level_follows_the_definition(above: bool) -> None:
    condition = parse_condition(f"price {'crosses_above' if above else 'crosses_below'} 100")
    assert isinstance(condition, ExpressionCondition)
    check = condition.bind(lambda _: 0)
    for before, now in product(VALUES, repeat=2):
        assert check([now], [before]) == _crossed(above, before, 100.0, now, 100.0)


def test_vwap_session_bounds_follow_new_york_days_across_dst() -> None:
    """Hourly ticks over both 2026 DST changes, with some out of order: the session (and so the reset) is the
    New York date of each tick, as a per-tick lookup would find it."""
    rng = random.Random(11)
    times = [datetime(2026, 3, 5, tzinfo=UTC) + timedelta(hours=h) for h in range(24 * 6)]
    times += [datetime(2026, 10, 29, tzinfo=UTC) + timedelta(minutes=37 * k) for k in range(40 * 7)]
    for _ in range(30):
        i = rng.randrange(1, len(times))
        times[i - 1], times[i] = times[i], times[i - 1]
    vwap = Vwap()
    session: date | None = None
    pv = volume_sum = last_volume = 0.0
    for ts in times:
        day = ts.astimezone(NEW_YORK).date()
        if day != session:
            session, pv, volume_sum, last_volume = day, 0.0, 0.0, 0.0
        price, cumulative = rng.uniform(90, 110), last_volume + rng.randint(1, 100)
        pv += price * (cumulative - last_volume)
        volume_sum += cumulative - last_volume
        last_volume = cumulative
        assert vwap.update_at(price, ts, ts.timestamp(), cumulative) == pytest.approx(pv / volume_sum, rel=1e-12)


def test_bank_keeps_recent_prices_in_order_and_seeds_time_based_indicators_with_their_times() -> None:
    bank = IndicatorBank(seed_size=30)
    for i in range(45):
        bank.update(float(i), T0 + timedelta(minutes=i) if i % 2 else None)
    assert bank.recent_prices(5) == [40.0, 41.0, 42.0, 43.0, 44.0]
    assert bank.recent_prices(100) == [float(i) for i in range(15, 45)]
    slot = bank.acquire(IndicatorRef("percent_change", "percent_change_10min", window_s=600.0))
    # Seeded from the timed ticks only: 43 at T0+43 min against 33 at T0+33 min.
    assert bank.current[slot] == pytest.approx((43 - 33) / 33 * 100)
