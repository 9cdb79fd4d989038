"""Attribution and risk figures shared by the replay report and `performance_report` (live / paper history).

Definitions, so a person can recompute them by hand:
- A fill's realised P&L is what it closed: (fill price - average cost) x shares closed, less the closing
  commission (average cost includes the commissions paid to open). Opening fills realise 0.
- P&L by workflow / by trigger: the realised P&L of the fills that workflow / trigger placed.
- Win rate: closing fills with realised P&L > 0, divided by all closing fills (None without closing fills).
- Max drawdown: the largest fall of equity from its running peak, in USD and as % of that peak.
- Exposure: the market value of all open positions (absolute, long plus short) at each point in time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from pydantic import BaseModel

ZERO = Decimal(0)
UNATTRIBUTED = "(none)"
CENT = Decimal("0.01")


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Fill:
    ts: datetime
    symbol: str
    side: str
    quantity: Decimal
    price_usd: Decimal
    commission_usd: Decimal
    realized_pnl_usd: Decimal
    closing: bool
    workflow: str
    trigger: str


class Attribution(BaseModel):
    name: str
    fills: int
    buys: int
    sells: int
    bought_usd: Decimal
    sold_usd: Decimal
    commissions_usd: Decimal
    realized_pnl_usd: Decimal
    closing_fills: int
    wins: int
    win_rate: float | None


class Drawdown(BaseModel):
    max_drawdown_usd: Decimal
    max_drawdown_pct: float
    peak_at: datetime | None
    trough_at: datetime | None


def win_rate(fills: Iterable[Fill]) -> float | None:
    closing = [fill for fill in fills if fill.closing]
    if not closing:
        return None
    return round(sum(1 for fill in closing if fill.realized_pnl_usd > 0) / len(closing), 4)


def attribute(fills: Sequence[Fill], key: Callable[[Fill], str]) -> list[Attribution]:
    groups: defaultdict[str, list[Fill]] = defaultdict(list)
    for fill in fills:
        groups[key(fill) or UNATTRIBUTED].append(fill)
    lines = []
    for name, group in sorted(groups.items()):
        buys = [fill for fill in group if fill.side == "BUY"]
        sells = [fill for fill in group if fill.side != "BUY"]
        closing = [fill for fill in group if fill.closing]
        lines.append(
            Attribution(
                name=name,
                fills=len(group),
                buys=len(buys),
                sells=len(sells),
                bought_usd=cents(sum((fill.quantity * fill.price_usd for fill in buys), ZERO)),
                sold_usd=cents(sum((fill.quantity * fill.price_usd for fill in sells), ZERO)),
                commissions_usd=sum((fill.commission_usd for fill in group), ZERO),
                realized_pnl_usd=sum((fill.realized_pnl_usd for fill in group), ZERO),
                closing_fills=len(closing),
                wins=sum(1 for fill in closing if fill.realized_pnl_usd > 0),
                win_rate=win_rate(group),
            )
        )
    return lines


def max_drawdown(curve: Sequence[tuple[datetime, Decimal]]) -> Drawdown:
    peak_value: Decimal | None = None
    peak_at: datetime | None = None
    worst = Drawdown(max_drawdown_usd=ZERO, max_drawdown_pct=0.0, peak_at=None, trough_at=None)
    for ts, value in curve:
        if peak_value is None or value > peak_value:
            peak_value, peak_at = value, ts
            continue
        fall = peak_value - value
        if fall > worst.max_drawdown_usd:
            pct = float(fall / peak_value * 100) if peak_value > 0 else 0.0
            worst = Drawdown(max_drawdown_usd=fall, max_drawdown_pct=round(pct, 4), peak_at=peak_at, trough_at=ts)
    return worst
