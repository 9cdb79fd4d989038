"""Orders at the simulated broker: the ticket a client sends, the order it becomes, its executions, and the
confirmation questions the gateway may ask before it accepts an order.

One request may carry a bracket: a parent with a cOID and children whose `parentId` is that cOID. The
children wait (PreSubmitted) until the parent fills, and form a one-cancels-all group."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from broker.sim.errors import GatewayError
from broker.sim.instruments import Instrument

ORDER_TYPES = ("MKT", "LMT", "STP")
SIDES = ("BUY", "SELL")
TIMES_IN_FORCE = ("DAY", "GTC", "IOC")
WORKING_STATUSES = ("PreSubmitted", "Submitted")

# The texts IB shows for the confirmation questions the simulator can ask (by message id).
QUESTION_TEXTS: dict[str, str] = {
    "o10151": (
        'You are about to submit a market order "{order}". Market orders execute at the best available price, '
        "which may differ from the last price. Are you sure you want to submit this order?"
    ),
    "o163": (
        'The following order "{order}" price exceeds the Percentage constraint of 3%. '
        "Are you sure you want to submit this order?"
    ),
    "o354": (
        "You are submitting an order without market data. We strongly recommend against this as it may result "
        "in erroneous and unexpected trades. Are you sure you want to submit this order?"
    ),
    "o383": (
        'The following order "{order}" size exceeds the Size Limit of 500. Are you sure you want to submit this order?'
    ),
    "o2137": (
        'The order "{order}" crosses a working order of yours on the other side of the market. '
        "Are you sure you want to submit this order?"
    ),
}
GENERIC_QUESTION_TEXT = 'Please confirm the order "{order}". Are you sure you want to submit this order?'


@dataclass(frozen=True)
class OrderRequest:
    """A validated order ticket (one element of the `orders` list sent to the place-order tool)."""

    instrument: Instrument
    side: str
    quantity: Decimal
    order_type: str
    limit_price: Decimal | None
    tif: str
    outside_rth: bool
    client_order_id: str | None
    stop_price: Decimal | None = None
    parent_client_order_id: str | None = None

    @property
    def description(self) -> str:
        """IB's short form, e.g. "BUY 5 AAPL NASDAQ.NMS @ 189.50", "... @ MARKET" or "... @ STOP 180.00"."""
        if self.stop_price is not None:
            at = f"STOP {self.stop_price:.2f}"
        else:
            at = "MARKET" if self.limit_price is None else f"{self.limit_price:.2f}"
        quantity = f"{self.quantity.normalize():f}"
        return f"{self.side} {quantity} {self.instrument.symbol} {self.instrument.listing_exchange} @ {at}"


@dataclass
class SimOrder:
    order_id: int
    account_id: str
    instrument: Instrument
    side: str
    quantity: Decimal
    order_type: str
    limit_price: Decimal | None
    tif: str
    outside_rth: bool
    client_order_id: str | None
    status: str
    submitted_ms: int
    last_update_ms: int
    filled_quantity: Decimal = Decimal(0)
    avg_fill_price: Decimal | None = None
    stop_price: Decimal | None = None
    parent_id: int | None = None
    """The order id of the bracket parent this order is attached to."""

    @property
    def is_working(self) -> bool:
        return self.status in WORKING_STATUSES

    @property
    def is_filled(self) -> bool:
        return self.status == "Filled"

    @property
    def remaining_quantity(self) -> Decimal:
        return self.quantity - self.filled_quantity

    @property
    def symbol(self) -> str:
        return self.instrument.symbol


@dataclass(frozen=True)
class Execution:
    execution_id: str
    order_id: int
    account_id: str
    instrument: Instrument
    side: str
    quantity: Decimal
    price: Decimal
    commission: Decimal
    realized_pnl: Decimal
    ts_ms: int
    client_order_id: str | None


@dataclass(frozen=True)
class Question:
    """The gateway wants a confirmation (POST /iserver/reply/{reply_id}) before it accepts the order."""

    reply_id: str
    message_id: str
    message: str


@dataclass(frozen=True)
class Accepted:
    """The orders of one request (a single order, or a bracket's parent then its children)."""

    orders: tuple[SimOrder, ...]


@dataclass(frozen=True)
class Declined:
    """The client answered a question with confirmed=false: the order was never submitted."""

    reply_id: str


