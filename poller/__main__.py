"""`python -m poller`: the price poller as its own process (see poller.process for the environment variables).

    python -m poller --config poller.yaml                                   # IB_MCP snapshots
    python -m poller --config poller.yaml --source replay --bars AAPL.csv   # recorded bars, as fast as polled
    EVENT_BUS=redis REDIS_URL=redis://127.0.0.1:6379/0 python -m poller --source tws

Exits 0 on SIGTERM/SIGINT, 2 for a configuration it cannot run with.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import get_args

import anyio

from poller.config import ConfigError, load_config
from poller.process import PollerProcessOptions, SourceKind, run_poller


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m poller", description="Poll prices, fire triggers, publish events.")
    parser.add_argument("--config", type=Path, help="the poller YAML (default: $POLLER_CONFIG)")
    parser.add_argument("--source", choices=get_args(SourceKind), default="ib_mcp", help="where prices come from")
    parser.add_argument("--bars", type=Path, help="CSV of OHLCV bars for --source replay")
    parser.add_argument("--symbol", help="the symbol of a --bars file without a symbol column (default: file name)")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"), help="default: $LOG_LEVEL or INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config_path = args.config or (Path(os.environ["POLLER_CONFIG"]) if os.environ.get("POLLER_CONFIG") else None)
    if config_path is None:
        parser.error("no configuration: pass --config FILE or set POLLER_CONFIG (see poller/config.example.yaml)")
    if args.source == "replay" and args.bars is None:
        parser.error("--source replay needs --bars FILE.csv")
    try:
        config = load_config(config_path)
        options = PollerProcessOptions.from_env(
            os.environ, source=args.source, bars_path=args.bars, bars_symbol=args.symbol
        )
    except (ConfigError, ValueError) as exc:
        parser.exit(2, f"python -m poller: {exc}\n")
    anyio.run(run_poller, config, options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
