"""Builds the risk context from the broker, the ledger and the clock, then asks the risk engine.

Limits and the trading state are persisted as preferences, so a kill switch survives a restart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

from broker.client import BrokerClient
from workflows.deps import TradingSettings
from workflows.market_hours import AlwaysOpen, MarketClock
from workflows.models import OrderIntent, RiskDecision
from workflows.risk import (
    PositionSnapshot,
    PricePoint,
    RiskContext,
    RiskEngine,
    RiskLimits,
    TradingState,
    WorkingOrder,
)
from workflows.store import WorkflowStore, as_utc, utc_now

LIMITS_KEY = "risk_limits"
# IB paces the live-orders call at one per 5 s; our own ledger counts orders we just sent in any case.
LIVE_ORDERS_MAX_AGE_S = 5.0
STATE_KEY = "trading_state"
PriceHistory = Callable[[str], Awaitable[Sequence[PricePoint]]]


async def _no_history(_: str) -> Sequence[PricePoint]:
    return ()


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
        await self.load()  # another worker may have changed the limits or pulled the kill switch
        now = utc_now()
        summary = await self.broker.account_summary(account_id)
        positions = [p for p in await self.broker.positions(account_id) if p.asset_class == "STK"]
        working = [o for o in await self.broker.live_orders(max_age_s=LIVE_ORDERS_MAX_AGE_S) if o.is_working]
        ledger = await self.store.orders(limit=200)
        hour_ago = now - timedelta(hours=1)
        status = self.clock.status(now)
        symbols = {p.symbol for p in positions} | {o.symbol for o in working}
        return RiskContext(
            account_id=account_id,
            live_trading_enabled=self.trading.live_trading_enabled,
            positions={
                p.symbol: PositionSnapshot(quantity=p.quantity, market_price_usd=p.market_price) for p in positions
            },
            net_liquidation_usd=summary.net_liquidation_usd,
            buying_power_usd=summary.buying_power_usd,
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
