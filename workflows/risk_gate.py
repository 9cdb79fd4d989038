"""Builds the risk context from the broker, the ledger and the clock, then asks the risk engine.

Limits and the trading state are persisted as preferences, so a kill switch survives a restart.

The account (summary and positions) is read live from the broker for every check, with one exception: a
workflow run that has just read it itself (its gather step) hands that read to its own proposal-time check
(`handed_over`), if it is at most HANDOFF_MAX_AGE_S old and no order in the ledger changed since. That saves
two IB_MCP calls per run without ever using a background snapshot: the approval-time re-check, and every
check outside a run, read live.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from broker.client import BrokerClient
from broker.models import Account, Position, bracket_of
from workflows.deps import TradingSettings
from workflows.market_hours import AlwaysOpen, MarketClock
from workflows.models import OrderIntent, RiskDecision
from workflows.risk import (
    LIMITS_KEY,
    STATE_KEY,
    PositionSnapshot,
    PricePoint,
    RiskContext,
    RiskEngine,
    RiskLimits,
    TradingState,
    WorkingOrder,
)
from workflows.store import OrderRecord, WorkflowStore
from workflows.times import as_utc, utc_now

# IB paces the live-orders call at one per 5 s; our own ledger counts orders we just sent in any case.
LIVE_ORDERS_MAX_AGE_S = 5.0
HANDOFF_MAX_AGE_S = 30.0
PriceHistory = Callable[[str], Awaitable[Sequence[PricePoint]]]


async def _no_history(_: str) -> Sequence[PricePoint]:
    return ()


class AccountRead(BaseModel):
    """What a risk check needs from one read of the account: net liquidation, buying power and the stock
    positions (by symbol), with the time the read started."""

    account_id: str
    read_at: datetime
    net_liquidation_usd: float | None
    buying_power_usd: float | None
    positions: dict[str, PositionSnapshot]

    @classmethod
    def of(cls, summary: Account, positions: Sequence[Position], read_at: datetime) -> AccountRead:
        return cls(
            account_id=summary.account_id,
            read_at=read_at,
            net_liquidation_usd=summary.net_liquidation_usd,
            buying_power_usd=summary.buying_power_usd,
            positions={
                p.symbol: PositionSnapshot(quantity=p.quantity, market_price_usd=p.market_price)
                for p in positions
                if p.asset_class == "STK"
            },
        )


async def read_account(broker: BrokerClient, account_id: str) -> tuple[Account, list[Position], datetime]:
    """The account summary and every position, read live and concurrently, and when the read started."""
    read_at = utc_now()
    summary, positions = await asyncio.gather(broker.account_summary(account_id), broker.positions(account_id))
    return summary, positions, read_at


_handed_over: ContextVar[AccountRead | None] = ContextVar("risk_account_read", default=None)


@contextmanager
def handed_over(read: AccountRead | None) -> Iterator[None]:
    """Within this block, a risk check of `read.account_id` may use `read` instead of reading the account
    again (see the module docstring for when it does). A context variable, so it reaches the gate through
    any wrapper (OptionRiskGate, SimulatedTimeRiskGate) and nothing outside the calling task sees it."""
    token = _handed_over.set(read)
    try:
        yield
    finally:
        _handed_over.reset(token)


class BrokerRiskGate:
    def __init__(
        self,
        engine: RiskEngine,
        broker: BrokerClient,
        store: WorkflowStore,
        trading: TradingSettings,
        *,
        clock: MarketClock | None = None,
        price_history: PriceHistory = _no_history,
    ) -> None:
        self.engine = engine
        self.broker = broker
        self.store = store
        self.trading = trading
        self.clock = clock or AlwaysOpen()
        self.price_history = price_history
        self.state = TradingState.ACTIVE

    async def load(self) -> None:
        """Apply limits and the trading state saved by an earlier run (set_risk_limits, kill_switch)."""
        saved = await self.store.preferences()
        if LIMITS_KEY in saved:
            self.engine = RiskEngine(RiskLimits.model_validate(saved[LIMITS_KEY]))
        if STATE_KEY in saved:
            self.state = TradingState(saved[STATE_KEY])

    async def set_limits(self, limits: RiskLimits) -> None:
        self.engine = RiskEngine(limits)
        await self.store.set_preference(LIMITS_KEY, limits.model_dump(mode="json"))

    async def set_state(self, state: TradingState) -> None:
        self.state = state
        await self.store.set_preference(STATE_KEY, state.value)

    async def context(self, account_id: str) -> RiskContext:
        now = utc_now()
        # Another worker may have changed the limits or pulled the kill switch: load() re-reads them.
        _, ledger, live_orders = await asyncio.gather(
            self.load(), self.store.orders(limit=200), self.broker.live_orders(max_age_s=LIVE_ORDERS_MAX_AGE_S)
        )
        account = _usable(_handed_over.get(), account_id, now, ledger)
        if account is None:
            account = AccountRead.of(*await read_account(self.broker, account_id))
        working = [o for o in live_orders if o.is_working]
        hour_ago = now - timedelta(hours=1)
        status = self.clock.status(now)
        symbols = set(account.positions) | {o.symbol for o in working}
        return RiskContext(
            account_id=account_id,
            live_trading_enabled=self.trading.live_trading_enabled,
            positions=account.positions,
            net_liquidation_usd=account.net_liquidation_usd,
            buying_power_usd=account.buying_power_usd,
            trading_state=self.state,
            now=now,
            recent_order_times=[
                as_utc(o.created_at)
                for o in ledger
                if o.status not in ("intent", "failed") and as_utc(o.created_at) > hour_ago
            ],
            recent_prices={s: list(await self.price_history(s)) for s in symbols},
            market_open=status.regular_open,
            extended_hours=status.extended_open,
            working_orders=[
                WorkingOrder(
                    symbol=o.symbol,
                    side=o.side,
                    quantity=max(o.quantity - o.filled_quantity, 0) or o.quantity,
                    limit_price_usd=o.limit_price,
                    oca_group=bracket_of(o.client_order_id),
                )
                for o in working
            ],
        )

    async def check(self, intent: OrderIntent, account_id: str) -> RiskDecision:
        ctx = await self.context(account_id)
        if intent.symbol not in ctx.recent_prices:
            ctx.recent_prices[intent.symbol] = list(await self.price_history(intent.symbol))
        return self.engine.check(intent, ctx)

    def describe(self) -> dict[str, Any]:
        description = self.engine.describe()
        description["trading_state"] = self.state.value
        description["mode"] = self.trading.mode
        description["auto_approve_under_usd"] = (
            dict(self.trading.auto_approve_under_usd) if self.trading.mode == "paper" else {}
        )
        return description


def _usable(
    read: AccountRead | None, account_id: str, now: datetime, ledger: Sequence[OrderRecord]
) -> AccountRead | None:
    """`read` if it is of this account, recent, and older than every change in the order ledger."""
    if read is None or read.account_id != account_id:
        return None
    if (now - read.read_at).total_seconds() > HANDOFF_MAX_AGE_S:
        return None
    if any(as_utc(o.updated_at) >= read.read_at for o in ledger):
        return None
    return read
