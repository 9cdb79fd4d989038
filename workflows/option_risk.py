"""Risk for option orders, around the share-based risk gate.

The risk engine counts `intent.symbol` in shares and keys positions by symbol; IB reports an option
position under its underlying's ticker. For a covered call (SELL calls on a stock held long) the engine's
rules see "sell N of a position of >= 100 N shares": a reducing order, not a flip, which is the right
verdict for the account's delta, and the order notional includes the 100x multiplier. What the engine
cannot see is coverage: the shares must cover every short call on the underlying, this one included.
This gate adds that check, reading positions by asset class and conid.
"""

from __future__ import annotations

from broker.client import BrokerClient
from workflows.deps import RiskGate
from workflows.models import OrderIntent, RiskDecision, RiskDenial


class CoveredCallGate:
    """`base` for every order; a SELL of calls must also be covered by shares held."""

    name = "covered_calls_only"

    def __init__(self, base: RiskGate, broker: BrokerClient) -> None:
        self.base = base
        self.broker = broker

    async def check(self, intent: OrderIntent, account_id: str) -> RiskDecision:
        decision = await self.base.check(intent, account_id)
        denial = await self.coverage_denial(intent, account_id)
        if denial is None:
            return decision
        return RiskDecision(allowed=False, denials=[*decision.denials, denial])

    async def coverage_denial(self, intent: OrderIntent, account_id: str) -> RiskDenial | None:
        option = intent.option
        if option is None:
            return None
        if option.right != "C" or intent.side != "SELL":
            return RiskDenial(rule=self.name, reason="only selling covered calls is enabled for options")
        positions = await self.broker.positions(account_id)
        shares = sum(p.quantity for p in positions if p.symbol == intent.symbol and p.asset_class == "STK")
        short_options = sum(
            -p.quantity for p in positions if p.symbol == intent.symbol and p.asset_class == "OPT" and p.quantity < 0
        )
        needed = (short_options + intent.quantity) * option.multiplier
        if shares >= needed:
            return None
        return RiskDenial(
            rule=self.name,
            reason=(
                f"selling {intent.quantity:g} call(s) needs {needed:g} {intent.symbol} shares to cover every short "
                f"call; {shares:g} held"
            ),
        )
