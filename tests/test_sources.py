"""Price sources (replay, simulator, IB_MCP through the simulated IB_MCP, TWS tick conversion) and the
Poller loop around a source that fails for a while."""

from __future__ import annotations

import csv
import math
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from ib_async import IB, Stock, Ticker

from broker.client import BrokerClient
from broker.sim.market import MarketSimulator
from broker.sim.server import build_sim_server
from poller.bus import InProcessBus
from poller.events import Tick
from poller.price_cache import SQLitePriceCache
from poller.service import Poller
from poller.sources import IBMCPSource, ReplaySource, SimulatorSource
from poller.triggers import TriggerEngine, TriggerSpec
from poller.tws_source import TWSSource, tick_from_ticker

DATA = Path(__file__).parent / "data"
AAPL_CSV = DATA / "aapl_synthetic_daily.csv"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return [{key.lower(): value for key, value in row.items()} for row in csv.DictReader(handle)]


# --- replay ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_replay_yields_the_csv_closes_in_order_then_nothing() -> None:
    rows = _csv_rows(AAPL_CSV)
    source = ReplaySource.from_csv(AAPL_CSV)
    ticks: list[Tick] = []
    for _ in range(len(rows)):
        ticks.extend(await source.poll(["AAPL"]))
    assert source.exhausted
    assert await source.poll(["AAPL"]) == []
    assert [tick.price for tick in ticks] == [float(row["close"]) for row in rows]
    assert [tick.volume for tick in ticks] == [float(row["volume"]) for row in rows]
    assert [tick.bar_id for tick in ticks] == [row["date"] for row in rows]
    assert ticks[0].ts == datetime.fromisoformat(rows[0]["date"]).replace(tzinfo=UTC)
    assert {tick.symbol for tick in ticks} == {"AAPL"}


@pytest.mark.anyio
async def test_replay_of_a_file_without_symbol_column_and_several_symbols(tmp_path: Path) -> None:
    single = ReplaySource.from_csv(DATA / "poller_goog_daily.csv", symbol="goog")
    first, second = await single.poll(["GOOG"]), await single.poll(["GOOG"])
    assert single.symbols == ["GOOG"]
    assert [tick.price for tick in first + second] == [100.34, 108.31]

    mixed = tmp_path / "mixed.csv"
    mixed.write_text(
        "date,symbol,open,high,low,close,volume\n"
        "2024-01-02T14:30:00,AAPL,1,1,1,10.5,100\n"
        "2024-01-02T14:30:00,MSFT,1,1,1,20.5,200\n"
        "2024-01-02T14:31:00,AAPL,1,1,1,11.5,300\n"
    )
    source = ReplaySource.from_csv(mixed)
    polls = [await source.poll(["AAPL", "MSFT", "TSLA"]) for _ in range(3)]
    assert [[(tick.symbol, tick.price) for tick in ticks] for ticks in polls] == [
        [("AAPL", 10.5), ("MSFT", 20.5)],
        [("AAPL", 11.5)],
        [],
    ]
    assert polls[1][0].bar_id == "2024-01-02T14:31:00+00:00"


# --- simulator and IB_MCP -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_simulator_source_reads_the_market_and_leaves_out_halted_and_unknown_symbols() -> None:
    market = MarketSimulator(["AAPL", "MSFT"], seed=3, clock=lambda: 1_700_000_000.0)
    market.halted_symbols.add("MSFT")
    source = SimulatorSource(market)
    (tick,) = await source.poll(["AAPL", "MSFT", "NOPE"])
    quote = market.quote("AAPL")
    assert market.steps == 1
    assert (tick.symbol, tick.price) == ("AAPL", float(quote.last))
    assert (tick.bid, tick.ask) == (float(quote.bid), float(quote.ask))
    assert tick.ts == datetime.fromtimestamp(1_700_000_000, UTC)


@pytest.mark.anyio
async def test_ib_mcp_source_skips_the_empty_first_snapshot_then_gives_the_prices() -> None:
    market = MarketSimulator(["AAPL", "TSLA"], seed=5, empty_first_snapshot=True)
    async with BrokerClient(build_sim_server(market)) as broker:
        source = IBMCPSource(broker)
        first = await source.poll(["AAPL", "TSLA"])
        second = await source.poll(["AAPL", "TSLA"])
    assert first == []
    assert {tick.symbol: tick.price for tick in second} == {
        "AAPL": float(market.quote("AAPL").last),
        "TSLA": float(market.quote("TSLA").last),
    }


