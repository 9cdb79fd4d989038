"""The embedded mode as one process, for footprint measurements: simulated IB_MCP, overlay, poller and the
streamable HTTP server, polling `--symbols` symbols every `--interval` seconds. Prints "ready <url>" once
serving, then runs until killed.

    python -m benchmarks.embedded_demo --data-dir /tmp/x [--symbols 50] [--interval 1]
"""

from __future__ import annotations

import argparse
from decimal import Decimal
from pathlib import Path

import anyio

from broker.sim.market import MarketSimulator, StartingPosition
from broker.sim.prices import WalkSettings
from mcp_overlay_server.demo import AAPL_START_USD, demo_poller_config
from poller.config import PollerConfig
from poller.triggers import TriggerSpec


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


async def serve(data_dir: Path, symbol_count: int, interval_s: float) -> None:
    from benchmarks.harness import open_sim_overlay
    from mcp_overlay_server.http import build_http_app, serve_http
    from mcp_overlay_server.server import build_server

    symbols = footprint_symbols(symbol_count)
    market = MarketSimulator(
        symbols,
        seed=7,
        walks={"AAPL": WalkSettings(start_price_usd=AAPL_START_USD, volatility_pct=0.01)},
        positions=[StartingPosition("AAPL", Decimal(50), Decimal(180))],
        advance_on_snapshot=True,
    )
    async with open_sim_overlay(
        data_dir, market=market, poller_config=footprint_config(symbols, interval_s), run_poller=True
    ) as (overlay, _):
        app = build_http_app(overlay, build_server(overlay), "footprint-token", "127.0.0.1")
        async with serve_http(app, "127.0.0.1", 0) as url:
            print(f"ready {url}", flush=True)
            await anyio.sleep_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    anyio.run(serve, args.data_dir, args.symbols, args.interval)


if __name__ == "__main__":
    main()
