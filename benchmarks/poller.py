"""Poller costs: triggers per tick, one snapshot call per cycle, indicator update per tick.

- Triggers: `TriggerEngine.on_ticks` (what the poller calls each cycle) over a batch of one tick for each of
  500 symbols, 4 triggers per symbol (a price threshold, a 5-minute percent change, an RSI cross and an SMA
  cross), warmed up with history. Baseline: the same number of pure-Python streaming RSI updates (one per
  trigger per tick). The ticks are built before timing (building them is the source's work). Tick-to-event
  is one `on_tick` call for a tick that fired at least one trigger, over further batches.
- Snapshot per cycle: `Poller.poll_once` for 100 symbols over the simulated IB_MCP in-process, counting the
  IB_MCP calls it makes, against one `quotes()` call for a single symbol.
- Indicators: `poller.indicators.Rsi(14).update` per tick against TA-Lib's whole-array RSI per element and a
  pure-Python streaming RSI (the textbook Wilder update, no TA-Lib seeding details).

    python -m benchmarks.poller [--symbols 500] [--batches 200] [--poll-symbols 100] [--cycles 50]
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from benchmarks.figures import Figure, p50_p99, percentile, print_figures
from broker.client import BrokerClient
from poller.events import Tick
from poller.indicators import Rsi
from poller.triggers import TriggerEngine, TriggerSpec

TRIGGER_CONDITIONS = (
    "price > {threshold}",
    "percent_change_5min > 1.5",
    "rsi(14) crosses_below 30",
    "sma(20) crosses_above sma(50)",
)
TRIGGER_TARGET_RATIO = 3.0
WARM_UP_PRICES = 600
TICK_SPACING_S = 5.0
RSI_PERIOD = 14


class PurePythonRsi:
    """The baseline: a plain streaming Wilder RSI, the least work one RSI update can be in Python."""

    __slots__ = ("avg_gain", "avg_loss", "period", "previous")

    def __init__(self, period: int) -> None:
        self.period = period
        self.previous: float | None = None
        self.avg_gain = 0.0
        self.avg_loss = 0.0

    def update(self, price: float) -> float:
        previous = self.previous
        self.previous = price
        if previous is None:
            return 50.0
        change = price - previous
        n = self.period
        self.avg_gain = (self.avg_gain * (n - 1) + (change if change > 0 else 0.0)) / n
        self.avg_loss = (self.avg_loss * (n - 1) + (-change if change < 0 else 0.0)) / n
        total = self.avg_gain + self.avg_loss
        return 100.0 * self.avg_gain / total if total else 50.0


def _walk(rng: random.Random, start: float, steps: int) -> list[float]:
    prices = [start]
    for _ in range(steps - 1):
        prices.append(max(0.01, prices[-1] * (1 + rng.gauss(0, 0.004))))
    return prices


def _symbols(count: int) -> list[str]:
    return [f"S{index:04d}" for index in range(count)]


def build_engine(symbols: list[str], rng: random.Random, start: datetime) -> tuple[TriggerEngine, dict[str, float]]:
    """An engine with 4 triggers per symbol, each symbol warmed up with a price history; returns last prices."""
    engine = TriggerEngine()
    last: dict[str, float] = {}
    for symbol in symbols:
        history = _walk(rng, 100.0, WARM_UP_PRICES)
        stamps = [start + timedelta(seconds=TICK_SPACING_S * i) for i in range(WARM_UP_PRICES)]
        engine.warm_up(symbol, history, stamps)
        last[symbol] = history[-1]
        for number, template in enumerate(TRIGGER_CONDITIONS):
            condition = template.format(threshold=round(history[-1] * 1.002, 2))
            engine.add(TriggerSpec(name=f"{symbol}-{number}", symbol=symbol, condition=condition))
    return engine, last


def tick_batches(
    symbols: list[str], last: dict[str, float], rng: random.Random, start: datetime, batches: int
) -> list[list[Tick]]:
    out: list[list[Tick]] = []
    prices = dict(last)
    for batch in range(batches):
        ts = start + timedelta(seconds=TICK_SPACING_S * (WARM_UP_PRICES + batch))
        ticks = []
        for symbol in symbols:
            prices[symbol] = max(0.01, prices[symbol] * (1 + rng.gauss(0, 0.004)))
            price = round(prices[symbol], 2)
            ticks.append(Tick(symbol=symbol, price=price, last=price, bid=price - 0.01, ask=price + 0.01, ts=ts))
        out.append(ticks)
    return out


def measure_triggers(symbol_count: int, batches: int) -> dict[str, Any]:
    rng = random.Random(42)
    start = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
    symbols = _symbols(symbol_count)
    engine, last = build_engine(symbols, rng, start)
    firing_batches = max(1, batches // 4)
    all_batches = tick_batches(symbols, last, rng, start, batches + firing_batches)
    baseline = [[PurePythonRsi(RSI_PERIOD) for _ in TRIGGER_CONDITIONS] for _ in symbols]
    batch_ms: list[float] = []
    baseline_ms: list[float] = []
    firing_tick_us: list[float] = []
    events = 0
    # Overlay and baseline alternate batch by batch, so a busy moment on the machine hits both alike. A batch
    # goes through `on_ticks`, as the poller hands the engine each poll cycle's ticks.
    for ticks in all_batches[:batches]:
        started = time.perf_counter()
        events += len(engine.on_ticks(ticks))
        batch_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        for tick, rsis in zip(ticks, baseline, strict=True):
            price = tick.price
            for rsi in rsis:
                rsi.update(price)
        baseline_ms.append((time.perf_counter() - started) * 1000)
    # Tick-to-event: the same engine carries on, one `on_tick` call per tick, timed where one fired.
    for ticks in all_batches[batches:]:
        for tick in ticks:
            started = time.perf_counter()
            fired = engine.on_tick(tick)
            if fired:
                firing_tick_us.append((time.perf_counter() - started) * 1e6)
    return {
        "batch_ms": batch_ms,
        "baseline_ms": baseline_ms,
        "firing_tick_us": firing_tick_us,
        "events": events,
        "firing_batches": firing_batches,
        "triggers": symbol_count * len(TRIGGER_CONDITIONS),
    }


class CountingBrokerClient(BrokerClient):
    """A BrokerClient that counts the IB_MCP tool calls it makes, by tool name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()

    async def call(self, tool: str, arguments: dict[str, Any] | None = None) -> Any:
        self.calls[tool] += 1
        return await super().call(tool, arguments)


