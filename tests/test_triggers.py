"""TriggerEngine semantics, a replay of real daily bars against an independent computation,
custom plugin triggers, and the trigger store across a restart."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import talib
from pydantic import ValidationError

from poller.events import Tick
from poller.trigger_store import TriggerStore
from poller.triggers import TriggerEngine, TriggerSpec

DATA = Path(__file__).parent / "data"
T0 = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def goog_bars() -> tuple[list[datetime], np.ndarray]:
    with (DATA / "poller_goog_daily.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    dates = [datetime.fromisoformat(row["Date"]).replace(hour=20, tzinfo=UTC) for row in rows]
    return dates, np.array([float(row["Close"]) for row in rows])


def replay(spec: TriggerSpec) -> list[int]:
    """Indexes of the bars on which the trigger fired."""
    dates, closes = goog_bars()
    engine = TriggerEngine([spec])
    fired = []
    for index, (ts, close) in enumerate(zip(dates, closes, strict=True)):
        if engine.on_tick(Tick(symbol="GOOG", price=float(close), ts=ts, bar_id=str(index))):
            fired.append(index)
    return fired


def rising_edges(condition: np.ndarray) -> list[int]:
    """Bars where a level condition becomes true; a trigger starts armed, so bar 0 counts if true."""
    return [i for i in range(len(condition)) if condition[i] and (i == 0 or not condition[i - 1])]


def wilder_rsi(prices: np.ndarray, period: int) -> list[float | None]:
    """Wilder's RSI in plain loops: simple average of the first `period` changes, then smoothing."""
    values: list[float | None] = [None] * len(prices)
    gains = [max(prices[i] - prices[i - 1], 0.0) for i in range(1, len(prices))]
    losses = [max(prices[i - 1] - prices[i], 0.0) for i in range(1, len(prices))]
    avg_gain = sum(gains[:period]) / period
    avg_loss = sum(losses[:period]) / period
    for i in range(period, len(prices)):
        if i > period:
            avg_gain = (avg_gain * (period - 1) + gains[i - 1]) / period
            avg_loss = (avg_loss * (period - 1) + losses[i - 1]) / period
        total = avg_gain + avg_loss
        values[i] = 100.0 * avg_gain / total if total else 0.0
    return values


def test_replay_price_threshold_fires_once_per_crossing() -> None:
    _, closes = goog_bars()
    expected = rising_edges(closes > 600.0)
    assert len(expected) > 3
    assert replay(TriggerSpec(name="t", symbol="GOOG", condition="price > 600")) == expected


def test_replay_price_crosses_above_sma20() -> None:
    _, closes = goog_bars()
    sma = np.full(len(closes), np.nan)
    sma[19:] = np.convolve(closes, np.ones(20) / 20, mode="valid")
    expected = [i for i in range(21, len(closes)) if closes[i - 1] <= sma[i - 1] and closes[i] > sma[i]]
    assert len(expected) > 50
    assert replay(TriggerSpec(name="t", symbol="GOOG", condition="price crosses_above sma(20)")) == expected


def test_replay_rsi14_crosses_below_30() -> None:
    _, closes = goog_bars()
    rsi = wilder_rsi(closes, 14)
    expected = [
        i
        for i in range(1, len(closes))
        if rsi[i - 1] is not None and rsi[i] is not None and rsi[i - 1] >= 30 and rsi[i] < 30
    ]
    assert len(expected) > 5
    assert replay(TriggerSpec(name="t", symbol="GOOG", condition="rsi(14) crosses_below 30")) == expected


def tick(price: float, seconds: float = 0.0, **fields: object) -> Tick:
    return Tick(symbol="AAPL", price=price, ts=T0 + timedelta(seconds=seconds), **fields)  # type: ignore[arg-type]


def fire_pattern(engine: TriggerEngine, ticks: list[Tick]) -> list[bool]:
    return [bool(engine.on_tick(item)) for item in ticks]


