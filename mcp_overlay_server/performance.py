"""What the overlay's own orders did: fills, fill rate, slippage and realised P&L per workflow, from the ledger.

Definitions (kept deliberately simple, so a person can recompute them by hand):
- Fill rate: filled orders / orders sent to the broker (ledger status other than "intent" and "failed").
- Slippage (bps): for each filled order, (fill price - proposal's reference price) / reference price x 10,000,
  signed so that positive is worse for us (paid more on a buy, got less on a sell).
- Realised P&L (USD): per symbol, the overlay's buys build an average cost; each sell realises
  (fill price - average cost) x shares against shares the overlay bought. Shares sold beyond what the overlay
  bought (a position opened outside the overlay) realise nothing here and are counted in `unmatched_sell_shares`.
  The P&L of a sell is attributed to the workflow that placed the sell.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel

from workflows.models import Proposal
from workflows.store import OrderRecord, as_utc

if TYPE_CHECKING:
    from workflows.store import WorkflowStore

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


class PerformanceReport(BaseModel):
    since: datetime | None
    orders_considered: int
    total_realized_pnl_usd: float
    workflows: list[WorkflowPerformance]
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


async def _reference_prices(store: WorkflowStore, orders: list[OrderRecord]) -> dict[str, float]:
    prices: dict[str, float] = {}
    for order in orders:
        if order.approval_id is None or order.approval_id in prices:
            continue
        approval = await store.get_approval(order.approval_id)
        if approval is not None:
            prices[order.approval_id] = Proposal.model_validate_json(approval.proposal_json).intent.reference_price
    return prices


async def build_performance_report(store: WorkflowStore) -> PerformanceReport:
    orders = sorted(await store.orders(limit=REPORT_ORDER_LIMIT), key=lambda o: as_utc(o.created_at))
    workflow_of = {run.workflow_id: run.workflow for run in await store.list_runs(limit=REPORT_ORDER_LIMIT)}
    references = await _reference_prices(store, orders)
    tallies: defaultdict[str, _Tally] = defaultdict(_Tally)
    held: defaultdict[str, float] = defaultdict(float)
    cost: defaultdict[str, float] = defaultdict(float)
    for order in orders:
        tally = tallies[workflow_of.get(order.workflow_id, order.workflow_id.rsplit("-", 1)[0])]
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
        if order.side == "BUY":
            tally.bought_usd += shares * price
            held[order.symbol] += shares
            cost[order.symbol] += shares * price
            continue
        tally.sold_usd += shares * price
        matched = min(shares, held[order.symbol])
        if matched > 0:
            average = cost[order.symbol] / held[order.symbol]
            tally.pnl_usd += (price - average) * matched
            cost[order.symbol] -= average * matched
            held[order.symbol] -= matched
        tally.unmatched += shares - matched
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
        )
        for name, t in sorted(tallies.items())
    ]
    return PerformanceReport(
        since=as_utc(orders[0].created_at) if orders else None,
        orders_considered=len(orders),
        total_realized_pnl_usd=round(sum(line.realized_pnl_usd for line in lines), 2),
        workflows=lines,
        definitions=(__doc__ or "").split("\n\n", 1)[1].strip(),
    )
