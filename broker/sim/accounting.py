"""Cash, positions, commissions and P&L of a simulated account, in Decimal so that every amount is exact.

Average-cost method, as IB reports it: a position's average cost includes the commissions paid to open it;
closing shares realise (price - average cost) per share less the closing commission. Cash and realised
P&L are kept to the cent. Option prices and average costs are per share; cash and P&L move by the
instrument's multiplier (100 shares per contract).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from broker.sim.instruments import Instrument

CENT = Decimal("0.01")
ZERO = Decimal(0)


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class CommissionSchedule:
    """IB's fixed pricing for US stocks: per share, with a minimum and a cap (a percentage of trade value).

    When the cap is below the minimum (a tiny order) the cap applies, as at IB.
    """

    per_share_usd: Decimal = Decimal("0.005")
    minimum_usd: Decimal = Decimal("1.00")
    maximum_pct_of_value: Decimal = Decimal("1")
    per_contract_usd: Decimal = Decimal("0.65")

    def commission(self, quantity: Decimal, price: Decimal) -> Decimal:
        per_share = max(quantity * self.per_share_usd, self.minimum_usd)
        cap = quantity * price * self.maximum_pct_of_value / 100
        return cents(min(per_share, cap))

    def option_commission(self, contracts: Decimal) -> Decimal:
        """IB's US option pricing: per contract, with the same minimum per order."""
        return cents(max(contracts * self.per_contract_usd, self.minimum_usd))


@dataclass
class Holding:
    instrument: Instrument
    quantity: Decimal = ZERO
    avg_cost: Decimal = ZERO
    realized_pnl: Decimal = ZERO


@dataclass
class Account:
    account_id: str
    cash: Decimal
    holdings: dict[int, Holding] = field(default_factory=dict)

    @property
    def realized_pnl(self) -> Decimal:
        return sum((holding.realized_pnl for holding in self.holdings.values()), ZERO)

    def open_position(self, instrument: Instrument, quantity: Decimal, avg_cost: Decimal) -> None:
        """A position the account starts with (bought before the simulation began; cash is not touched)."""
        self.holdings[instrument.conid] = Holding(instrument, quantity, avg_cost)

    def apply_fill(
        self, instrument: Instrument, side: str, quantity: Decimal, price: Decimal, commission: Decimal
    ) -> Decimal:
        """Book one execution; returns the P&L it realised (0 when it only opens or adds)."""
        holding = self.holdings.setdefault(instrument.conid, Holding(instrument))
        signed = quantity if side == "BUY" else -quantity
        multiplier = instrument.multiplier
        held = holding.quantity
        realized = ZERO
        if held == 0 or (held > 0) == (signed > 0):
            # A short's basis is its proceeds: the commission lowers it, as it raises a long's cost.
            fee = commission if signed > 0 else -commission
            holding.avg_cost = (abs(held) * holding.avg_cost + quantity * price + fee / multiplier) / abs(held + signed)
        else:
            closing = min(quantity, abs(held))
            direction = 1 if held > 0 else -1
            realized = cents(direction * closing * (price - holding.avg_cost) * multiplier - commission)
            holding.realized_pnl += realized
            if quantity > closing:
                holding.avg_cost = price
            elif held + signed == 0:
                holding.avg_cost = ZERO
        holding.quantity = held + signed
        self.cash = cents(self.cash - signed * price * multiplier - commission)
        return realized
