"""`python -m broker.sim`: run the simulated IB_MCP over streamable HTTP (default) or stdio.

python -m broker.sim --port 5002 --symbols AAPL,TSLA --drift AAPL=0.02 --position AAPL=10@150
python -m broker.sim --stdio --bars tests/data/AAPL_daily.csv --tick-interval 0
"""

from __future__ import annotations

import argparse
import signal
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

import anyio

from broker.sim.market import DEFAULT_ACCOUNT_ID, DEFAULT_CASH_USD, MarketSimulator, StartingPosition
from broker.sim.prices import Bar, WalkSettings, load_bars_csv
from broker.sim.server import build_sim_server, run_alongside_clock, serve_sim_http

IB_MCP_DEFAULT_PORT = 5002


def _drift(text: str) -> tuple[str, float]:
    symbol, sep, pct = text.partition("=")
    try:
        if not sep:
            raise ValueError(text)
        return symbol.strip().upper(), float(pct)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected SYMBOL=PCT (drift per step in percent), got {text!r}") from exc


def _position(text: str) -> StartingPosition:
    symbol, sep, rest = text.partition("=")
    quantity, at, cost = rest.partition("@")
    try:
        if not (sep and at):
            raise ValueError(text)
        return StartingPosition(symbol.strip().upper(), Decimal(quantity), Decimal(cost))
    except (ValueError, InvalidOperation) as exc:
        raise argparse.ArgumentTypeError(f"expected SYMBOL=QTY@COST, got {text!r}") from exc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m broker.sim", description="A simulated IB_MCP (paper trading).")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=IB_MCP_DEFAULT_PORT, help="port (default 5002, as IB_MCP; 0 = free)"
    )
    parser.add_argument("--stdio", action="store_true", help="serve MCP over stdin/stdout instead of HTTP")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the price walks and ids")
    parser.add_argument("--symbols", default="", help="comma-separated symbols (default AAPL,MSFT,TSLA,SPY,NVDA,QQQ)")
    parser.add_argument("--bars", type=Path, action="append", default=[], help="CSV of bars to replay (repeatable)")
    parser.add_argument(
        "--tick-interval", type=float, default=1.0, help="seconds between market steps (default 1.0; 0 = never)"
    )
    parser.add_argument("--drift", type=_drift, action="append", default=[], help="SYMBOL=PCT drift per step")
    parser.add_argument("--position", type=_position, action="append", default=[], help="SYMBOL=QTY@COST")
    parser.add_argument("--cash", type=Decimal, default=DEFAULT_CASH_USD, help="starting cash in USD")
    parser.add_argument("--account", default=DEFAULT_ACCOUNT_ID, help="paper account id (DU...)")
    parser.add_argument("--advance-on-snapshot", action="store_true", help="step the market once per snapshot")
    parser.add_argument(
        "--empty-first-snapshot", action="store_true", help="answer a conid's first snapshot without prices"
    )
    return parser


def build_market(args: argparse.Namespace) -> MarketSimulator:
    bars: dict[str, list[Bar]] = {}
    for path in args.bars:
        bars.update(load_bars_csv(path))
    symbols = [symbol for symbol in args.symbols.split(",") if symbol.strip()] or None
    return MarketSimulator(
        symbols,
        seed=args.seed,
        walks={symbol: WalkSettings(drift_pct=pct) for symbol, pct in args.drift},
        bars=bars,
        account_id=args.account,
        cash_usd=args.cash,
        positions=args.position,
        advance_on_snapshot=args.advance_on_snapshot,
        empty_first_snapshot=args.empty_first_snapshot,
    )


async def _serve_stdio(market: MarketSimulator, tick_interval_s: float) -> None:
    server = build_sim_server(market)
    symbols = ",".join(instrument.symbol for instrument in market.instruments)
    print(f"simulated IB_MCP ready on stdio (account {market.account_id}, {symbols})", file=sys.stderr, flush=True)
    await run_alongside_clock(market, tick_interval_s, server.run_stdio_async)


async def _serve_http(market: MarketSimulator, host: str, port: int, tick_interval_s: float) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as stop_signals:
        async with serve_sim_http(market, host, port, tick_interval_s=tick_interval_s) as url:
            print(f"simulated IB_MCP listening on {url}", flush=True)
            async for _ in stop_signals:
                break


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    market = build_market(args)
    try:
        if args.stdio:
            anyio.run(_serve_stdio, market, args.tick_interval)
        else:
            anyio.run(_serve_http, market, args.host, args.port, args.tick_interval)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
