"""Short calls sold by covered_call, as position memory keeps them, and what the position monitor makes of each.

covered_call writes one memory entry per contract it sold, keyed by the contract ("AAPL 20260116 200 C"),
whose `exit_criteria_json` is a `ShortCallWatch`: what was decided at the sale (strike, expiry, the alert
distance, whether and when to buy back) and what the monitor has seen since (held at the broker, near the
strike, alerts raised, closed). `evaluate_short_call` is plain code over the broker's option position, the
underlying's price and a clock passed in; it says whether an alert or a buy to close is due, or that the
position is over (bought back, expired or assigned). Acting on that (runs, events, memory) is
position_monitor's job.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from broker.models import Position
from broker.options import ListedOption, OptionQuote, new_york_date, option_label
from workflows.models import OptionContract, OrderIntent
from workflows.store import PositionMemory

KIND = "covered_call"
NEAR_STRIKE = "near_strike"
BUY_TO_CLOSE = "buy_to_close"


class ShortCallWatch(BaseModel):
    """The exit criteria of one short call position, and the monitor's state for it. Prices USD per share."""

    kind: Literal["covered_call"] = KIND
    underlying: str
    option_conid: int
    strike: float = Field(gt=0)
    expiry: str = Field(pattern=r"^\d{8}$", description="YYYYMMDD")
    right: Literal["C"] = "C"
    multiplier: int = 100
    contracts: float = Field(description="contracts sold by the entry's order")
    premium_per_share_usd: float | None = None
    alert_within_pct: float = Field(default=2.0, ge=0)
    alert_when_underlying_at_or_above_usd: float
    buy_to_close: bool = True
    buy_to_close_days_before_expiry: int = Field(default=2, ge=0)
    order_status: str | None = None
    held: bool = Field(default=False, description="the short position has been seen at the broker")
    near_strike: bool = Field(default=False, description="the last look found the underlying near the strike")
    alerts: int = Field(default=0, description="near-strike alerts raised for this entry")
    last_alert: str | None = None
    closed_at: datetime | None = None
    closed_reason: str | None = None

    @classmethod
    def sold(
        cls,
        contract: OptionContract,
        *,
        contracts: float,
        premium_per_share_usd: float | None,
        alert_within_pct: float,
        buy_to_close: bool,
        buy_to_close_days_before_expiry: int,
        order_status: str | None,
    ) -> ShortCallWatch:
        assert contract.conid is not None, "a sold call has a conid"
        return cls(
            underlying=contract.underlying.upper(),
            option_conid=contract.conid,
            strike=contract.strike,
            expiry=contract.expiry,
            multiplier=contract.multiplier,
            contracts=contracts,
            premium_per_share_usd=premium_per_share_usd,
            alert_within_pct=alert_within_pct,
            alert_when_underlying_at_or_above_usd=round(contract.strike * (1 - alert_within_pct / 100), 2),
            buy_to_close=buy_to_close,
            buy_to_close_days_before_expiry=buy_to_close_days_before_expiry,
            order_status=order_status,
        )

    @property
    def listed(self) -> ListedOption:
        return ListedOption(
            underlying=self.underlying,
            conid=self.option_conid,
            expiry=self.expiry,
            strike=self.strike,
            right=self.right,
            multiplier=self.multiplier,
        )

    @property
    def key(self) -> str:
        """The position memory key: the contract's label."""
        return option_label(self.underlying, self.expiry, self.strike, self.right)

    def contract(self) -> OptionContract:
        return OptionContract(
            underlying=self.underlying,
            expiry=self.expiry,
            strike=self.strike,
            right=self.right,
            conid=self.option_conid,
            multiplier=self.multiplier,
        )


def short_call_watch(memory: PositionMemory) -> ShortCallWatch | None:
    """The memory's short-call watch, or None for any other memory (a stock position's exit criteria)."""
    criteria = json.loads(memory.exit_criteria_json or "{}")
    if not isinstance(criteria, dict) or criteria.get("kind") != KIND:
        return None
    return ShortCallWatch.model_validate(criteria)


def remembered(memory: PositionMemory, watch: ShortCallWatch, now: datetime) -> PositionMemory:
    """The memory entry with `watch` written back (same entry: same key, workflow and entry logic)."""
    return PositionMemory(
        symbol=memory.symbol,
        workflow_id=memory.workflow_id,
        entry_logic=memory.entry_logic,
        exit_criteria_json=watch.model_dump_json(),
        updated_at=now,
    )


class ShortCallStatus(BaseModel):
    """One remembered short call now. `workflow_id` is the entry's (the covered_call run that sold it)."""

    key: str
    workflow_id: str
    entry_logic: str
    watch: ShortCallWatch
    contracts_held: float
    option_price: float | None
    underlying_price: float | None
    strike_distance_pct: float | None = Field(description="strike above the underlying, % of it; < 0 past it")
    days_to_expiry: int
    near_strike: bool
    alert_due: bool
    close_due: bool
    over: str | None = Field(description="why the position is over (closed, expired), else None")
    reason: str


