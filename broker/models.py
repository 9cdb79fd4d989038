"""Typed results of broker calls. Nothing here knows IB_MCP's payload shapes (see ib_mcp_tools)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

Side = Literal["BUY", "SELL"]
OrderType = Literal["MKT", "LMT"]
TimeInForce = Literal["DAY", "GTC", "IOC"]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Quote(BaseModel):
    """One market-data snapshot row. A field the broker did not send is None ("no quote yet")."""

    symbol: str
    conid: int
    last: float | None = None
    bid: float | None = None
    ask: float | None = None
    volume: float | None = None
    open: float | None = None
    prior_close: float | None = None
    halted: bool = False
    closed: bool = False
    ts: datetime = Field(default_factory=utc_now)

    @property
    def price(self) -> float | None:
        """Last trade, else the bid/ask mid, else whichever side exists."""
        if self.last is not None:
            return self.last
        if self.bid is not None and self.ask is not None:
            return (self.bid + self.ask) / 2
        return self.bid if self.bid is not None else self.ask


class Account(BaseModel):
    account_id: str
    currency: str = "USD"
    net_liquidation_usd: float | None = None
    cash_usd: float | None = None
    buying_power_usd: float | None = None
    available_funds_usd: float | None = None

    @property
    def is_paper(self) -> bool:
        return self.account_id.startswith("DU")


class Position(BaseModel):
    account_id: str
    symbol: str
    conid: int
    quantity: float
    avg_cost: float
    market_price: float | None = None
    market_value: float | None = None
    unrealized_pnl: float | None = None
    realized_pnl: float | None = None
    asset_class: str = "STK"


class OrderTicket(BaseModel):
    """What the overlay asks the broker to do. `client_order_id` is sent as IB's cOID: the idempotency key."""

    account_id: str
    symbol: str
    side: Side
    quantity: float = Field(gt=0)
    order_type: OrderType = "MKT"
    limit_price: float | None = Field(default=None, gt=0)
    tif: TimeInForce = "DAY"
    outside_rth: bool = False
    client_order_id: str = Field(min_length=1, max_length=64)
    conid: int | None = None


OrderStatus = Literal[
    "PendingSubmit",
    "PreSubmitted",
    "Submitted",
    "Filled",
    "Cancelled",
    "Inactive",
    "PendingCancel",
    "Unknown",
]


class Order(BaseModel):
    order_id: str
    account_id: str
    symbol: str
    conid: int
    side: Side
    quantity: float
    filled_quantity: float = 0.0
    order_type: str = "MKT"
    limit_price: float | None = None
    avg_fill_price: float | None = None
    status: str = "Unknown"
    client_order_id: str | None = None

    @property
    def is_working(self) -> bool:
        return self.status in ("PendingSubmit", "PreSubmitted", "Submitted")

    @property
    def is_filled(self) -> bool:
        return self.status == "Filled"


class OrderAck(BaseModel):
    """The broker accepted an order (after any confirmation replies we were allowed to answer)."""

    order_id: str
    status: str
    client_order_id: str
    confirmations_answered: list[str] = Field(default_factory=list)