def test_level_condition_rearms_only_after_being_false() -> None:
    engine = TriggerEngine([TriggerSpec(name="t", symbol="AAPL", condition="price > 200")])
    prices = [199, 201, 202, 200, 201, 203]
    assert fire_pattern(engine, [tick(p, i) for i, p in enumerate(prices)]) == [
        False, True, False, False, True, False,
    ]  # fmt: skip


def test_true_on_the_first_tick_fires() -> None:
    engine = TriggerEngine([TriggerSpec(name="t", symbol="AAPL", condition="price > 200")])
    assert fire_pattern(engine, [tick(205), tick(206, 1)]) == [True, False]


def test_cooldown_holds_back_and_fires_when_it_ends_if_rearmed_and_true() -> None:
    engine = TriggerEngine([TriggerSpec(name="t", symbol="AAPL", condition="price > 200", cooldown_s=60)])
    seconds_and_prices = [(0, 201), (10, 199), (20, 201), (50, 202), (61, 203), (70, 199), (80, 201)]
    assert fire_pattern(engine, [tick(p, s) for s, p in seconds_and_prices]) == [
        True, False, False, False, True, False, False,
    ]  # fmt: skip


def test_expiry_stops_the_trigger_and_reports_it() -> None:
    spec = TriggerSpec(name="t", symbol="AAPL", condition="price > 200", expires_at=T0 + timedelta(seconds=30))
    engine = TriggerEngine([spec])
    assert fire_pattern(engine, [tick(201, 0), tick(199, 10), tick(201, 30)]) == [True, False, False]
    assert "expired" in engine.disabled_reasons()["t"]


def test_naive_expiry_is_taken_as_utc() -> None:
    spec = TriggerSpec(name="t", symbol="AAPL", condition="price > 1", expires_at=datetime(2026, 1, 1))
    assert spec.expires_at == datetime(2026, 1, 1, tzinfo=UTC)


def test_once_per_bar() -> None:
    engine = TriggerEngine([TriggerSpec(name="t", symbol="AAPL", condition="price > 200", once_per_bar=True)])
    ticks = [tick(201, 0, bar_id="b1"), tick(199, 1, bar_id="b1"), tick(201, 2, bar_id="b1"), tick(201, 3, bar_id="b2")]
    assert fire_pattern(engine, ticks) == [True, False, False, True]


def test_unknown_neither_fires_nor_rearms() -> None:
    engine = TriggerEngine([TriggerSpec(name="t", symbol="AAPL", condition="bid > 100")])
    ticks = [
        tick(100, 0, bid=101.0),
        tick(100, 1),
        tick(100, 2, bid=101.0),
        tick(100, 3, bid=99.0),
        tick(100, 4, bid=101.0),
    ]
    assert fire_pattern(engine, ticks) == [True, False, False, False, True]


def test_event_carries_context() -> None:
    spec = TriggerSpec(
        name="cross",
        symbol="AAPL",
        condition="price crosses_above sma(3) and rsi(2) > 0",
        action="execute_workflow:momentum_trade",
        channel="urgent",
    )
    engine = TriggerEngine([spec], history_size=4)
    prices = [10.0, 9.0, 8.0, 7.0, 9.5]
    events = [event for i, price in enumerate(prices) for event in engine.on_tick(tick(price, i))]
    (event,) = events
    assert (event.trigger_name, event.symbol, event.price, event.channel) == ("cross", "AAPL", 9.5, "urgent")
    assert event.condition == spec.condition
    assert event.workflow == "momentum_trade"
    assert event.ts == T0 + timedelta(seconds=4)
    assert event.recent_prices == [9.0, 8.0, 7.0, 9.5]
    assert event.indicators["price"] == 9.5
    assert event.indicators["sma(3)"] == pytest.approx((8.0 + 7.0 + 9.5) / 3)
    assert set(event.indicators) == {"price", "sma(3)", "rsi(2)"}
    assert engine.indicator_values("AAPL")["sma(3)"] == pytest.approx((8.0 + 7.0 + 9.5) / 3)


