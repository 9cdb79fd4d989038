"""Read-only views shared by the tools, the resources and the REST endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel

from poller.triggers import TriggerSpec
from workflows.run_types import RunView

if TYPE_CHECKING:
    from mcp_overlay_server.app import Overlay

MARKET_SCAN = "market_scan"
SCAN_SEARCH_LIMIT = 200


class TriggerView(BaseModel):
    spec: TriggerSpec
    disabled_reason: str | None
    fired: int


class TriggerList(BaseModel):
    triggers: list[TriggerView]
    polled_symbols: list[str]


class PricePointView(BaseModel):
    ts: datetime
    price: float


class PriceHistory(BaseModel):
    symbol: str
    points: list[PricePointView]
    indicators: dict[str, float | None]
    source: str


class LatestScan(BaseModel):
    run: RunView | None
    message: str


def trigger_list(overlay: Overlay) -> TriggerList:
    reasons = overlay.triggers.disabled_reasons()
    fired = overlay.poller.stats.fired_by_trigger
    return TriggerList(
        triggers=[
            TriggerView(spec=spec, disabled_reason=reasons.get(spec.name), fired=fired.get(spec.name, 0))
            for spec in overlay.triggers.specs()
        ],
        polled_symbols=overlay.poller.symbols,
    )


async def price_history(overlay: Overlay, symbol: str, points: int) -> PriceHistory:
    """The poller's recent prices of `symbol`, oldest first, and its indicators as of the last tick."""
    symbol = symbol.strip().upper()
    cache = overlay.poller.price_cache
    recent = await cache.recent(symbol, points) if cache is not None else []
    return PriceHistory(
        symbol=symbol,
        points=[PricePointView(ts=ts, price=price) for ts, price in recent],
        indicators=overlay.triggers.indicator_values(symbol),
        source=(
            "the poller's price cache"
            if cache is not None
            else "no price cache is configured for the poller; only indicator values are known"
        ),
    )


async def latest_scan(overlay: Overlay) -> LatestScan:
    for run in await overlay.store.list_runs(limit=SCAN_SEARCH_LIMIT):
        if run.workflow == MARKET_SCAN:
            return LatestScan(run=await overlay.runner.status(run.workflow_id), message=run.summary)
    return LatestScan(run=None, message="no market scan has run yet; run_market_scan starts one")
