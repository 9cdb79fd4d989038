"""Streaming quotes straight from TWS / IB Gateway through ib_async (the `tws` extra; ib_insync works too).

Instead of one snapshot per cycle, each symbol is subscribed once (`reqMktData`) and every update TWS
pushes becomes a Tick. `poll()` hands over the ticks that arrived since the previous poll, oldest first,
so the Poller's loop, trigger engine and bus stay the same; a short POLL_INTERVAL makes it near real time.
A lost connection is re-opened (and the subscriptions renewed) by the next poll; while TWS is away
`poll()` raises and the Poller backs off.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime

from poller.events import Tick

try:
    import ib_async as ib_api
except ImportError:  # ib_insync is the older name of the same library
    try:
        import ib_insync as ib_api  # type: ignore[no-redef]
    except ImportError as exc:
        raise ImportError("the TWS source needs ib_async: pip install 'ib-mcp-overlay[tws]'") from exc

log = logging.getLogger(__name__)

DEFAULT_CLIENT_ID = 17
# 1 live, 2 frozen, 3 delayed, 4 delayed-frozen (reqMarketDataType).
LIVE_DATA = 1


def _number(value: float | None) -> float | None:
    """ib_async marks a missing value as NaN, and IB sends -1 for a price it does not have."""
    if value is None or math.isnan(value) or value == -1:
        return None
    return float(value)


def tick_from_ticker(ticker: ib_api.Ticker) -> Tick | None:
    """The Tick for an ib_async Ticker, or None when it has no usable price yet or trading is halted."""
    contract = ticker.contract
    if contract is None or not contract.symbol:
        return None
    halted = _number(ticker.halted)
    if halted is not None and halted > 0:
        return None
    price = _number(ticker.marketPrice())
    if price is None:
        return None
    stamp = ticker.time or datetime.now(UTC)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return Tick(
        symbol=contract.symbol.upper(),
        price=price,
        ts=stamp,
        bid=_number(ticker.bid),
        ask=_number(ticker.ask),
        last=_number(ticker.last),
        volume=_number(ticker.volume),
    )


class TWSSource:
    """Quotes streamed by TWS / IB Gateway at `host:port` (IB_GATEWAY_HOST / IB_GATEWAY_PORT)."""

    name = "tws"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 4002,
        *,
        client_id: int = DEFAULT_CLIENT_ID,
        market_data_type: int = LIVE_DATA,
        exchange: str = "SMART",
        currency: str = "USD",
        connect_timeout_s: float = 10.0,
        max_buffered_ticks: int = 100_000,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.market_data_type = market_data_type
        self.exchange = exchange
        self.currency = currency
        self.connect_timeout_s = connect_timeout_s
        self.ib = ib_api.IB()
        self.ib.pendingTickersEvent += self._on_pending_tickers
        self._ticks: deque[Tick] = deque(maxlen=max_buffered_ticks)
        self._subscribed: set[str] = set()
        self._unknown: set[str] = set()

    async def poll(self, symbols: Sequence[str]) -> list[Tick]:
        if not self.ib.isConnected():
            await self._connect()
        await self._subscribe([symbol.upper() for symbol in symbols])
        return self.take_ticks(symbols)

    def take_ticks(self, symbols: Sequence[str]) -> list[Tick]:
        """The buffered ticks of `symbols`, oldest first; the buffer is emptied."""
        wanted = {symbol.upper() for symbol in symbols}
        ticks = [tick for tick in self._ticks if tick.symbol in wanted]
        self._ticks.clear()
        return ticks

    async def _connect(self) -> None:
        self._subscribed.clear()
        await self.ib.connectAsync(self.host, self.port, clientId=self.client_id, timeout=self.connect_timeout_s)
        self.ib.reqMarketDataType(self.market_data_type)
        log.info("connected to TWS at %s:%d as client %d", self.host, self.port, self.client_id)

    async def _subscribe(self, symbols: list[str]) -> None:
        new = [symbol for symbol in symbols if symbol not in self._subscribed and symbol not in self._unknown]
        if not new:
            return
        contracts = [ib_api.Stock(symbol, self.exchange, self.currency) for symbol in new]
        qualified = await self.ib.qualifyContractsAsync(*contracts)
        # ib_async answers position by position (None when unknown), ib_insync leaves unknown ones out.
        by_symbol = {contract.symbol: contract for contract in qualified if isinstance(contract, ib_api.Contract)}
        for symbol in new:
            contract = by_symbol.get(symbol)
            if contract is None:
                self._unknown.add(symbol)
                log.warning("TWS knows no single %s stock for %s; it is not watched", self.currency, symbol)
                continue
            self.ib.reqMktData(contract)
            self._subscribed.add(symbol)

    def _on_pending_tickers(self, tickers: set[ib_api.Ticker]) -> None:
        for ticker in tickers:
            tick = tick_from_ticker(ticker)
            if tick is not None:
                self._ticks.append(tick)

    async def aclose(self) -> None:
        if self.ib.isConnected():
            self.ib.disconnect()
