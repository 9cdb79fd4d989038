"""Placing an order exactly once.

The client order id (IB's cOID) is derived from the approval, so every retry, restart or second approval
of one proposal names the same order. The ledger row is claimed before anything is sent, and only the
task that moves it from "intent" (or "failed" / "unknown" with no such order at the broker) to "sent"
may talk to the broker.

A bracket (entry + stop-loss + take-profit, one request) is claimed as three rows under the entry's cOID and
the children's derived ones; the entry's row carries the send right for all three, so the request goes out
once, and a lost answer is resolved by looking the three up by cOID, never by sending again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
from sqlalchemy import update
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.client import BrokerClient
from broker.errors import BrokerError, BrokerUnavailable, OrderConfirmationRefused
from broker.models import BracketTicket, Order, OrderTicket
from workflows.store import OrderRecord, WorkflowStore
from workflows.times import utc_now

log = logging.getLogger(__name__)

FILL_POLLS = 5
FILL_POLL_INTERVAL_S = 0.2
RESENDABLE = ("intent", "failed", "unknown")
OPEN = ("sent", "unknown", "submitted")
"""Ledger statuses of an order that may still be working at the broker."""


@dataclass(frozen=True)
class BracketRecords:
    """The ledger rows of one bracket: its entry and the two exits attached to it at the broker."""

    entry: OrderRecord
    stop_loss: OrderRecord
    take_profit: OrderRecord

    @property
    def exits(self) -> tuple[OrderRecord, OrderRecord]:
        return self.stop_loss, self.take_profit


def client_order_id(approval_id: str) -> str:
    """IB keeps a cOID unique for 24 h; ours is unique for ever because approval ids are."""
    return f"ovl-{approval_id}"


async def _take_send_right(store: WorkflowStore, coid: str, from_statuses: tuple[str, ...]) -> bool:
    async with AsyncSession(store.workflow_engine) as session:
        result = await session.exec(
            update(OrderRecord)
            .where(col(OrderRecord.client_order_id) == coid, col(OrderRecord.status).in_(from_statuses))
            .values(status="sent", updated_at=utc_now(), error=None)
        )
        await session.commit()
        return result.rowcount == 1


async def _adopt_broker_order(store: WorkflowStore, coid: str, order: Order) -> OrderRecord:
    await store.update_order(
        coid,
        status=_ledger_status(order),
        broker_order_id=order.order_id,
        filled_quantity=order.filled_quantity,
        avg_fill_price=order.avg_fill_price,
    )
    record = await store.get_order(coid)
    assert record is not None
    return record


def _ledger_status(order: Order) -> str:
    if order.is_filled:
        return "filled"
    if order.status in ("Cancelled", "Inactive"):
        return "cancelled"
    return "submitted"


def _intent_row(ticket: OrderTicket, workflow_id: str, approval_id: str | None) -> OrderRecord:
    """The ledger row of an order not yet sent. A STP's stop price is kept in `limit_price`: it is the
    order's `price` at IB."""
    return OrderRecord(
        client_order_id=ticket.client_order_id,
        workflow_id=workflow_id,
        approval_id=approval_id,
        account_id=ticket.account_id,
        symbol=ticket.symbol,
        side=ticket.side,
        quantity=ticket.quantity,
        order_type=ticket.order_type,
        limit_price=ticket.stop_price if ticket.order_type == "STP" else ticket.limit_price,
    )


