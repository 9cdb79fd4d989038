"""Pre-trade risk checks in plain code: no model output reaches an order without passing them.

Each rule is a small object with one method, `check(intent, ctx) -> RiskDenial | None`; the engine runs
them all and returns every denial, so the human sees all the reasons at once.

Edge semantics, the same for every limit: a limit is an inclusive maximum. A value equal to the limit is
allowed, anything above it is denied (an order of exactly $5,000.00 passes `max_order_notional_usd=5000`,
$5,000.01 does not). Comparisons ignore float noise below one part in 10⁹ of the limit, so 3 x $0.10
counts as $0.30. Durations are inclusive the other way round: a cooling-off of 30 minutes ends exactly
30 minutes after the loss.

"Reducing" is exact: an order reduces only when it is on the opposite side of the current position and,
together with the working orders on its own side, cannot take the position past zero. Reducing orders skip
the exposure rules (they can only lower exposure) and pass the REDUCING state, cooling-off and the circuit
breaker. Position and exposure rules count working orders at their worst case: every working order on the
order's side fills, none on the other side does; of a one-cancels-all group (a bracket's stop and target)
only the largest can fill.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from pydantic import AwareDatetime, BaseModel, Field, ValidationInfo, field_validator

from broker.models import Side
from workflows.models import OrderIntent, RiskDecision, RiskDenial, TradingMode

_RELATIVE_TOLERANCE = 1e-9


class TradingState(StrEnum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    """Only orders that reduce an existing position, never flip it."""
    HALTED = "HALTED"


class RiskLimits(BaseModel):
    """Every limit the engine enforces, with defaults for a small home account. All limits are inclusive."""

    max_order_notional_usd: float = 5_000.0
    max_position_shares_per_symbol: float = 1_000.0
    max_position_notional_usd_per_symbol: float = 10_000.0
    max_total_exposure_usd: float = 25_000.0
    max_buying_power_share_pct: float = Field(default=25.0, le=100)
    max_orders_per_minute: int = 5
    max_orders_per_hour: int = 30
    loss_cooloff_minutes: float = 30.0
    circuit_breaker_move_pct: float = 5.0
    circuit_breaker_window_minutes: float = 5.0
    enabled_strategies: frozenset[str] = frozenset({"price_alert"})
    allow_extended_hours: bool = False
    trading_mode: TradingMode = "paper"
    allowed_accounts: frozenset[str] = Field(
        default=frozenset(), description="account ids allowed to trade; empty means paper (DU) accounts only"
    )

    @field_validator(
        "max_order_notional_usd",
        "max_position_shares_per_symbol",
        "max_position_notional_usd_per_symbol",
        "max_total_exposure_usd",
        "max_buying_power_share_pct",
        "max_orders_per_minute",
        "max_orders_per_hour",
        "loss_cooloff_minutes",
        "circuit_breaker_move_pct",
        "circuit_breaker_window_minutes",
        mode="before",
    )
    @classmethod
    def _not_negative(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, int | float) and value < 0:
            raise ValueError(f"{info.field_name} must be 0 or more, got {value}")
        return value


class PositionSnapshot(BaseModel):
    """A held position: signed quantity in shares (negative = short) and its market price in USD."""

    quantity: float
    market_price_usd: float | None = Field(default=None, ge=0)


LIMITS_KEY = "risk_limits"
"""The preference key the limits are saved under (and re-read by every worker before each check)."""
STATE_KEY = "trading_state"
"""The preference key of the TradingState (the kill switch)."""


class WorkingOrder(BaseModel):
    """An order sent but not yet filled or cancelled; only its unfilled remainder counts."""

    symbol: str
    side: Side
    quantity: float = Field(gt=0)
    limit_price_usd: float | None = Field(default=None, gt=0)
    oca_group: str | None = Field(
        default=None, description="orders of one one-cancels-all group (a bracket's exits): at most one fills"
    )


class PricePoint(BaseModel):
    ts: AwareDatetime
    price_usd: float = Field(gt=0)


class RiskContext(BaseModel):
    """Everything the rules may look at, built by the caller right before each check."""

    account_id: str
    live_trading_enabled: bool = False
    positions: dict[str, PositionSnapshot] = Field(default_factory=dict)
    net_liquidation_usd: float | None = None
    buying_power_usd: float | None = None
    trading_state: TradingState = TradingState.ACTIVE
    now: AwareDatetime
    recent_order_times: list[AwareDatetime] = Field(default_factory=list)
    last_realized_loss_at: AwareDatetime | None = None
    recent_prices: dict[str, list[PricePoint]] = Field(default_factory=dict)
    market_open: bool = False
    """Regular trading hours are on now."""
    extended_hours: bool = False
    """The pre- or post-market session is on now."""
    working_orders: list[WorkingOrder] = Field(default_factory=list)

    @property
    def is_paper(self) -> bool:
        return self.account_id.startswith("DU")

    def position_shares(self, symbol: str) -> float:
        position = self.positions.get(symbol)
        return position.quantity if position else 0.0

    def working_shares(self, symbol: str, side: Side) -> float:
        """Shares the working orders on one side can still trade: a one-cancels-all group counts once, at its
        largest order."""
        alone = 0.0
        grouped: dict[str, float] = {}
        for o in self.working_orders:
            if o.symbol != symbol or o.side != side:
                continue
            if o.oca_group is None:
                alone += o.quantity
            else:
                grouped[o.oca_group] = max(grouped.get(o.oca_group, 0.0), o.quantity)
        return alone + sum(grouped.values())

    def mark_price_usd(self, symbol: str) -> float:
        """The highest price known for the symbol: valuing at the highest keeps exposure an upper bound."""
        known = [o.limit_price_usd for o in self.working_orders if o.symbol == symbol and o.limit_price_usd]
        position = self.positions.get(symbol)
        if position and position.market_price_usd is not None:
            known.append(position.market_price_usd)
        if self.recent_prices.get(symbol):
            known.append(max(self.recent_prices[symbol], key=lambda p: p.ts).price_usd)
        return max(known, default=0.0)

    def orders_since(self, start: datetime) -> int:
        return sum(1 for t in self.recent_order_times if start < t <= self.now)


def order_price_usd(intent: OrderIntent) -> float:
    return intent.limit_price or intent.reference_price


def is_reducing(intent: OrderIntent, ctx: RiskContext) -> bool:
    """True when the order, with every working order on its side, cannot take the position past zero."""
    position = ctx.position_shares(intent.symbol)
    same_side = intent.quantity + ctx.working_shares(intent.symbol, intent.side)
    if intent.side == "SELL":
        return position > 0 and _at_most(same_side, position)
    return position < 0 and _at_most(same_side, -position)


def worst_case_shares(ctx: RiskContext, symbol: str, extra_buy: float = 0.0, extra_sell: float = 0.0) -> float:
    """The largest absolute position any combination of working-order fills can leave."""
    position = ctx.position_shares(symbol)
    highest = position + ctx.working_shares(symbol, "BUY") + extra_buy
    lowest = position - ctx.working_shares(symbol, "SELL") - extra_sell
    return max(abs(highest), abs(lowest))


def worst_case_exposure_usd(ctx: RiskContext, intent: OrderIntent | None = None) -> float:
    """Gross exposure over all symbols at worst case, valued at each symbol's highest known price."""
    symbols = set(ctx.positions) | {o.symbol for o in ctx.working_orders}
    if intent is not None:
        symbols.add(intent.symbol)
    total = 0.0
    for symbol in symbols:
        extra_buy = extra_sell = 0.0
        mark = ctx.mark_price_usd(symbol)
        if intent is not None and symbol == intent.symbol:
            extra_buy = intent.quantity if intent.side == "BUY" else 0.0
            extra_sell = intent.quantity if intent.side == "SELL" else 0.0
            mark = max(mark, order_price_usd(intent))
        total += worst_case_shares(ctx, symbol, extra_buy, extra_sell) * mark
    return total


