"""The risk gate on simulated time: "now", the order-rate window and market hours read the replay's clock.

The live gate asks `workflows.times.utc_now()` (wall time) and counts orders by the ledger's wall-clock
`created_at`; replayed at full speed, a year of daily bars would then look like one burst of orders. Here
`now` is the bar's time and recent orders are the simulated broker's, stamped on the same clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.sim.market import MarketSimulator
from replay.clock import ReplayClock
from workflows.risk import RiskContext
from workflows.risk_gate import BrokerRiskGate

ORDER_RATE_WINDOW = timedelta(hours=1)


class SimulatedTimeRiskGate(BrokerRiskGate):
    def __init__(self, gate: BrokerRiskGate, replay_clock: ReplayClock, market: MarketSimulator) -> None:
        super().__init__(
            gate.engine, gate.broker, gate.store, gate.trading, clock=gate.clock, price_history=gate.price_history
        )
        self.state = gate.state
        self.replay_clock = replay_clock
        self.market = market

    async def context(self, account_id: str) -> RiskContext:
        ctx = await super().context(account_id)
        now = self.replay_clock.now
        submitted = [datetime.fromtimestamp(order.submitted_ms / 1000, UTC) for order in self.market.orders]
        status = self.clock.status(now)
        return ctx.model_copy(
            update={
                "now": now,
                "recent_order_times": [ts for ts in submitted if now - ts <= ORDER_RATE_WINDOW],
                "market_open": status.regular_open,
                "extended_hours": status.extended_open,
            }
        )