def test_warm_up_feeds_indicators_and_crossing_history() -> None:
    dates, closes = goog_bars()
    engine = TriggerEngine([TriggerSpec(name="t", symbol="GOOG", condition="rsi(14) < 101")])
    engine.warm_up("GOOG", [float(c) for c in closes[:-1]], dates[:-1])
    assert engine.indicator_values("GOOG")["rsi(14)"] == pytest.approx(talib.RSI(closes[:-1], 14)[-1], abs=1e-9)
    (event,) = engine.on_tick(Tick(symbol="GOOG", price=float(closes[-1]), ts=dates[-1]))
    assert event.indicators["rsi(14)"] == pytest.approx(talib.RSI(closes, 14)[-1], abs=1e-9)
    with pytest.raises(ValueError, match="timestamps"):
        engine.warm_up("GOOG", [1.0, 2.0], dates[:1])


def test_add_replace_remove_enable_and_symbols() -> None:
    engine = TriggerEngine([TriggerSpec(name="t", symbol="AAPL", condition="price > 200")])
    engine.add(TriggerSpec(name="t", symbol="TSLA", condition="price > 300"))
    engine.add(TriggerSpec(name="u", symbol="SPY", condition="price > 1", enabled=False))
    assert [spec.symbol for spec in engine.specs()] == ["TSLA", "SPY"]
    assert engine.symbols() == {"TSLA"}
    assert engine.on_tick(Tick(symbol="AAPL", price=250, ts=T0)) == []
    assert engine.on_tick(Tick(symbol="SPY", price=5, ts=T0)) == []
    assert engine.set_enabled("u", True)
    assert len(engine.on_tick(Tick(symbol="SPY", price=5, ts=T0))) == 1
    assert engine.remove("t") and not engine.remove("t")
    assert not engine.set_enabled("t", True)
    assert engine.symbols() == {"SPY"}


def test_removing_the_last_reader_drops_the_indicator() -> None:
    engine = TriggerEngine(
        [
            TriggerSpec(name="a", symbol="AAPL", condition="price > sma(5)"),
            TriggerSpec(name="b", symbol="AAPL", condition="sma(5) > ema(5)"),
        ]
    )
    engine.remove("a")
    assert set(engine.indicator_values("AAPL")) == {"sma(5)", "ema(5)"}
    engine.remove("b")
    assert engine.indicator_values("AAPL") == {}


def test_spec_validation_gives_the_reason() -> None:
    with pytest.raises(ValueError, match="unknown name 'prise'"):
        TriggerSpec(name="t", symbol="AAPL", condition="prise > 1")
    with pytest.raises(ValidationError, match="execute_workflow"):
        TriggerSpec(name="t", symbol="AAPL", condition="price > 1", action="buy_everything")
    assert TriggerSpec(name=" t ", symbol=" aapl", condition="price > 1").symbol == "AAPL"


PLUGIN_SOURCE = """
import time

calls = []

def above_100(view):
    calls.append(view)
    return view.price > 100

def broken(view):
    raise RuntimeError("no data feed")

def slow(view):
    time.sleep(0.03)
    return True

def not_a_bool(view):
    return "yes"

def mutates(view):
    view.indicators["sma(2)"] = 0.0
    return True
"""


@pytest.fixture
def plugins_dir(tmp_path: Path) -> Path:
    (tmp_path / "rules.py").write_text(PLUGIN_SOURCE)
    return tmp_path