async def place_once(
    broker: BrokerClient,
    store: WorkflowStore,
    ticket: OrderTicket,
    *,
    workflow_id: str,
    approval_id: str | None,
) -> OrderRecord:
    """Send `ticket` unless an order with its client order id exists (in the ledger or at the broker)."""
    coid = ticket.client_order_id
    record, first = await store.claim_order(_intent_row(ticket, workflow_id, approval_id))
    if not first and record.status not in RESENDABLE:
        return await refresh_fill(broker, store, record)
    if not first:
        at_broker = await broker.find_order(coid)
        if at_broker is not None:
            return await _adopt_broker_order(store, coid, at_broker)
    if not await _take_send_right(store, coid, RESENDABLE):
        current = await store.get_order(coid)
        assert current is not None
        return current
    try:
        ack = await broker.place_order(ticket)
    except OrderConfirmationRefused as exc:
        await store.update_order(coid, status="failed", error=str(exc))
        raise
    except BrokerUnavailable as exc:
        await store.update_order(coid, status="unknown", error=str(exc))
        raise
    except BrokerError as exc:
        at_broker = await _find_quietly(broker, coid)
        if at_broker is not None:
            return await _adopt_broker_order(store, coid, at_broker)
        await store.update_order(coid, status="failed", error=str(exc))
        raise
    await store.update_order(coid, status="submitted", broker_order_id=ack.order_id)
    record = await store.get_order(coid)
    assert record is not None
    return await refresh_fill(broker, store, record)


async def place_bracket_once(
    broker: BrokerClient,
    store: WorkflowStore,
    bracket: BracketTicket,
    *,
    workflow_id: str,
    approval_id: str | None,
) -> BracketRecords:
    """Send the bracket (one request, three orders) unless its entry exists in the ledger or at the broker.

    All three rows are claimed before anything is sent; the entry's row is the send right for the bracket
    (the children's rows move with it). After a failed or lost answer the three are looked up by cOID."""
    coids = tuple(ticket.client_order_id for ticket in bracket.tickets)
    entry_coid = coids[0]
    claims = [await store.claim_order(_intent_row(ticket, workflow_id, approval_id)) for ticket in bracket.tickets]
    record, first = claims[0]
    if not first and record.status not in RESENDABLE:
        return await refresh_bracket(broker, store, coids)
    if not first:
        at_broker = await _find_orders(broker, coids)
        if entry_coid in at_broker:
            return await _adopt_bracket(store, coids, at_broker)
    if not await _take_send_right(store, entry_coid, RESENDABLE):
        return await _bracket_records(store, coids)
    await _update_all(store, coids[1:], status="sent", error=None)
    try:
        ack = await broker.place_bracket(bracket)
    except OrderConfirmationRefused as exc:
        await _update_all(store, coids, status="failed", error=str(exc))
        raise
    except BrokerUnavailable as exc:
        await _update_all(store, coids, status="unknown", error=str(exc))
        raise
    except BrokerError as exc:
        at_broker = await _find_orders_quietly(broker, coids)
        if entry_coid in at_broker:
            return await _adopt_bracket(store, coids, at_broker)
        await _update_all(store, coids, status="failed", error=str(exc))
        raise
    for coid, order_ack in zip(coids, (ack.entry, ack.stop_loss, ack.take_profit), strict=True):
        await store.update_order(coid, status="submitted", broker_order_id=order_ack.order_id)
    return await refresh_bracket(broker, store, coids)


async def refresh_bracket(broker: BrokerClient, store: WorkflowStore, coids: Sequence[str]) -> BracketRecords:
    """The entry polled until it is no longer working (as refresh_fill), each exit's state asked once."""
    records = await _bracket_records(store, coids)
    entry = await refresh_fill(broker, store, records.entry)
    stop_loss, take_profit = await refresh_orders(broker, store, [r.client_order_id for r in records.exits])
    return BracketRecords(entry, stop_loss, take_profit)


async def refresh_orders(broker: BrokerClient, store: WorkflowStore, coids: Sequence[str]) -> list[OrderRecord]:
    """Each order's ledger row, brought up to date with one status call per order that may still be working."""
    refreshed: list[OrderRecord] = []
    for coid in coids:
        record = await store.get_order(coid)
        if record is None:
            raise BrokerError(f"no ledger row for order {coid}")
        if record.status in OPEN and record.broker_order_id is not None:
            record = await _adopt_broker_order(store, coid, await broker.order_status(record.broker_order_id))
        refreshed.append(record)
    return refreshed