def unpriced_symbols(ctx: RiskContext) -> list[str]:
    """Symbols held or worked with no known price: their exposure cannot be valued."""
    symbols = set(ctx.positions) | {o.symbol for o in ctx.working_orders}
    return sorted(s for s in symbols if worst_case_shares(ctx, s) > 0 and ctx.mark_price_usd(s) == 0)


def _exceeds(value: float, limit: float) -> bool:
    return value > limit + _RELATIVE_TOLERANCE * max(1.0, abs(limit))


def _at_most(value: float, limit: float) -> bool:
    return not _exceeds(value, limit)


def _usd(amount: float) -> str:
    return f"${amount:,.2f}"


def _shares(quantity: float) -> str:
    return f"{quantity:,.0f}" if float(quantity).is_integer() else f"{quantity:,.4f}".rstrip("0")


def _side_extreme_shares(intent: OrderIntent, ctx: RiskContext) -> float:
    """The position on the order's side if it and every working order on that side fill (0 if none)."""
    position = ctx.position_shares(intent.symbol)
    working = ctx.working_shares(intent.symbol, intent.side)
    if intent.side == "BUY":
        return max(0.0, position + working + intent.quantity)
    return max(0.0, -(position - working - intent.quantity))


class RiskRule(Protocol):
    name: str

    def check(self, intent: OrderIntent, ctx: RiskContext) -> RiskDenial | None: ...