def test_failing_plugins_are_disabled_while_others_keep_firing(
    plugins_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    names = ["broken", "slow", "not_a_bool", "mutates"]
    specs = [TriggerSpec(name=name, symbol="AAPL", condition=f"plugin:rules:{name}") for name in names]
    specs += [
        TriggerSpec(name="plugin ok", symbol="AAPL", condition="plugin:rules:above_100"),
        TriggerSpec(name="plain", symbol="AAPL", condition="price > sma(2)"),
    ]
    engine = TriggerEngine(specs, plugins_dir=plugins_dir, plugin_budget_s=0.01)
    fired: list[str] = []
    for i, price in enumerate([99.0, 101.0, 99.0, 102.0]):
        fired += [event.trigger_name for event in engine.on_tick(tick(price, i))]
    assert fired == ["plugin ok", "plain", "plugin ok", "plain"]
    reasons = engine.disabled_reasons()
    assert set(reasons) == set(names)
    assert "RuntimeError: no data feed" in reasons["broken"]
    assert "budget" in reasons["slow"]
    assert "must return True or False" in reasons["not_a_bool"]
    assert "TypeError" in reasons["mutates"]
    assert "trigger 'broken' disabled: plugin rules:broken raised RuntimeError" in caplog.text
    assert engine.set_enabled("broken", True)
    assert "broken" not in engine.disabled_reasons()


def test_plugin_sees_a_read_only_view(plugins_dir: Path) -> None:
    engine = TriggerEngine(
        [
            TriggerSpec(name="p", symbol="AAPL", condition="plugin:rules:above_100"),
            TriggerSpec(name="s", symbol="AAPL", condition="price > sma(2)"),
        ],
        plugins_dir=plugins_dir,
        history_size=2,
    )
    engine.on_tick(tick(100.0, 0))
    (event,) = [e for e in engine.on_tick(tick(104.0, 1)) if e.trigger_name == "p"]
    assert event.indicators == {"sma(2)": 102.0}
    import poller_plugin_rules as rules  # type: ignore[import-not-found]  # registered by the loader

    view = rules.calls[-1]
    assert (view.symbol, view.price, view.recent_prices) == ("AAPL", 104.0, (100.0, 104.0))
    with pytest.raises(AttributeError):
        view.price = 1.0


def test_a_plugin_that_cannot_load_is_refused_at_add(plugins_dir: Path) -> None:
    engine = TriggerEngine(plugins_dir=plugins_dir)
    with pytest.raises(ValueError, match="has no function 'missing'"):
        engine.add(TriggerSpec(name="p", symbol="AAPL", condition="plugin:rules:missing"))
    with pytest.raises(ValueError, match="does not exist"):
        engine.add(TriggerSpec(name="p", symbol="AAPL", condition="plugin:absent:fn"))
    with pytest.raises(ValueError, match="none is configured"):
        TriggerEngine().add(TriggerSpec(name="p", symbol="AAPL", condition="plugin:rules:above_100"))
    assert engine.specs() == []


@pytest.mark.anyio
async def test_store_round_trips_across_a_restart(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'nested' / 'poller' / 'triggers.db'}"
    alert = TriggerSpec(
        name="AAPL alert",
        symbol="AAPL",
        condition="price > 200",
        channel="urgent",
        cooldown_s=30,
        expires_at=datetime(2026, 12, 31, 21, tzinfo=UTC),
        once_per_bar=True,
    )
    momentum = TriggerSpec(name="TSLA momentum", symbol="TSLA", condition="percent_change_5min > 1.5")
    gone = TriggerSpec(name="gone", symbol="SPY", condition="price < 1")
    async with TriggerStore(url) as store:
        assert await store.load() == []
        for spec in (alert, momentum, gone):
            await store.save(spec)
        await store.save(momentum.model_copy(update={"condition": "percent_change_5min > 2"}))
        assert await store.set_enabled("AAPL alert", False)
        assert await store.delete("gone")
        assert not await store.delete("gone")
        assert not await store.set_enabled("gone", True)
    async with TriggerStore(url) as restarted:
        loaded = await restarted.load()
    assert loaded == [
        alert.model_copy(update={"enabled": False}),
        momentum.model_copy(update={"condition": "percent_change_5min > 2"}),
    ]


@pytest.mark.postgres
@pytest.mark.anyio
async def test_store_works_on_postgres(postgres_url: str) -> None:
    spec = TriggerSpec(name="AAPL alert", symbol="AAPL", condition="price > 200", cooldown_s=5)
    async with TriggerStore(postgres_url) as store:
        await store.save(spec)
        assert await store.set_enabled("AAPL alert", False)
    async with TriggerStore(postgres_url) as restarted:
        assert await restarted.load() == [spec.model_copy(update={"enabled": False})]
