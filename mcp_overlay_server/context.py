"""The compact trading context a model reads in one go (get_context, GET /context)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from workflows.run_types import PendingApproval
from workflows.times import as_utc

if TYPE_CHECKING:
    from broker.models import Position
    from mcp_overlay_server.app import Overlay


class PositionLine(BaseModel):
    symbol: str
    quantity: float
    avg_cost: float
    market_price: float | None
    unrealized_pnl: float | None


class OrderLine(BaseModel):
    client_order_id: str
    workflow_id: str
    symbol: str
    side: str
    quantity: float
    status: str
    broker_order_id: str | None
    filled_quantity: float
    avg_fill_price: float | None
    updated_at: datetime


class RunLine(BaseModel):
    workflow_id: str
    workflow: str
    status: str
    symbol: str | None
    summary: str


class TriggerLine(BaseModel):
    name: str
    symbol: str
    condition: str
    action: str
    enabled: bool


class PollerLine(BaseModel):
    running: bool
    interval_s: float
    symbols: list[str]
    cycles: int
    events: int
    failed_polls: int
    last_poll_at: datetime | None
    last_error: str | None


class TradingContext(BaseModel):
    mode: str
    account_id: str | None
    cash_usd: float | None
    net_liquidation_usd: float | None
    broker: str
    broker_error: str | None
    broker_as_of: datetime | None = Field(
        description="when account, cash, net liquidation and positions were read from IB_MCP (UTC); they are "
        "refreshed in the background every few seconds and right after an order is submitted or filled"
    )
    broker_age_s: float | None = Field(description="seconds since broker_as_of")
    positions: list[PositionLine]
    pending_approvals: list[PendingApproval]
    recent_runs: list[RunLine]
    recent_orders: list[OrderLine]
    risk: dict[str, Any]
    triggers: list[TriggerLine]
    poller: PollerLine
    analyst: str


RECENT_RUNS = 5
RECENT_ORDERS = 10


def _position_lines(positions: list[Position]) -> list[PositionLine]:
    return [
        PositionLine(
            symbol=p.symbol,
            quantity=p.quantity,
            avg_cost=round(p.avg_cost, 4),
            market_price=p.market_price,
            unrealized_pnl=None if p.unrealized_pnl is None else round(p.unrealized_pnl, 2),
        )
        for p in positions
        if p.quantity
    ]


async def build_context(overlay: Overlay) -> TradingContext:
    """The broker part from the background snapshot (its age included), the rest from the store and memory;
    the snapshot and the store's one read run concurrently."""
    broker, (approvals, runs, orders) = await asyncio.gather(
        overlay.broker_snapshot.current(), overlay.store.context_rows(RECENT_RUNS, RECENT_ORDERS)
    )
    stats = overlay.poller.stats
    return TradingContext(
        mode=overlay.settings.trading_mode,
        account_id=broker.account_id,
        cash_usd=broker.summary.cash_usd if broker.summary else None,
        net_liquidation_usd=broker.summary.net_liquidation_usd if broker.summary else None,
        broker=overlay.broker.target_label,
        broker_error=broker.error,
        broker_as_of=broker.as_of,
        broker_age_s=round(broker.age_s, 1),
        positions=_position_lines(broker.positions),
        pending_approvals=await overlay.runner.pending(approvals),
        recent_runs=[
            RunLine(workflow_id=r.workflow_id, workflow=r.workflow, status=r.status, symbol=r.symbol, summary=r.summary)
            for r in runs
        ],
        recent_orders=[
            OrderLine(
                client_order_id=o.client_order_id,
                workflow_id=o.workflow_id,
                symbol=o.symbol,
                side=o.side,
                quantity=o.quantity,
                status=o.status,
                broker_order_id=o.broker_order_id,
                filled_quantity=o.filled_quantity,
                avg_fill_price=o.avg_fill_price,
                updated_at=as_utc(o.updated_at),
            )
            for o in orders
        ],
        risk=overlay.risk.describe(),
        triggers=[
            TriggerLine(name=t.name, symbol=t.symbol, condition=t.condition, action=t.action, enabled=t.enabled)
            for t in overlay.triggers.specs()
        ],
        poller=PollerLine(
            running=overlay.poller.running,
            interval_s=overlay.poller.interval_s,
            symbols=overlay.poller.symbols,
            cycles=stats.cycles,
            events=stats.events,
            failed_polls=stats.failed_polls,
            last_poll_at=stats.last_poll_at,
            last_error=stats.last_error,
        ),
        analyst=overlay.runner.deps.analyst.name,
    )
