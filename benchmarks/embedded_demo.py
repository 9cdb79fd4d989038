"""The embedded mode as one process, for footprint measurements: simulated IB_MCP, overlay, poller and the
streamable HTTP server, polling `--symbols` symbols every `--interval` seconds. Prints "ready <url>" once
serving, then runs until killed.

`--sim-only` serves just the simulated IB_MCP (the same market) over HTTP and prints "ready <url>";
`--broker-url <url>` runs the overlay against it instead of an in-process simulator, so the overlay's own
memory can be told from the simulator's. `--tracemalloc-at 120,480` traces Python allocations from the start
and writes a snapshot into the data directory at each of those seconds after "ready";
`python -m benchmarks.memory_diff A B` shows what grew.

    python -m benchmarks.embedded_demo --data-dir /tmp/x [--symbols 50] [--interval 1] [--broker-url URL]
                                       [--tracemalloc-at S,S]
    python -m benchmarks.embedded_demo --sim-only [--symbols 50]
"""

from __future__ import annotations

import argparse
import tracemalloc
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from broker.sim.market import MarketSimulator, StartingPosition
from broker.sim.prices import WalkSettings
from mcp_overlay_server.demo import AAPL_START_USD, demo_poller_config
from poller.config import PollerConfig
from poller.triggers import TriggerSpec

if TYPE_CHECKING:
    from mcp_overlay_server.app import Overlay


def footprint_symbols(count: int) -> list[str]:
    demo = demo_poller_config().symbols
    return [*demo, *(f"SIM{index:03d}" for index in range(count - len(demo)))]


def footprint_config(symbols: list[str], interval_s: float) -> PollerConfig:
    """The demo's triggers plus one indicator trigger per symbol, so every tick feeds indicators."""
    demo = demo_poller_config()
    watch = [
        TriggerSpec(name=f"{symbol} surge", symbol=symbol, condition="percent_change_5min > 25") for symbol in symbols
    ]
    return PollerConfig(interval_seconds=interval_s, symbols=symbols, triggers=[*demo.triggers, *watch])


TRACEBACK_FRAMES = 12


async def dump_snapshots(data_dir: Path, at_s: Sequence[float]) -> None:
    """Write a tracemalloc snapshot at each of `at_s` seconds from now."""
    started = anyio.current_time()
    for moment in sorted(at_s):
        await anyio.sleep(max(0.0, started + moment - anyio.current_time()))
        path = data_dir / f"tracemalloc-{moment:.0f}s.snap"
        tracemalloc.take_snapshot().dump(str(path))
        print(f"snapshot {path}", flush=True)


def footprint_market(symbols: list[str]) -> MarketSimulator:
    return MarketSimulator(
        symbols,
        seed=7,
        walks={"AAPL": WalkSettings(start_price_usd=AAPL_START_USD, volatility_pct=0.01)},
        positions=[StartingPosition("AAPL", Decimal(50), Decimal(180))],
        advance_on_snapshot=True,
    )


@asynccontextmanager
async def open_footprint_overlay(
    data_dir: Path, symbols: list[str], interval_s: float, broker_url: str | None
) -> AsyncIterator[Overlay]:
    """The overlay polling `symbols`, over an in-process simulator, or over the IB_MCP at `broker_url`."""
    from benchmarks.harness import open_sim_overlay, overlay_settings
    from mcp_overlay_server.app import open_overlay

    config = footprint_config(symbols, interval_s)
    if broker_url is None:
        async with open_sim_overlay(
            data_dir, market=footprint_market(symbols), poller_config=config, run_poller=True
        ) as (overlay, _):
            yield overlay
        return
    async with open_overlay(overlay_settings(data_dir), poller_config=config, target=broker_url) as overlay:
        yield overlay


async def serve_sim(symbol_count: int) -> None:
    from broker.sim.server import serve_sim_http

    async with serve_sim_http(footprint_market(footprint_symbols(symbol_count))) as url:
        print(f"ready {url}", flush=True)
        await anyio.sleep_forever()


async def serve(
    data_dir: Path,
    symbol_count: int,
    interval_s: float,
    broker_url: str | None = None,
    snapshots_at_s: Sequence[float] = (),
) -> None:
    from mcp_overlay_server.http import build_http_app, serve_http
    from mcp_overlay_server.server import build_server

    symbols = footprint_symbols(symbol_count)
    async with open_footprint_overlay(data_dir, symbols, interval_s, broker_url) as overlay:
        app = build_http_app(overlay, build_server(overlay), "footprint-token", "127.0.0.1")
        async with serve_http(app, "127.0.0.1", 0) as url:
            print(f"ready {url}", flush=True)
            if snapshots_at_s:
                await dump_snapshots(data_dir, snapshots_at_s)
            await anyio.sleep_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--sim-only", action="store_true", help="serve only the simulated IB_MCP over HTTP")
    parser.add_argument("--broker-url", help="IB_MCP (e.g. a --sim-only process) instead of an in-process simulator")
    parser.add_argument("--tracemalloc-at", help="comma-separated seconds after ready: dump a tracemalloc snapshot")
    args = parser.parse_args()
    if args.sim_only:
        anyio.run(serve_sim, args.symbols)
        return
    if args.data_dir is None:
        parser.error("--data-dir is required (unless --sim-only)")
    snapshots_at_s = [float(s) for s in args.tracemalloc_at.split(",")] if args.tracemalloc_at else []
    if snapshots_at_s:
        tracemalloc.start(TRACEBACK_FRAMES)
    anyio.run(serve, args.data_dir, args.symbols, args.interval, args.broker_url, snapshots_at_s)


if __name__ == "__main__":
    main()
