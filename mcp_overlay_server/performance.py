"""What the overlay's own orders did: fills, fill rate, slippage and realised P&L per workflow, from the ledger.

Definitions (kept deliberately simple, so a person can recompute them by hand):
- Fill rate: filled orders / orders sent to the broker (ledger status other than "intent" and "failed").
- Slippage (bps): for each filled order, (fill price - proposal's reference price) / reference price x 10,000,
  signed so that positive is worse for us (paid more on a buy, got less on a sell).
- Realised P&L (USD): per symbol, the overlay's buys build an average cost; each sell realises
  (fill price - average cost) x shares against shares the overlay bought. Shares sold beyond what the overlay
  bought (a position opened outside the overlay) realise nothing here and are counted in `unmatched_sell_shares`.
  The P&L of a sell is attributed to the workflow that placed the sell, and to the trigger whose event
  started that workflow's run ("(none)" for a run started by hand).
- Win rate: sells that realised P&L > 0, divided by sells that closed shares the overlay bought.
- Max drawdown: the largest fall of the cumulative realised P&L from its running peak (USD, and % of the
  peak when the peak is positive); live history has no marked-to-market equity curve, so this is the
  realised one. The replay report (`ib-overlay replay`) computes the same figures on its equity curve.
- Exposure: after each fill, the overlay's own shares held x that symbol's latest fill price, summed (USD).
- Claude: calls and cost (USD) from the usage ledger, per workflow.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from pydantic import BaseModel

from replay.metrics import UNATTRIBUTED, Attribution, Drawdown, Fill, attribute, max_drawdown, win_rate
from workflows.models import Proposal
from workflows.times import as_utc

if TYPE_CHECKING:
    from workflows.store import OrderRecord, WorkflowStore
    from workflows.usage import UsageLedger

REPORT_ORDER_LIMIT = 1_000
NOT_SENT = frozenset({"intent", "failed"})


class WorkflowPerformance(BaseModel):
    workflow: str
    orders_sent: int
    orders_filled: int
    fill_rate: float | None
    bought_usd: float
    sold_usd: float
    realized_pnl_usd: float
    avg_slippage_bps: float | None
    unmatched_sell_shares: float
    closing_fills: int
    wins: int
    win_rate: float | None


class ExposurePoint(BaseModel):
    ts: datetime
    exposure_usd: float


class ClaudeSpend(BaseModel):
    calls: int
    cost_usd: float
    by_workflow: dict[str, float]


class PerformanceReport(BaseModel):
    since: datetime | None
    orders_considered: int
    total_realized_pnl_usd: float
    win_rate: float | None
    workflows: list[WorkflowPerformance]
    by_trigger: list[Attribution]
    drawdown: Drawdown
    exposure: list[ExposurePoint]
    max_exposure_usd: float
    claude: ClaudeSpend | None
    definitions: str


def slippage_bps(side: str, fill_price: float, reference_price: float) -> float:
    """Positive = worse for us: paid more than the reference on a buy, received less on a sell."""
    move = (fill_price - reference_price) / reference_price * 10_000
    return move if side == "BUY" else -move


class _Tally:
    def __init__(self) -> None:
        self.sent = 0
        self.filled = 0
        self.bought_usd = 0.0
        self.sold_usd = 0.0
        self.pnl_usd = 0.0
        self.slippages: list[float] = []
        self.unmatched = 0.0
        self.fills: list[Fill] = []


async def _reference_prices(store: WorkflowStore, orders: list[OrderRecord]) -> dict[str, float]:
    prices: dict[str, float] = {}
    for order in orders:
        if order.approval_id is None or order.approval_id in prices:
            continue
        approval = await store.get_approval(order.approval_id)
        if approval is not None:
            prices[order.approval_id] = Proposal.model_validate_json(approval.proposal_json).intent.reference_price
    return prices


async def _triggers_of_runs(store: WorkflowStore) -> dict[str, str]:
    """workflow_id -> the name of the trigger whose event started the run."""
    trigger_of_event = {
        event.event_id: event.trigger_name for event in await store.recent_market_events(limit=REPORT_ORDER_LIMIT)
    }
    return {
        run.workflow_id: trigger_of_event.get(run.trigger_event_id, UNATTRIBUTED)
        for run in await store.list_runs(limit=REPORT_ORDER_LIMIT)
        if run.trigger_event_id
    }


async def _claude_spend(usage: UsageLedger) -> ClaudeSpend:
    lines = await usage.by_workflow()
    return ClaudeSpend(
        calls=sum(line.calls for line in lines),
        cost_usd=round(sum(line.cost_usd for line in lines), 6),
        by_workflow={line.workflow: round(line.cost_usd, 6) for line in lines},
    )


def _fill(order: OrderRecord, workflow: str, trigger: str, realized_usd: float, closing: bool) -> Fill:
    return Fill(
        ts=as_utc(order.updated_at),
        symbol=order.symbol,
        side=order.side,
        quantity=Decimal(str(order.filled_quantity)),
        price_usd=Decimal(str(order.avg_fill_price)),
        commission_usd=Decimal(0),
        realized_pnl_usd=Decimal(str(round(realized_usd, 2))),
        closing=closing,
        workflow=workflow,
        trigger=trigger,
    )


async def build_performance_report(store: WorkflowStore, usage: UsageLedger | None = None) -> PerformanceReport:
    orders = sorted(await store.orders(limit=REPORT_ORDER_LIMIT), key=lambda o: as_utc(o.created_at))
    workflow_of = {run.workflow_id: run.workflow for run in await store.list_runs(limit=REPORT_ORDER_LIMIT)}
    trigger_of = await _triggers_of_runs(store)
    references = await _reference_prices(store, orders)
    tallies: defaultdict[str, _Tally] = defaultdict(_Tally)
    held: defaultdict[str, float] = defaultdict(float)
    cost: defaultdict[str, float] = defaultdict(float)
    last_price: dict[str, float] = {}
    exposure: list[ExposurePoint] = []
    for order in orders:
        workflow = workflow_of.get(order.workflow_id, order.workflow_id.rsplit("-", 1)[0])
        tally = tallies[workflow]
        trigger = trigger_of.get(order.workflow_id, UNATTRIBUTED)
        if order.status in NOT_SENT:
            continue
        tally.sent += 1
        if order.filled_quantity <= 0 or order.avg_fill_price is None:
            continue
        if order.status == "filled":
            tally.filled += 1
        shares, price = order.filled_quantity, order.avg_fill_price
        if order.approval_id in references:
            tally.slippages.append(slippage_bps(order.side, price, references[order.approval_id]))
        last_price[order.symbol] = price
        if order.side == "BUY":
            tally.bought_usd += shares * price
            held[order.symbol] += shares
            cost[order.symbol] += shares * price
            tally.fills.append(_fill(order, workflow, trigger, 0.0, closing=False))
        else:
            tally.sold_usd += shares * price
            matched = min(shares, held[order.symbol])
            realized = 0.0
            if matched > 0:
                average = cost[order.symbol] / held[order.symbol]
                realized = (price - average) * matched
                tally.pnl_usd += realized
                cost[order.symbol] -= average * matched
                held[order.symbol] -= matched
            tally.unmatched += shares - matched
            tally.fills.append(_fill(order, workflow, trigger, realized, closing=matched > 0))
        exposure.append(
            ExposurePoint(
                ts=as_utc(order.updated_at),
                exposure_usd=round(sum(held[symbol] * last_price[symbol] for symbol in held), 2),
            )
        )
    lines = [
        WorkflowPerformance(
            workflow=name,
            orders_sent=t.sent,
            orders_filled=t.filled,
            fill_rate=round(t.filled / t.sent, 4) if t.sent else None,
            bought_usd=round(t.bought_usd, 2),
            sold_usd=round(t.sold_usd, 2),
            realized_pnl_usd=round(t.pnl_usd, 2),
            avg_slippage_bps=round(sum(t.slippages) / len(t.slippages), 2) if t.slippages else None,
            unmatched_sell_shares=t.unmatched,
            closing_fills=sum(1 for fill in t.fills if fill.closing),
            wins=sum(1 for fill in t.fills if fill.closing and fill.realized_pnl_usd > 0),
            win_rate=win_rate(t.fills),
        )
        for name, t in sorted(tallies.items())
    ]
    fills = sorted((fill for t in tallies.values() for fill in t.fills), key=lambda fill: fill.ts)
    # The curve starts at 0 before the first fill, so a first losing sell counts as a drawdown.
    realized_curve: list[tuple[datetime, Decimal]] = [(fills[0].ts, Decimal(0))] if fills else []
    running = Decimal(0)
    for fill in fills:
        running += fill.realized_pnl_usd
        realized_curve.append((fill.ts, running))
    return PerformanceReport(
        since=as_utc(orders[0].created_at) if orders else None,
        orders_considered=len(orders),
        total_realized_pnl_usd=round(sum(line.realized_pnl_usd for line in lines), 2),
        win_rate=win_rate(fills),
        workflows=lines,
        by_trigger=attribute(fills, lambda fill: fill.trigger),
        drawdown=max_drawdown(realized_curve),
        exposure=exposure,
        max_exposure_usd=max((point.exposure_usd for point in exposure), default=0.0),
        claude=await _claude_spend(usage) if usage is not None else None,
        definitions=(__doc__ or "").split("\n\n", 1)[1].strip(),
    )
