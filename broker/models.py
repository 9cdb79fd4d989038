"""Typed results of broker calls. Nothing here knows IB_MCP's payload shapes (see ib_mcp_tools)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

Side = Literal["BUY", "SELL"]
OrderType = Literal["MKT", "LMT"]
"""What a proposal may ask for; the broker also takes STP, used only for a bracket's stop-loss."""
TicketOrderType = Literal["MKT", "LMT", "STP"]
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
    """What the overlay asks the broker to do. `client_order_id` is sent as IB's cOID: the idempotency key.
    A STP order needs `stop_price`: it becomes a market order once the last price reaches it."""

    account_id: str
    symbol: str
    side: Side
    quantity: float = Field(gt=0)
    order_type: TicketOrderType = "MKT"
    limit_price: float | None = Field(default=None, gt=0)
    stop_price: float | None = Field(default=None, gt=0)
    tif: TimeInForce = "DAY"
    outside_rth: bool = False
    client_order_id: str = Field(min_length=1, max_length=64)
    conid: int | None = None

    @model_validator(mode="after")
    def _stop_needs_its_price(self) -> OrderTicket:
        if self.order_type == "STP" and self.stop_price is None:
            raise ValueError("a STP order needs stop_price")
        return self


STOP_LOSS_SUFFIX = "-stop"
TAKE_PROFIT_SUFFIX = "-target"


def bracket_of(client_order_id: str | None) -> str | None:
    """The entry cOID of the bracket whose exit this is, or None: a bracket's two exits are one-cancels-all,
    so at most one of them can ever fill."""
    for suffix in (STOP_LOSS_SUFFIX, TAKE_PROFIT_SUFFIX):
        if client_order_id and client_order_id.endswith(suffix):
            return client_order_id.removesuffix(suffix)
    return None


class BracketTicket(BaseModel):
    """An entry with its two exits held at the broker: a stop-loss (STP) and a take-profit (LMT) on the other
    side, each for the entry's whole quantity. IB sends the three in one request, the children naming the
    entry's cOID as their parentId: they stay inactive until the entry fills, and when one fills IB cancels
    the other (one-cancels-all). The children's cOIDs are the entry's plus "-stop" / "-target"."""

    entry: OrderTicket
    stop_price: float = Field(gt=0)
    target_price: float = Field(gt=0)
    exit_tif: TimeInForce = "GTC"

    @model_validator(mode="after")
    def _exits_on_either_side(self) -> BracketTicket:
        """The stop on the losing side of the target, and a limit entry short of its own stop."""
        if self.entry.order_type == "STP":
            raise ValueError("a bracket's entry is a MKT or LMT order")
        sign = 1 if self.entry.side == "BUY" else -1  # prices above the stop are winning for a buyer
        if sign * (self.target_price - self.stop_price) <= 0:
            raise ValueError(
                f"a {self.entry.side} bracket needs its stop ({self.stop_price}) on the losing side of its "
                f"target ({self.target_price})"
            )
        limit = self.entry.limit_price
        if limit is not None and sign * (limit - self.stop_price) <= 0:
            raise ValueError(f"the entry's limit {limit} is past its own stop {self.stop_price}")
        return self

    def _exit(self, suffix: str, **order: Any) -> OrderTicket:
        return OrderTicket(
            account_id=self.entry.account_id,
            symbol=self.entry.symbol,
            side="SELL" if self.entry.side == "BUY" else "BUY",
            quantity=self.entry.quantity,
            tif=self.exit_tif,
            outside_rth=self.entry.outside_rth,
            client_order_id=f"{self.entry.client_order_id}{suffix}",
            conid=self.entry.conid,
            **order,
        )

    @property
    def stop_loss(self) -> OrderTicket:
        return self._exit(STOP_LOSS_SUFFIX, order_type="STP", stop_price=self.stop_price)

    @property
    def take_profit(self) -> OrderTicket:
        return self._exit(TAKE_PROFIT_SUFFIX, order_type="LMT", limit_price=self.target_price)

    @property
    def tickets(self) -> tuple[OrderTicket, OrderTicket, OrderTicket]:
        """Entry, stop-loss, take-profit: the order IB receives them in."""
        return self.entry, self.stop_loss, self.take_profit


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


class BracketAck(BaseModel):
    """The broker accepted a bracket: the ack of each of its three orders."""

    entry: OrderAck
    stop_loss: OrderAck
    take_profit: OrderAck
