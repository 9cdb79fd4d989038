"""Shared set-up: an overlay backed by the simulated IB_MCP in-process, and the environment for subprocesses.

Everything lives in a temporary data directory; pacing is off (the simulator has no IB rate limits) and the
market is always open, so the numbers measure the overlay and not the waiting.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from broker.sim.market import MarketSimulator
from mcp_overlay_server.app import Overlay, open_overlay
from mcp_overlay_server.demo import demo_market, demo_poller_config
from mcp_overlay_server.settings import OverlaySettings
from poller.config import PollerConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def overlay_settings(data_dir: Path) -> OverlaySettings:
    return OverlaySettings(
        data_dir=data_dir,
        database_url=None,
        market_calendar="always",
        anthropic_api_key=None,
        max_order_notional_usd=10_000,
        ib_pacing="off",
        scan_cron=None,
    )


@asynccontextmanager
async def open_sim_overlay(
    data_dir: Path,
    *,
    market: MarketSimulator | None = None,
    poller_config: PollerConfig | None = None,
    run_poller: bool = False,
) -> AsyncIterator[tuple[Overlay, MarketSimulator]]:
    """The overlay over an in-process simulated IB_MCP (the demo's market unless `market` is given)."""
    from broker.sim.server import build_sim_server

    market = market or demo_market()
    async with open_overlay(
        overlay_settings(data_dir),
        poller_config=poller_config or demo_poller_config(),
        target=build_sim_server(market),
        run_poller=run_poller,
    ) as overlay:
        yield overlay, market


def subprocess_env(data_dir: Path) -> dict[str, str]:
    """The environment of an `ib-overlay` subprocess: this checkout importable, data in `data_dir`, no secrets."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ANTHROPIC_", "CLAUDE_", "DATABASE_URL", "OVERLAY_", "IB_", "POLLER_"))
    }
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        OVERLAY_DATA_DIR=str(data_dir),
        IB_PACING="off",
        MARKET_CALENDAR="always",
        MAX_ORDER_NOTIONAL_USD="10000",
    )
    return env