@dataclass(frozen=True)
class MaxOrderNotional:
    """A fat-finger guard: applies to every order, reducing ones too."""

    max_usd: float
    name: str = "max_order_notional_usd"

    def check(self, intent: OrderIntent, ctx: RiskContext) -> RiskDenial | None:
        if _at_most(intent.notional_usd, self.max_usd):
            return None
        return RiskDenial(
            rule=self.name, reason=f"order {_usd(intent.notional_usd)} > {self.name} {_usd(self.max_usd)}"
        )


@dataclass(frozen=True)
class MaxPositionShares:
    max_shares: float
    name: str = "max_position_shares_per_symbol"

    def check(self, intent: OrderIntent, ctx: RiskContext) -> RiskDenial | None:
        if is_reducing(intent, ctx):
            return None
        after = _side_extreme_shares(intent, ctx)
        if _at_most(after, self.max_shares):
            return None
        return RiskDenial(
            rule=self.name,
            reason=(
                f"{intent.symbol} position would reach {_shares(after)} shares (incl. working orders) "
                f"> {self.name} {_shares(self.max_shares)}"
            ),
        )


@dataclass(frozen=True)
class MaxPositionNotional:
    max_usd: float
    name: str = "max_position_notional_usd_per_symbol"

    def check(self, intent: OrderIntent, ctx: RiskContext) -> RiskDenial | None:
        if is_reducing(intent, ctx):
            return None
        mark = max(ctx.mark_price_usd(intent.symbol), order_price_usd(intent))
        after_usd = _side_extreme_shares(intent, ctx) * mark
        if _at_most(after_usd, self.max_usd):
            return None
        return RiskDenial(
            rule=self.name,
            reason=(
                f"{intent.symbol} position would reach {_usd(after_usd)} (incl. working orders) "
                f"> {self.name} {_usd(self.max_usd)}"
            ),
        )


@dataclass(frozen=True)
class MaxTotalExposure:
    max_usd: float
    name: str = "max_total_exposure_usd"

    def check(self, intent: OrderIntent, ctx: RiskContext) -> RiskDenial | None:
        if is_reducing(intent, ctx):
            return None
        # A position or working order without any price would count as $0: fail closed instead.
        unpriced = [s for s in unpriced_symbols(ctx) if s != intent.symbol]
        if unpriced:
            return RiskDenial(
                rule=self.name, reason=f"no price known for {', '.join(unpriced)}: exposure cannot be valued"
            )
        after_usd = worst_case_exposure_usd(ctx, intent)
        if _at_most(after_usd, self.max_usd):
            return None
        return RiskDenial(
            rule=self.name,
            reason=f"gross exposure would reach {_usd(after_usd)} > {self.name} {_usd(self.max_usd)}",
        )


@dataclass(frozen=True)
class MaxBuyingPowerShare:
    max_pct: float
    name: str = "max_buying_power_share_pct"

    def check(self, intent: OrderIntent, ctx: RiskContext) -> RiskDenial | None:
        if is_reducing(intent, ctx):
            return None
        if ctx.buying_power_usd is None or ctx.buying_power_usd <= 0:
            return RiskDenial(rule=self.name, reason="buying power is unknown or zero: no new entries")
        cap_usd = ctx.buying_power_usd * self.max_pct / 100
        if _at_most(intent.notional_usd, cap_usd):
            return None
        return RiskDenial(
            rule=self.name,
            reason=(
                f"order {_usd(intent.notional_usd)} > {self.max_pct:g}% of buying power "
                f"{_usd(ctx.buying_power_usd)} = {_usd(cap_usd)}"
            ),
        )


@dataclass(frozen=True)
class MaxOrderRate:
    """At most `max_orders` orders, this one included, in any trailing window; applies to every order."""

    max_orders: int
    window: timedelta
    name: str

    def check(self, intent: OrderIntent, ctx: RiskContext) -> RiskDenial | None:
        already = ctx.orders_since(ctx.now - self.window)
        if already + 1 <= self.max_orders:
            return None
        return RiskDenial(
            rule=self.name,
            reason=f"{already} orders in the last {_duration(self.window)}; {self.name} is {self.max_orders}",
        )


