"""The simulated IB_MCP's market for a replay: recorded bars, a commission schedule, and slippage.

Slippage is modelled as a quote `slippage_bps` either side of the bar's close: a market buy fills at the
ask (close x (1 + bps / 10,000), rounded half-up to the cent), a market sell at the bid. With 0 bps both
are the close, so fills happen at exactly the replayed prices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from decimal import Decimal, InvalidOperation

from broker.sim.accounting import CommissionSchedule
from broker.sim.market import MarketSimulator, SimQuote
from broker.sim.prices import Bar, to_cents
from replay.clock import ReplayClock

BPS = Decimal(10_000)
NO_COMMISSION = CommissionSchedule(
    per_share_usd=Decimal(0), minimum_usd=Decimal(0), maximum_pct_of_value=Decimal(0), per_contract_usd=Decimal(0)
)


class ReplayMarket(MarketSimulator):
    def __init__(
        self,
        bars: Mapping[str, Sequence[Bar]],
        *,
        clock: ReplayClock,
        cash_usd: Decimal,
        commission: CommissionSchedule,
        slippage_bps: Decimal = Decimal(0),
    ) -> None:
        super().__init__(
            bars=bars, clock=clock.timestamp_s, cash_usd=cash_usd, commission=commission, spread_usd=Decimal(0)
        )
        self.slippage_bps = Decimal(slippage_bps)

    def quote(self, symbol: str) -> SimQuote:
        quote = super().quote(symbol)
        if not self.slippage_bps:
            return quote
        move = self.slippage_bps / BPS
        return replace(quote, bid=to_cents(quote.last * (1 - move)), ask=to_cents(quote.last * (1 + move)))


def parse_commission(text: str) -> CommissionSchedule:
    """`ib` (IB fixed: $0.005/share, $1 minimum, 1% cap), `none`, or `PER_SHARE_USD[,MINIMUM_USD[,MAX_PCT]]`."""
    name = text.strip().lower()
    if name == "ib":
        return CommissionSchedule()
    if name in ("none", "0"):
        return NO_COMMISSION
    parts = [part.strip() for part in name.split(",")]
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"commission {text!r}: use 'ib', 'none' or PER_SHARE_USD[,MINIMUM_USD[,MAX_PCT]]")
    try:
        values = [Decimal(part) for part in parts]
    except InvalidOperation as exc:
        raise ValueError(f"commission {text!r}: {parts} are not all numbers") from exc
    if any(value < 0 for value in values):
        raise ValueError(f"commission {text!r}: amounts cannot be negative")
    per_share = values[0]
    minimum = values[1] if len(values) > 1 else Decimal(0)
    max_pct = values[2] if len(values) > 2 else Decimal(100)
    return CommissionSchedule(per_share_usd=per_share, minimum_usd=minimum, maximum_pct_of_value=max_pct)