async def measure_snapshot_cycle(symbol_count: int, cycles: int) -> dict[str, Any]:
    from broker import ib_mcp_tools as ib
    from broker.sim.market import MarketSimulator
    from broker.sim.server import build_sim_server
    from poller.bus import InProcessBus
    from poller.service import Poller
    from poller.sources import IBMCPSource

    symbols = _symbols(symbol_count)
    market = MarketSimulator(symbols, seed=1, advance_on_snapshot=True)
    async with CountingBrokerClient(build_sim_server(market)) as broker:
        engine = TriggerEngine(TriggerSpec(name=f"{s} far", symbol=s, condition="price > 1000000") for s in symbols)
        poller = Poller(IBMCPSource(broker), engine, InProcessBus(), interval_s=1.0)
        await poller.poll_once()
        await broker.quotes(symbols[:1])
        broker.calls.clear()
        cycle_ms: list[float] = []
        for _ in range(cycles):
            started = time.perf_counter()
            await poller.poll_once()
            cycle_ms.append((time.perf_counter() - started) * 1000)
        cycle_calls = dict(broker.calls)
        single_ms: list[float] = []
        for _ in range(cycles):
            started = time.perf_counter()
            await broker.quotes(symbols[:1])
            single_ms.append((time.perf_counter() - started) * 1000)
    return {
        "cycle_ms": cycle_ms,
        "single_ms": single_ms,
        "snapshot_calls_per_cycle": cycle_calls.get(ib.SNAPSHOT, 0) / cycles,
        "calls_per_cycle": sum(cycle_calls.values()) / cycles,
        "ticks": poller.stats.ticks,
        "symbols": symbol_count,
    }