@dataclass(frozen=True)
class LossCooloff:
    """After a realised loss, no new entries until the cooling-off ends; reducing orders stay allowed."""

    cooloff: timedelta
    name: str = "loss_cooloff_minutes"

    def check(self, intent: OrderIntent, ctx: RiskContext) -> RiskDenial | None:
        if ctx.last_realized_loss_at is None or is_reducing(intent, ctx):
            return None
        ends_at = ctx.last_realized_loss_at + self.cooloff
        if ctx.now >= ends_at:
            return None
        return RiskDenial(
            rule=self.name,
            reason=f"cooling off after a realised loss at {ctx.last_realized_loss_at.isoformat()} "
            f"until {ends_at.isoformat()}: only reducing orders",
        )


def largest_move_pct(points: Sequence[PricePoint]) -> float:
    """The largest move from an earlier price to a later one, up or down, in percent of the earlier one."""
    largest = 0.0
    low = high = None
    for point in sorted(points, key=lambda p: p.ts):
        if low is not None and high is not None:
            largest = max(largest, (point.price_usd - low) / low * 100, (high - point.price_usd) / high * 100)
        low = point.price_usd if low is None else min(low, point.price_usd)
        high = point.price_usd if high is None else max(high, point.price_usd)
    return largest


@dataclass(frozen=True)
class CircuitBreaker:
    """A symbol that moved more than `move_pct` within the window takes no new entries."""

    move_pct: float
    window: timedelta
    name: str = "circuit_breaker"

    def check(self, intent: OrderIntent, ctx: RiskContext) -> RiskDenial | None:
        if is_reducing(intent, ctx):
            return None
        start = ctx.now - self.window
        in_window = [p for p in ctx.recent_prices.get(intent.symbol, []) if start <= p.ts <= ctx.now]
        move_pct = largest_move_pct(in_window)
        if _at_most(move_pct, self.move_pct):
            return None
        return RiskDenial(
            rule=self.name,
            reason=(
                f"{intent.symbol} moved {move_pct:.2f}% in the last {_duration(self.window)} "
                f"> circuit_breaker_move_pct {self.move_pct:g}%: no new entries"
            ),
        )


@dataclass(frozen=True)
class TradingStateRule:
    name: str = "trading_state"

    def check(self, intent: OrderIntent, ctx: RiskContext) -> RiskDenial | None:
        if ctx.trading_state is TradingState.HALTED:
            return RiskDenial(rule=self.name, reason="trading is HALTED: no orders")
        if ctx.trading_state is TradingState.REDUCING and not is_reducing(intent, ctx):
            return RiskDenial(
                rule=self.name,
                reason=(
                    f"trading is REDUCING: {intent.side} {_shares(intent.quantity)} {intent.symbol} would "
                    f"not only reduce the position of {_shares(ctx.position_shares(intent.symbol))} shares "
                    "(working orders included)"
                ),
            )
        return None


@dataclass(frozen=True)
class StrategyWhitelist:
    enabled: frozenset[str]
    name: str = "enabled_strategies"

    def check(self, intent: OrderIntent, ctx: RiskContext) -> RiskDenial | None:
        if intent.workflow in self.enabled:
            return None
        enabled = ", ".join(sorted(self.enabled)) or "none"
        return RiskDenial(
            rule=self.name,
            reason=f"workflow {intent.workflow!r} is not enabled for trading (enabled: {enabled})",
        )


@dataclass(frozen=True)
class MarketHours:
    """Regular hours always; extended hours only for an `outside_rth` order when allowed; never when closed.

    An `outside_rth` order is refused whenever extended hours are not allowed, even in regular hours,
    because IB may fill it after the close.
    """

    allow_extended_hours: bool
    name: str = "market_hours"

    def check(self, intent: OrderIntent, ctx: RiskContext) -> RiskDenial | None:
        if intent.outside_rth and not self.allow_extended_hours:
            return RiskDenial(rule=self.name, reason="outside_rth orders need allow_extended_hours")
        if ctx.market_open:
            return None
        if ctx.extended_hours and intent.outside_rth:
            return None
        if ctx.extended_hours:
            return RiskDenial(rule=self.name, reason="extended hours: only outside_rth orders")
        return RiskDenial(rule=self.name, reason="the market is closed")


