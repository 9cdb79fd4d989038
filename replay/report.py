"""The replay report: what happened bar by bar, P&L by workflow and trigger, drawdown, exposure, Claude's cost.

Money is Decimal (exact to the cent; JSON writes it as a string). `write_report` writes report.json and a
self-contained report.html (see replay.html).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel

from replay.metrics import Attribution, Drawdown


class Trade(BaseModel):
    ts: datetime
    symbol: str
    side: str
    quantity: Decimal
    price_usd: Decimal
    commission_usd: Decimal
    realized_pnl_usd: Decimal
    workflow: str
    trigger: str
    workflow_id: str
    client_order_id: str | None


class EquityPoint(BaseModel):
    ts: datetime
    equity_usd: Decimal
    cash_usd: Decimal
    exposure_usd: Decimal
    prices_usd: dict[str, Decimal]


class Decision(BaseModel):
    """What became of one trigger event: the run's status and, for a proposal, the policy's answer."""

    ts: datetime
    trigger: str
    symbol: str
    workflow: str
    workflow_id: str | None
    status: str
    approval: str | None
    notional_usd: float | None
    summary: str


class OpenPosition(BaseModel):
    symbol: str
    quantity: Decimal
    avg_cost_usd: Decimal
    market_price_usd: Decimal
    market_value_usd: Decimal
    unrealized_pnl_usd: Decimal


class ClaudeUsage(BaseModel):
    calls: int
    cost_usd: float
    by_workflow: dict[str, dict[str, float]]


class ReplaySettingsView(BaseModel):
    symbols: list[str]
    bars: int
    first_bar: datetime
    last_bar: datetime
    triggers: list[dict[str, object]]
    workflows: list[str]
    approval_policy: str
    commission: dict[str, str]
    slippage_bps: Decimal
    starting_cash_usd: Decimal
    analyst: str


class ReplayReport(BaseModel):
    settings: ReplaySettingsView
    starting_equity_usd: Decimal
    final_equity_usd: Decimal
    total_pnl_usd: Decimal
    realized_pnl_usd: Decimal
    unrealized_pnl_usd: Decimal
    cash_usd: Decimal
    commissions_usd: Decimal
    trades: list[Trade]
    win_rate: float | None
    by_workflow: list[Attribution]
    by_trigger: list[Attribution]
    drawdown: Drawdown
    max_exposure_usd: Decimal
    positions: list[OpenPosition]
    decisions: list[Decision]
    equity_curve: list[EquityPoint]
    claude: ClaudeUsage
    definitions: str


def write_report(report: ReplayReport, out_dir: Path) -> tuple[Path, Path]:
    """report.json and report.html in `out_dir` (created)."""
    from replay.html import render_html

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    html_path = out_dir / "report.html"
    json_path.write_text(report.model_dump_json(indent=1), encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path
