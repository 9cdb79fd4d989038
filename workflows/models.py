"""Types the workflow steps pass to each other: what the analyst recommends, what risk checks, what is approved."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from broker.models import OrderType, Side

# The current Sonnet (platform.claude.com models overview, 2026-11).
DEFAULT_CLAUDE_MODEL = "claude-sonnet-5-5"
Action = Literal["buy", "sell", "hold"]
TradingMode = Literal["paper", "live"]


class Recommendation(BaseModel):
    """The analyst's answer. `source` says who answered: "claude", "sampling" or "offline" (rules)."""

    action: Action
    quantity: float = Field(default=0, ge=0)
    order_type: OrderType = "MKT"
    limit_price: float | None = Field(default=None, gt=0)
    rationale: str = ""
    confidence: float = Field(default=0.5, ge=0, le=1)
    source: str = "offline"


class OptionContract(BaseModel):
    """One listed option. `expiry` is IB's YYYYMMDD; `conid` is the option's own contract id."""

    underlying: str
    expiry: str = Field(pattern=r"^\d{8}$")
    strike: float = Field(gt=0)
    right: Literal["C", "P"]
    conid: int | None = None
    multiplier: int = 100


class OrderIntent(BaseModel):
    """An order a workflow wants to place, before risk and approval. Prices in USD per share (per option
    share for options); quantity in shares or contracts. `symbol` is the stock, or the option's underlying."""

    workflow: str
    symbol: str
    side: Side
    quantity: float = Field(gt=0)
    order_type: OrderType = "MKT"
    limit_price: float | None = Field(default=None, gt=0)
    reference_price: float = Field(gt=0, description="the quote the proposal was built on")
    outside_rth: bool = False
    option: OptionContract | None = None

    @property
    def multiplier(self) -> int:
        return self.option.multiplier if self.option else 1

    @property
    def notional_usd(self) -> float:
        return self.quantity * (self.limit_price or self.reference_price) * self.multiplier


class RiskDenial(BaseModel):
    rule: str
    reason: str


class RiskDecision(BaseModel):
    allowed: bool
    denials: list[RiskDenial] = Field(default_factory=list)

    @property
    def summary(self) -> str:
        return "allowed" if self.allowed else "; ".join(f"{d.rule}: {d.reason}" for d in self.denials)


class Proposal(BaseModel):
    """What the human is asked to approve."""

    approval_id: str
    workflow_id: str
    intent: OrderIntent
    recommendation: Recommendation
    mode: TradingMode
    account_id: str
    expires_at: datetime
    risk: RiskDecision
    details: dict[str, Any] = Field(default_factory=dict, description="workflow-specific facts shown with it")