@dataclass(frozen=True)
class TradingModeRule:
    """Live mode needs the explicit setting and a live account; paper mode never touches a live account."""

    mode: TradingMode
    name: str = "trading_mode"

    def check(self, intent: OrderIntent, ctx: RiskContext) -> RiskDenial | None:
        if self.mode == "paper" and not ctx.is_paper:
            return RiskDenial(
                rule=self.name,
                reason=f"paper mode refuses account {ctx.account_id}: not a paper (DU) account",
            )
        if self.mode == "live" and not ctx.live_trading_enabled:
            return RiskDenial(rule=self.name, reason="live mode needs live_trading_enabled to be set explicitly")
        if self.mode == "live" and ctx.is_paper:
            return RiskDenial(
                rule=self.name,
                reason=f"live mode refuses account {ctx.account_id}: it is a paper (DU) account",
            )
        return None


@dataclass(frozen=True)
class AccountAllowList:
    allowed: frozenset[str]
    name: str = "allowed_accounts"

    def check(self, intent: OrderIntent, ctx: RiskContext) -> RiskDenial | None:
        if ctx.account_id in self.allowed or (not self.allowed and ctx.is_paper):
            return None
        if not self.allowed:
            return RiskDenial(
                rule=self.name,
                reason=f"account {ctx.account_id} is not a paper account and allowed_accounts is empty",
            )
        return RiskDenial(rule=self.name, reason=f"account {ctx.account_id} is not in allowed_accounts")


def _duration(window: timedelta) -> str:
    minutes = window.total_seconds() / 60
    return f"{minutes:g} minute" if minutes == 1 else f"{minutes:g} minutes"


def default_rules(limits: RiskLimits) -> list[RiskRule]:
    return [
        TradingStateRule(),
        TradingModeRule(limits.trading_mode),
        AccountAllowList(limits.allowed_accounts),
        StrategyWhitelist(limits.enabled_strategies),
        MarketHours(limits.allow_extended_hours),
        MaxOrderNotional(limits.max_order_notional_usd),
        MaxPositionShares(limits.max_position_shares_per_symbol),
        MaxPositionNotional(limits.max_position_notional_usd_per_symbol),
        MaxTotalExposure(limits.max_total_exposure_usd),
        MaxBuyingPowerShare(limits.max_buying_power_share_pct),
        MaxOrderRate(limits.max_orders_per_minute, timedelta(minutes=1), "max_orders_per_minute"),
        MaxOrderRate(limits.max_orders_per_hour, timedelta(hours=1), "max_orders_per_hour"),
        LossCooloff(timedelta(minutes=limits.loss_cooloff_minutes)),
        CircuitBreaker(limits.circuit_breaker_move_pct, timedelta(minutes=limits.circuit_breaker_window_minutes)),
    ]


class RiskEngine:
    """Runs every rule and collects every denial; an order is allowed only when no rule denies it."""

    def __init__(self, limits: RiskLimits, rules: Sequence[RiskRule] | None = None) -> None:
        self.limits = limits
        self.rules: list[RiskRule] = list(rules) if rules is not None else default_rules(limits)

    def check(self, intent: OrderIntent, ctx: RiskContext) -> RiskDecision:
        denials = [d for d in (rule.check(intent, ctx) for rule in self.rules) if d is not None]
        return RiskDecision(allowed=not denials, denials=denials)

    def describe(self, ctx: RiskContext | None = None) -> dict[str, Any]:
        """Limits and rule names, plus the live state when a context is given (for get_context)."""
        description: dict[str, Any] = {
            "limits": self.limits.model_dump(mode="json"),
            "rules": [rule.name for rule in self.rules],
            "semantics": "limits are inclusive maxima; reducing orders skip exposure, cooling-off and "
            "circuit-breaker rules; working orders count at their worst case",
        }
        if ctx is None:
            return description
        cooloff_ends = (
            ctx.last_realized_loss_at + timedelta(minutes=self.limits.loss_cooloff_minutes)
            if ctx.last_realized_loss_at
            else None
        )
        description["state"] = {
            "trading_state": ctx.trading_state.value,
            "trading_mode": self.limits.trading_mode,
            "account_id": ctx.account_id,
            "is_paper": ctx.is_paper,
            "live_trading_enabled": ctx.live_trading_enabled,
            "net_liquidation_usd": ctx.net_liquidation_usd,
            "buying_power_usd": ctx.buying_power_usd,
            "gross_exposure_usd": round(worst_case_exposure_usd(ctx), 2),
            "orders_last_minute": ctx.orders_since(ctx.now - timedelta(minutes=1)),
            "orders_last_hour": ctx.orders_since(ctx.now - timedelta(hours=1)),
            "cooling_off_until": cooloff_ends.isoformat() if cooloff_ends and cooloff_ends > ctx.now else None,
            "market_open": ctx.market_open,
            "extended_hours": ctx.extended_hours,
        }
        return description
