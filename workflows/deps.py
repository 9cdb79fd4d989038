"""What a workflow graph needs from the outside world, handed in explicitly (no globals)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from broker.client import BrokerClient
from broker.errors import BrokerError
from workflows.models import OrderIntent, RiskDecision, TradingMode
from workflows.store import WorkflowStore

if TYPE_CHECKING:
    from workflows.analyst import Analyst
    from workflows.audit import AuditLog
    from workflows.usage import UsageLedger


class RiskGate(Protocol):
    async def check(self, intent: OrderIntent, account_id: str) -> RiskDecision: ...


@dataclass(frozen=True)
class TradingSettings:
    """How workflows trade. Paper is the default; live needs `live_trading_enabled` and a non-DU account."""

    mode: TradingMode = "paper"
    live_trading_enabled: bool = False
    account_ids: tuple[str, ...] = ()
    approval_ttl_s: float = 300.0
    max_order_notional_usd: float = 5000.0
    max_price_drift_pct: float = 1.0
    resume_wait_s: float = 20.0
    """How long approve_trade waits for the run to finish before reporting it as still running."""
    auto_approve_under_usd: Mapping[str, float] = field(default_factory=dict)
    """Per workflow: proposals at or under this notional are approved without asking (paper mode only)."""
    brackets: Literal["auto", "on", "off"] = "auto"
    """Exits held at the broker as bracket orders: when IB_MCP takes them (auto), always (on), never (off)."""

    def auto_approve_limit_usd(self, workflow: str) -> float | None:
        return self.auto_approve_under_usd.get(workflow) if self.mode == "paper" else None


@dataclass
class WorkflowDeps:
    broker: BrokerClient
    store: WorkflowStore
    analyst: Analyst
    risk: RiskGate
    audit: AuditLog
    usage: UsageLedger
    trading: TradingSettings = field(default_factory=TradingSettings)

    async def trading_account(self) -> str:
        """The account orders go to: one named in settings, never simply the broker's first account."""
        accounts = [a.account_id for a in await self.broker.accounts()]
        if self.trading.account_ids:
            chosen = next((a for a in self.trading.account_ids if a in accounts), None)
            if chosen is None:
                raise BrokerError(
                    f"none of the configured accounts {list(self.trading.account_ids)} is among the broker's "
                    f"accounts {accounts}; fix IB_ACCOUNT_IDS"
                )
            return chosen
        paper = [a for a in accounts if a.startswith("DU")]
        if self.trading.mode == "paper" and len(paper) == 1:
            return paper[0]
        raise BrokerError(
            f"the broker lists accounts {accounts}; name the one to trade in IB_ACCOUNT_IDS "
            "(the overlay never picks an account on its own unless there is exactly one paper account)"
        )
