"""Price sources: each turns one poll into Ticks.

- `IBMCPSource`: IB_MCP's snapshot tool, one batched call per cycle (live use).
- `ReplaySource`: recorded OHLCV bars, one bar per symbol per poll, as fast as it is polled (backtests, demos).
- `SimulatorSource`: straight from a `MarketSimulator`, no MCP in between (fast tests and benchmarks).
- `TWSSource` (poller.tws_source, extra `tws`): streaming ticks from TWS / IB Gateway through ib_async.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from broker.client import BrokerClient
from broker.sim.market import MarketSimulator
from broker.sim.prices import Bar, load_bars_csv
from poller.events import Tick

log = logging.getLogger(__name__)


class QuoteSource(Protocol):
    name: str

    async def poll(self, symbols: Sequence[str]) -> list[Tick]: ...


class IBMCPSource:
    """IB_MCP's snapshot tool: one batched call per cycle; symbols without a price yet are left out."""

    name = "ib_mcp"

    def __init__(self, broker: BrokerClient) -> None:
        self.broker = broker

    async def poll(self, symbols: Sequence[str]) -> list[Tick]:
        quotes = await self.broker.quotes(symbols)
        ticks: list[Tick] = []
        for quote in quotes.values():
            price = quote.price
            if price is None or quote.halted:
                continue
            ticks.append(
                Tick(
                    symbol=quote.symbol,
                    price=price,
                    ts=quote.ts,
                    bid=quote.bid,
                    ask=quote.ask,
                    last=quote.last,
                    volume=quote.volume,
                )
            )
        return ticks


def _bar_time(bar: Bar) -> datetime:
    return datetime.fromtimestamp(bar.ts_ms / 1000, UTC)


def _bar_id(stamp: datetime) -> str:
    """The bar's date as the CSV gave it: `2024-01-02` for a daily bar, the full ISO time for an intraday one."""
    if stamp.hour == stamp.minute == stamp.second == stamp.microsecond == 0:
        return stamp.date().isoformat()
    return stamp.isoformat()


class ReplaySource:
    """Recorded bars: each poll yields, for each polled symbol, its next bar's close as a Tick.

    The tick's `ts` is the bar's time, so time-based indicators and cooldowns behave as they did then.
    A symbol whose bars are used up yields nothing more; `exhausted` says when every symbol is done.
    """

    name = "replay"

    def __init__(self, bars: Mapping[str, Sequence[Bar]]) -> None:
        self._bars = {symbol.upper(): sorted(recorded, key=lambda bar: bar.ts_ms) for symbol, recorded in bars.items()}
        self._next_index = dict.fromkeys(self._bars, 0)
        self._unknown_reported: set[str] = set()

    @classmethod
    def from_csv(cls, path: str | Path, symbol: str | None = None) -> ReplaySource:
        """Bars from a CSV (date, open, high, low, close, volume, optional symbol); see `load_bars_csv`."""
        bars = load_bars_csv(path, symbol)
        if not bars:
            raise ValueError(f"{path} holds no bars")
        return cls(bars)

    @property
    def symbols(self) -> list[str]:
        return sorted(self._bars)

    @property
    def exhausted(self) -> bool:
        return all(self._next_index[symbol] >= len(bars) for symbol, bars in self._bars.items())

    async def poll(self, symbols: Sequence[str]) -> list[Tick]:
        ticks: list[Tick] = []
        for symbol in symbols:
            symbol = symbol.upper()
            bars = self._bars.get(symbol)
            if bars is None:
                if symbol not in self._unknown_reported:
                    self._unknown_reported.add(symbol)
                    log.warning("the replay has no bars for %s; it replays %s", symbol, ", ".join(self.symbols))
                continue
            index = self._next_index[symbol]
            if index >= len(bars):
                continue
            self._next_index[symbol] = index + 1
            bar = bars[index]
            stamp = _bar_time(bar)
            close = float(bar.close)
            ticks.append(
                Tick(symbol=symbol, price=close, last=close, ts=stamp, volume=float(bar.volume), bar_id=_bar_id(stamp))
            )
        return ticks


class SimulatorSource:
    """Quotes read straight from a MarketSimulator; with `step` (default) each poll first moves the market one step.

    Halted symbols and symbols the simulator does not trade yield no tick. `ts` is the simulator's clock.
    """

    name = "simulator"

    def __init__(self, market: MarketSimulator, *, step: bool = True) -> None:
        self.market = market
        self.step = step

    async def poll(self, symbols: Sequence[str]) -> list[Tick]:
        if self.step:
            self.market.step()
        stamp = datetime.fromtimestamp(self.market.now_ms() / 1000, UTC)
        ticks: list[Tick] = []
        for symbol in symbols:
            if self.market.instrument_by_symbol(symbol) is None:
                continue
            quote = self.market.quote(symbol)
            if quote.halted:
                continue
            last = float(quote.last)
            ticks.append(
                Tick(
                    symbol=quote.symbol,
                    price=last,
                    ts=stamp,
                    bid=float(quote.bid),
                    ask=float(quote.ask),
                    last=last,
                    volume=float(quote.volume),
                )
            )
        return ticks