def measure_indicators(prices_count: int) -> dict[str, float]:
    import numpy as np
    import talib

    prices = _walk(random.Random(7), 100.0, prices_count)
    rsi = Rsi(RSI_PERIOD)
    started = time.perf_counter()
    for price in prices:
        rsi.update(price)
    overlay_us = (time.perf_counter() - started) * 1e6 / prices_count

    baseline = PurePythonRsi(RSI_PERIOD)
    started = time.perf_counter()
    for price in prices:
        baseline.update(price)
    pure_us = (time.perf_counter() - started) * 1e6 / prices_count

    array = np.asarray(prices, dtype=float)
    talib.RSI(array, timeperiod=RSI_PERIOD)
    runs: list[float] = []
    for _ in range(20):
        started = time.perf_counter()
        talib.RSI(array, timeperiod=RSI_PERIOD)
        runs.append((time.perf_counter() - started) * 1e6 / prices_count)
    return {"overlay_us": overlay_us, "pure_us": pure_us, "talib_array_us": percentile(runs, 50)}


def figures_from(triggers: dict[str, Any], snapshot: dict[str, Any], indicators: dict[str, float]) -> list[Figure]:
    batch_p50, batch_p99 = p50_p99(triggers["batch_ms"])
    base_p50, base_p99 = p50_p99(triggers["baseline_ms"])
    n_triggers = triggers["triggers"]
    symbols = n_triggers // len(TRIGGER_CONDITIONS)
    figures = [
        Figure(
            f"trigger batch p50 ({symbols} sym × {len(TRIGGER_CONDITIONS)} trig)",
            "ms",
            batch_p50,
            base_p50,
            "ratio",
            TRIGGER_TARGET_RATIO,
            f"baseline = {n_triggers} pure-Python RSI updates; per trigger per tick "
            f"{batch_p50 * 1000 / n_triggers:.2f} µs vs {base_p50 * 1000 / n_triggers:.2f} µs",
        ),
        Figure(f"trigger batch p99 ({symbols} sym × {len(TRIGGER_CONDITIONS)} trig)", "ms", batch_p99, base_p99),
    ]
    if triggers["firing_tick_us"]:
        fire_p50, fire_p99 = p50_p99(triggers["firing_tick_us"])
        per_symbol_baseline = base_p50 * 1000 / symbols
        figures += [
            Figure(
                "tick-to-event p50 (one firing on_tick)",
                "µs",
                fire_p50,
                per_symbol_baseline,
                note=f"{len(triggers['firing_tick_us'])} firing ticks over {triggers['firing_batches']} further "
                f"batches ({triggers['events']} events in the timed batches); baseline = "
                f"{len(TRIGGER_CONDITIONS)} pure-Python RSI updates (one symbol's share of the batch)",
            ),
            Figure("tick-to-event p99 (one firing on_tick)", "µs", fire_p99, per_symbol_baseline),
        ]
    cycle_p50, _ = p50_p99(snapshot["cycle_ms"])
    single_p50, _ = p50_p99(snapshot["single_ms"])
    figures += [
        Figure(
            f"snapshot calls per poll cycle ({snapshot['symbols']} sym)",
            "calls",
            snapshot["snapshot_calls_per_cycle"],
            None,
            "absolute",
            1.0,
            f"all IB_MCP calls per cycle: {snapshot['calls_per_cycle']:g}",
        ),
        Figure(
            f"poll cycle p50 ({snapshot['symbols']} sym) vs 1-sym quote",
            "ms",
            cycle_p50,
            single_p50,
            note="ratio = cost of a 100-symbol cycle (snapshot + parse + triggers) over a 1-symbol snapshot call",
        ),
        Figure(
            "RSI update per tick vs pure-Python",
            "µs",
            indicators["overlay_us"],
            indicators["pure_us"],
        ),
        Figure(
            "RSI update per tick vs TA-Lib array/elem",
            "µs",
            indicators["overlay_us"],
            indicators["talib_array_us"],
            note="TA-Lib computes the whole array in C; per element it is the floor no per-tick Python update reaches",
        ),
    ]
    return figures


async def run(
    symbols: int = 500, batches: int = 200, poll_symbols: int = 100, cycles: int = 50, prices: int = 200_000
) -> list[Figure]:
    triggers = measure_triggers(symbols, batches)
    snapshot = await measure_snapshot_cycle(poll_symbols, cycles)
    indicators = measure_indicators(prices)
    return figures_from(triggers, snapshot, indicators)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--poll-symbols", type=int, default=100)
    parser.add_argument("--cycles", type=int, default=50)
    args = parser.parse_args()
    figures = anyio.run(run, args.symbols, args.batches, args.poll_symbols, args.cycles)
    print_figures("poller", figures)


if __name__ == "__main__":
    main()