OrderOutcome = Question | Accepted | Declined


def question_text(message_id: str, request: OrderRequest) -> str:
    return QUESTION_TEXTS.get(message_id, GENERIC_QUESTION_TEXT).format(order=request.description)


def _decimal(value: Any, what: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise GatewayError(400, f"Invalid {what}: {value!r}") from exc
    if not number.is_finite():
        raise GatewayError(400, f"Invalid {what}: {value!r}")
    return number


def _conid(ticket: dict[str, Any]) -> int:
    raw = ticket.get("conid")
    if raw is None and ticket.get("conidex"):
        raw = str(ticket["conidex"]).split("@", 1)[0]
    if raw is None:
        raise GatewayError(400, "Order must specify conid or conidex")
    try:
        return int(str(raw).strip())
    except ValueError as exc:
        raise GatewayError(400, f"Invalid conid: {raw!r}") from exc


def parse_order_ticket(ticket: dict[str, Any], instruments_by_conid: dict[int, Instrument]) -> OrderRequest:
    """Validate one order ticket the way the gateway does, or raise the gateway's 400 answer."""
    conid = _conid(ticket)
    instrument = instruments_by_conid.get(conid)
    if instrument is None:
        raise GatewayError(400, f"No trading permissions or contract not found for conid {conid}")
    side = str(ticket.get("side", "")).upper()
    if side not in SIDES:
        raise GatewayError(400, f"Invalid side {ticket.get('side')!r}: use BUY or SELL")
    order_type = str(ticket.get("orderType", "")).upper()
    if order_type not in ORDER_TYPES:
        raise GatewayError(400, f"Order type {ticket.get('orderType')!r} is not supported (use MKT or LMT)")
    tif = str(ticket.get("tif", "DAY")).upper()
    if tif not in TIMES_IN_FORCE:
        raise GatewayError(400, f"Time in force {ticket.get('tif')!r} is not supported (use DAY, GTC or IOC)")
    quantity = _decimal(ticket.get("quantity"), "quantity")
    if quantity <= 0:
        raise GatewayError(400, f"Invalid quantity {ticket.get('quantity')!r}: must be positive")
    price = None
    if order_type in ("LMT", "STP"):
        what = "A limit order needs a price" if order_type == "LMT" else "A stop order needs its stop as price"
        if ticket.get("price") is None:
            raise GatewayError(400, what)
        price = _decimal(ticket["price"], "price")
        if price <= 0:
            raise GatewayError(400, f"Invalid price {ticket['price']!r}: must be positive")
    client_order_id = ticket.get("cOID")
    parent = ticket.get("parentId")
    return OrderRequest(
        instrument=instrument,
        side=side,
        quantity=quantity,
        order_type=order_type,
        limit_price=price if order_type == "LMT" else None,
        tif=tif,
        outside_rth=bool(ticket.get("outsideRTH", False)),
        client_order_id=str(client_order_id) if client_order_id else None,
        stop_price=price if order_type == "STP" else None,
        parent_client_order_id=str(parent) if parent else None,
    )


def parse_order_request(
    tickets: list[dict[str, Any]], instruments_by_conid: dict[int, Instrument]
) -> tuple[OrderRequest, ...]:
    """The `orders` list of one place-order request: one order, or one parent (with a cOID) followed by
    children whose parentId is that cOID. Anything else is refused with the gateway's 400 answer."""
    if not tickets:
        raise GatewayError(400, "The request has no orders")
    requests = tuple(parse_order_ticket(ticket, instruments_by_conid) for ticket in tickets)
    parent, children = requests[0], requests[1:]
    if parent.parent_client_order_id is not None:
        raise GatewayError(
            400, f"parentId {parent.parent_client_order_id!r} names no order in this request: list the parent first"
        )
    if children and parent.client_order_id is None:
        raise GatewayError(400, "A parent order with attached orders needs a cOID for its children's parentId")
    for child in children:
        if child.parent_client_order_id != parent.client_order_id:
            raise GatewayError(
                400,
                f"Attached order {child.description} must have parentId {parent.client_order_id!r} "
                "(one parent per request)",
            )
    coids = [request.client_order_id for request in requests if request.client_order_id is not None]
    if len(coids) != len(set(coids)):
        raise GatewayError(400, f"Each order of a request needs its own cOID: {coids}")
    return requests