# --- TWS (no TWS here: construction, tick conversion and a refused connection) ---------------------


def _ticker(symbol: str = "AAPL", **values: float) -> Ticker:
    """A Ticker filled the way ib_async's wrapper fills one (its constructor resets every price to unset)."""
    ticker = Ticker(contract=Stock(symbol, "SMART", "USD"), time=datetime(2026, 3, 2, 15, 0, tzinfo=UTC))
    for name, value in values.items():
        setattr(ticker, name, value)
    return ticker


def test_ticks_from_ib_async_tickers() -> None:
    traded = tick_from_ticker(_ticker(last=190.5, bid=190.4, ask=190.6, bidSize=100, askSize=200, volume=12_000))
    assert traded == Tick(
        symbol="AAPL",
        price=190.5,
        ts=datetime(2026, 3, 2, 15, 0, tzinfo=UTC),
        bid=190.4,
        ask=190.6,
        last=190.5,
        volume=12_000,
    )
    quoted_only = tick_from_ticker(_ticker(bid=10.0, ask=10.2, bidSize=1, askSize=1))
    assert quoted_only is not None
    assert math.isclose(quoted_only.price, 10.1)
    assert quoted_only.last is None
    no_bid = tick_from_ticker(_ticker(last=5.0, bid=-1, ask=5.1, bidSize=0, askSize=3))
    assert no_bid is not None
    assert (no_bid.price, no_bid.bid) == (5.0, None)
    assert tick_from_ticker(_ticker()) is None
    assert tick_from_ticker(_ticker(last=5.0, halted=1)) is None
    no_contract = Ticker()
    no_contract.last = 5.0
    assert tick_from_ticker(no_contract) is None


@pytest.mark.anyio
async def test_tws_source_buffers_streamed_tickers_and_raises_when_tws_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    source = TWSSource("127.0.0.1", closed_port, client_id=7, connect_timeout_s=2)
    assert isinstance(source.ib, IB)
    assert not source.ib.isConnected()

    source.ib.pendingTickersEvent.emit({_ticker("AAPL", last=1.0), _ticker("MSFT", last=2.0), _ticker("TSLA")})
    assert [(tick.symbol, tick.price) for tick in source.take_ticks(["aapl"])] == [("AAPL", 1.0)]
    assert source.take_ticks(["AAPL", "MSFT"]) == []

    with pytest.raises(ConnectionRefusedError):
        await source.poll(["AAPL"])
    await source.aclose()


# --- the Poller loop around a failing source ------------------------------------------------------


class FlakySource:
    """Raises for its first `failures` polls (the process behind it is down), then yields one rising price."""

    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def poll(self, symbols: Sequence[str]) -> list[Tick]:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"source down (call {self.calls})")
        return [Tick(symbol=symbol, price=100.0 + self.calls) for symbol in symbols]


@pytest.mark.anyio
async def test_poller_survives_a_source_that_fails_then_recovers(tmp_path: Path) -> None:
    engine = TriggerEngine([TriggerSpec(name="up", symbol="AAPL", condition="price > 105")])
    bus = InProcessBus()
    cache = SQLitePriceCache(tmp_path / "prices.db")
    poller = Poller(FlakySource(failures=3), engine, bus, interval_s=0.001, symbols=["AAPL"], price_cache=cache)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(poller.run)
        with anyio.fail_after(10):
            while True:
                if poller.stats.events:
                    break
                await anyio.sleep(0.005)
        assert poller.running
        tasks.cancel_scope.cancel()
    stats = poller.stats
    assert not poller.running
    assert stats.failed_polls == 3
    assert stats.missed_polls >= 3
    assert stats.consecutive_failures == 0
    assert stats.last_error is None
    assert stats.fired_by_trigger == {"up": 1}
    assert bus.backlog == 1
    recent = await cache.recent("AAPL")
    await cache.aclose()
    assert [price for _, price in recent][:3] == [104.0, 105.0, 106.0]