def evaluate_short_call(
    memory: PositionMemory,
    watch: ShortCallWatch,
    position: Position | None,
    underlying_price: float | None,
    now: datetime,
) -> ShortCallStatus:
    """Where the short call stands: held or gone, near the strike or not, how many days are left."""
    held = -position.quantity if position is not None and position.quantity < 0 else 0.0
    listed = watch.listed
    days = listed.days_to_expiry(new_york_date(now))
    distance_pct = round((watch.strike / underlying_price - 1) * 100, 2) if underlying_price else None
    near = bool(held and underlying_price and underlying_price >= watch.alert_when_underlying_at_or_above_usd)
    over = _over(watch, held, underlying_price, now >= listed.expires_at)
    close_due = bool(not over and held and watch.buy_to_close and days <= watch.buy_to_close_days_before_expiry)
    status = ShortCallStatus(
        key=memory.symbol,
        workflow_id=memory.workflow_id,
        entry_logic=memory.entry_logic,
        watch=watch,
        contracts_held=held,
        option_price=position.market_price if position is not None else None,
        underlying_price=underlying_price,
        strike_distance_pct=distance_pct,
        days_to_expiry=days,
        near_strike=near and not over,
        alert_due=near and not over and not watch.near_strike,
        close_due=close_due,
        over=over,
        reason="",
    )
    return status.model_copy(update={"reason": _reason(status)})


def _over(watch: ShortCallWatch, held: float, underlying_price: float | None, expired: bool) -> str | None:
    if expired:
        where = ""
        if underlying_price:
            side = "in the money: expect assignment" if underlying_price > watch.strike else "out of the money"
            where = f" with {watch.underlying} at ${underlying_price:,.2f} ({side})"
        return f"expired {watch.expiry} 16:00 New York{where}"
    if not held and watch.held:
        return "no longer held at the broker (bought back, assigned or expired)"
    return None


def _reason(status: ShortCallStatus) -> str:
    watch = status.watch
    if status.over:
        return f"{status.key}: {status.over}"
    if not status.contracts_held:
        return f"{status.key}: not held at the broker yet (sell order {watch.order_status or 'unknown'})"
    price = f"${status.underlying_price:,.2f}" if status.underlying_price else "no price"
    distance = ""
    if status.strike_distance_pct is not None:
        distance = (
            f", {status.strike_distance_pct:.2f}% below the strike"
            if status.strike_distance_pct >= 0
            else f", {-status.strike_distance_pct:.2f}% through the strike"
        )
    close = (
        f"buy to close {watch.buy_to_close_days_before_expiry} day(s) before expiry"
        if watch.buy_to_close
        else "buy to close off (alerts only)"
    )
    return (
        f"{status.contracts_held:g} short {status.key}: {watch.underlying} {price}{distance} (alert within "
        f"{watch.alert_within_pct:g}%, at ${watch.alert_when_underlying_at_or_above_usd:,.2f}); "
        f"{status.days_to_expiry} day(s) to expiry; {close}"
    )


def alert_text(status: ShortCallStatus) -> str:
    """The near-strike alert as the user reads it."""
    watch = status.watch
    assert status.underlying_price is not None and status.strike_distance_pct is not None
    where = (
        f"{status.strike_distance_pct:.2f}% below"
        if status.strike_distance_pct >= 0
        else f"{-status.strike_distance_pct:.2f}% above"
    )
    then = (
        f"a buy to close will be proposed {watch.buy_to_close_days_before_expiry} day(s) before expiry"
        if watch.buy_to_close
        else "buy to close is off for this position: consider buying back or accepting assignment"
    )
    return (
        f"{watch.underlying} ${status.underlying_price:,.2f} is {where} the ${watch.strike:g} strike of "
        f"{status.contracts_held:g} short {status.key} call(s) (alert within {watch.alert_within_pct:g}%); "
        f"{status.days_to_expiry} day(s) to expiry; {then}"
    )


def close_intent(status: ShortCallStatus, quote: OptionQuote | None, workflow: str) -> OrderIntent:
    """BUY back every contract held: a limit at the ask (else the mid / last), at market when unquoted."""
    watch = status.watch
    limit = (quote.ask or quote.mid) if quote is not None else None
    reference = limit or status.option_price or watch.premium_per_share_usd or 0.01
    return OrderIntent(
        workflow=workflow,
        symbol=watch.underlying,
        side="BUY",
        quantity=status.contracts_held,
        order_type="LMT" if limit else "MKT",
        limit_price=limit,
        reference_price=reference,
        option=watch.contract(),
    )


def close_details(status: ShortCallStatus, intent: OrderIntent) -> dict[str, object]:
    """What the buy-to-close proposal shows next to the order."""
    watch = status.watch
    price = intent.limit_price or intent.reference_price
    cost_usd = price * intent.quantity * watch.multiplier
    details: dict[str, object] = {
        "exit_rule": BUY_TO_CLOSE,
        "option": f"{status.key} (conid {watch.option_conid})",
        "contracts": intent.quantity,
        "days_to_expiry": status.days_to_expiry,
        "buy_to_close_days_before_expiry": watch.buy_to_close_days_before_expiry,
        "underlying_price_usd": status.underlying_price,
        "strike_usd": watch.strike,
        "strike_distance_pct": status.strike_distance_pct,
        "price_per_share_usd": price,
        "cost_usd": round(cost_usd, 2),
        "premium_received_per_share_usd": watch.premium_per_share_usd,
        "sold_by_workflow_id": status.workflow_id,
    }
    if watch.premium_per_share_usd is not None:
        details["pnl_usd"] = round((watch.premium_per_share_usd - price) * intent.quantity * watch.multiplier, 2)
    return details
