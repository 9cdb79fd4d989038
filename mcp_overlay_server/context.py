"""The compact trading context a model reads in one go (get_context, GET /context)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from broker.errors import BrokerError
from workflows.runner import PendingApproval
from workflows.store import as_utc

if TYPE_CHECKING:
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
    positions: list[PositionLine]
    pending_approvals: list[PendingApproval]
    recent_runs: list[RunLine]
    recent_orders: list[OrderLine]
    risk: dict[str, Any]
    triggers: list[TriggerLine]
    poller: PollerLine
    analyst: str


async def _broker_part(overlay: Overlay) -> tuple[str | None, Any, list[PositionLine], str | None]:
    try:
        account_id = await overlay.runner.deps.trading_account()
        summary, positions = await asyncio.gather(
            overlay.broker.account_summary(account_id), overlay.broker.positions(account_id)
        )
    except BrokerError as exc:
        return None, None, [], str(exc)
    lines = [
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
    return account_id, summary, lines, None


async def build_context(overlay: Overlay) -> TradingContext:
    account_id, summary, positions, broker_error = await _broker_part(overlay)
    stats = overlay.poller.stats
    return TradingContext(
        mode=overlay.settings.trading_mode,
        account_id=account_id,
        cash_usd=summary.cash_usd if summary else None,
        net_liquidation_usd=summary.net_liquidation_usd if summary else None,
        broker=overlay.broker.target_label,
        broker_error=broker_error,
        positions=positions,
        pending_approvals=await overlay.runner.pending(),
        recent_runs=[
            RunLine(
                workflow_id=r.workflow_id,
                workflow=r.workflow,
                status=r.status,
                symbol=r.symbol,
                summary=r.summary,
            )
            for r in await overlay.store.list_runs(limit=5)
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
            for o in await overlay.store.orders(limit=10)
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
