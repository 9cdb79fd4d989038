"""Risk for option orders, around the share-based risk gate.

The risk engine counts `intent.symbol` in shares and keys positions by symbol; IB reports an option position
under its underlying's ticker. Two option orders are enabled, each judged for what it does to the account:

- SELL calls against shares held (covered_call). The engine sees "sell N of a position of >= 100 N shares":
  a reducing order, not a flip, which is the right verdict for the account's delta, and the notional
  includes the 100x multiplier. What the engine cannot see is coverage: the shares must cover every short
  call on the underlying, this one included. This gate adds that check, reading positions by asset class.
- BUY back options that are short (position_monitor's buy to close). Seen as shares, that order would
  "add to the long stock position" and meet the exposure limits of a new entry. Here the engine judges it
  against the option position itself: the contract ("AAPL 20260116 200 C") stands in the risk context as a
  position of minus the contracts short, at its market price, with the working orders on its conid. The
  engine's own reducing semantics then hold: exposure, position, cooling-off and circuit-breaker rules and
  the REDUCING state let it through; HALTED, trading mode, accounts, enabled strategies, market hours, order
  notional and order rate still apply. Buying more than is short (opening a long option) is denied.

Any other option order is denied. The overlay wraps its workflows' gate in `OptionRiskGate` once, so a
proposal and its approval-time re-check get the same verdict; `around` does not wrap twice.
"""

from __future__ import annotations

from broker.client import BrokerClient
from broker.models import Position
from broker.options import option_label
from workflows.deps import RiskGate
from workflows.models import OrderIntent, RiskDecision, RiskDenial
from workflows.risk import PositionSnapshot, WorkingOrder
from workflows.risk_gate import LIVE_ORDERS_MAX_AGE_S, BrokerRiskGate

COVERED_CALLS = "covered_calls_only"
CLOSE_ONLY = "option_buys_close_only"
_CONTRACT_TOLERANCE = 1e-9


class OptionRiskGate:
    """`base` for every stock order; option orders as the module docstring says."""

    def __init__(self, base: RiskGate, broker: BrokerClient) -> None:
        self.base = base
        self.broker = broker

    @classmethod
    def around(cls, base: RiskGate, broker: BrokerClient) -> OptionRiskGate:
        return base if isinstance(base, OptionRiskGate) else cls(base, broker)

    async def check(self, intent: OrderIntent, account_id: str) -> RiskDecision:
        option = intent.option
        if option is None:
            return await self.base.check(intent, account_id)
        positions = [p for p in await self.broker.positions(account_id) if p.symbol == intent.symbol]
        if intent.side == "SELL" and option.right == "C":
            decision = await self.base.check(intent, account_id)
            denial = coverage_denial(intent, positions)
            if denial is None:
                return decision
            return RiskDecision(allowed=False, denials=[*decision.denials, denial])
        if intent.side == "BUY":
            return await self.check_buy_to_close(intent, account_id, positions)
        return _denied(COVERED_CALLS, "for options only selling covered calls and buying back short ones is enabled")

    async def check_buy_to_close(self, intent: OrderIntent, account_id: str, positions: list[Position]) -> RiskDecision:
        option = intent.option
        assert option is not None
        label = option_label(option.underlying, option.expiry, option.strike, option.right)
        held = next((p for p in positions if p.asset_class == "OPT" and p.conid == option.conid), None)
        short = -held.quantity if held is not None and held.quantity < 0 else 0.0
        working = [
            o
            for o in await self.broker.live_orders(max_age_s=LIVE_ORDERS_MAX_AGE_S)
            if o.is_working and option.conid is not None and o.conid == option.conid
        ]
        buying = sum(max(o.quantity - o.filled_quantity, 0) for o in working if o.side == "BUY")
        if intent.quantity + buying > short + _CONTRACT_TOLERANCE:
            return _denied(
                CLOSE_ONLY,
                f"buying {intent.quantity:g} {label} would not only buy back the {short:g} short contract(s) "
                f"({buying:g} already being bought back): opening long options is not enabled",
            )
        if not isinstance(self.base, BrokerRiskGate):
            return await self.base.check(intent, account_id)
        ctx = await self.base.context(account_id)
        ctx = ctx.model_copy(
            update={
                "positions": {
                    **ctx.positions,
                    label: PositionSnapshot(quantity=-short, market_price_usd=held.market_price if held else None),
                },
                "working_orders": [
                    *ctx.working_orders,
                    *(
                        WorkingOrder(
                            symbol=label,
                            side=o.side,
                            quantity=max(o.quantity - o.filled_quantity, 0) or o.quantity,
                            limit_price_usd=o.limit_price,
                        )
                        for o in working
                    ),
                ],
            }
        )
        return self.base.engine.check(intent.model_copy(update={"symbol": label}), ctx)


def coverage_denial(intent: OrderIntent, positions: list[Position]) -> RiskDenial | None:
    """Selling calls needs shares for every short call on the underlying, these included."""
    option = intent.option
    assert option is not None
    shares = sum(p.quantity for p in positions if p.asset_class == "STK")
    short_options = sum(-p.quantity for p in positions if p.asset_class == "OPT" and p.quantity < 0)
    needed = (short_options + intent.quantity) * option.multiplier
    if shares >= needed:
        return None
    return RiskDenial(
        rule=COVERED_CALLS,
        reason=(
            f"selling {intent.quantity:g} call(s) needs {needed:g} {intent.symbol} shares to cover every short "
            f"call; {shares:g} held"
        ),
    )


def _denied(rule: str, reason: str) -> RiskDecision:
    return RiskDecision(allowed=False, denials=[RiskDenial(rule=rule, reason=reason)])