async def cancel_orders(broker: BrokerClient, store: WorkflowStore, coids: Sequence[str]) -> list[OrderRecord]:
    """Cancel the orders still working, then wait (a few status polls) until none is. An order that filled
    meanwhile is reported filled; one that is still working at the end is reported as it is."""
    records = await refresh_orders(broker, store, coids)
    for record in records:
        if record.status == "submitted" and record.broker_order_id is not None:
            try:
                await broker.cancel_order(record.account_id, record.broker_order_id)
            except BrokerError as exc:  # filled or already cancelled meanwhile (IB cancels a bracket's siblings)
                log.info("cancel of %s answered: %s", record.client_order_id, exc)
    for attempt in range(FILL_POLLS):
        records = await refresh_orders(broker, store, coids)
        if not any(record.status == "submitted" for record in records):
            break
        if attempt < FILL_POLLS - 1:
            await anyio.sleep(FILL_POLL_INTERVAL_S)
    return records


async def _bracket_records(store: WorkflowStore, coids: Sequence[str]) -> BracketRecords:
    rows = [await store.get_order(coid) for coid in coids]
    entry, stop_loss, take_profit = rows
    assert entry is not None and stop_loss is not None and take_profit is not None
    return BracketRecords(entry, stop_loss, take_profit)


async def _update_all(store: WorkflowStore, coids: Sequence[str], **changes: object) -> None:
    for coid in coids:
        await store.update_order(coid, **changes)


async def _find_orders(broker: BrokerClient, coids: Sequence[str]) -> dict[str, Order]:
    """The broker's orders carrying these cOIDs (one live-orders call)."""
    wanted = set(coids)
    return {o.client_order_id: o for o in await broker.live_orders() if o.client_order_id in wanted}


async def _find_orders_quietly(broker: BrokerClient, coids: Sequence[str]) -> dict[str, Order]:
    try:
        return await _find_orders(broker, coids)
    except BrokerError:
        return {}


async def _adopt_bracket(store: WorkflowStore, coids: Sequence[str], at_broker: dict[str, Order]) -> BracketRecords:
    """Record what the broker holds of the bracket; a child it does not hold is marked failed (its exit is
    then not held at the broker, which the caller must handle)."""
    for coid in coids:
        if coid in at_broker:
            await _adopt_broker_order(store, coid, at_broker[coid])
        else:
            await store.update_order(coid, status="failed", error="not found at the broker beside its bracket entry")
    return await _bracket_records(store, coids)


async def _find_quietly(broker: BrokerClient, coid: str) -> Order | None:
    try:
        return await broker.find_order(coid)
    except BrokerError:
        return None


async def refresh_fill(broker: BrokerClient, store: WorkflowStore, record: OrderRecord) -> OrderRecord:
    """Ask the broker for the order's state a few times until it is no longer working."""
    if record.status in ("filled", "cancelled", "failed") or record.broker_order_id is None:
        return record
    for attempt in range(FILL_POLLS):
        try:
            order = await broker.order_status(record.broker_order_id)
        except BrokerError as exc:
            log.warning("order %s status unknown: %s", record.client_order_id, exc)
            return record
        record = await _adopt_broker_order(store, record.client_order_id, order)
        if record.status != "submitted":
            return record
        if attempt < FILL_POLLS - 1:
            await anyio.sleep(FILL_POLL_INTERVAL_S)
    return record


async def reconcile_ledger(broker: BrokerClient, store: WorkflowStore) -> list[OrderRecord]:
    """At start-up: orders left "sent", "unknown" or "submitted" (a bracket's children too) are matched to the
    broker's orders by cOID, with one live-orders call."""
    open_records = [record for record in await store.orders(limit=500) if record.status in OPEN]
    if not open_records:
        return []
    at_broker = await _find_orders(broker, [record.client_order_id for record in open_records])
    adopted: list[OrderRecord] = []
    for record in open_records:
        found = at_broker.get(record.client_order_id)
        if found is not None:
            adopted.append(await _adopt_broker_order(store, record.client_order_id, found))
        elif record.status == "sent":
            await store.update_order(record.client_order_id, status="unknown", error="not found at the broker")
    return adopted
