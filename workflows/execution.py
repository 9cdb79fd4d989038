"""Placing an order exactly once.

The client order id (IB's cOID) is derived from the approval, so every retry, restart or second approval
of one proposal names the same order. The ledger row is claimed before anything is sent, and only the
task that moves it from "intent" (or "failed" / "unknown" with no such order at the broker) to "sent"
may talk to the broker.
"""

from __future__ import annotations

import logging

import anyio
from sqlalchemy import update
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.client import BrokerClient
from broker.errors import BrokerError, BrokerUnavailable, OrderConfirmationRefused
from broker.models import Order, OrderTicket
from workflows.store import OrderRecord, WorkflowStore, utc_now

log = logging.getLogger(__name__)

FILL_POLLS = 5
FILL_POLL_INTERVAL_S = 0.2
RESENDABLE = ("intent", "failed", "unknown")


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
    record, first = await store.claim_order(
        OrderRecord(
            client_order_id=coid,
            workflow_id=workflow_id,
            approval_id=approval_id,
            account_id=ticket.account_id,
            symbol=ticket.symbol,
            side=ticket.side,
            quantity=ticket.quantity,
            order_type=ticket.order_type,
            limit_price=ticket.limit_price,
        )
    )
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
    """At start-up: orders left "sent" or "unknown" by a crash are matched to the broker's orders by cOID."""
    adopted: list[OrderRecord] = []
    for record in await store.orders(limit=500):
        if record.status not in ("sent", "unknown", "submitted"):
            continue
        found = await broker.find_order(record.client_order_id)
        if found is not None:
            adopted.append(await _adopt_broker_order(store, record.client_order_id, found))
        elif record.status == "sent":
            await store.update_order(record.client_order_id, status="unknown", error="not found at the broker")
    return adopted
