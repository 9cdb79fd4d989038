"""SQLModel tables for workflow runs, approvals, the order ledger and the trading context.

Two databases, as in the seed's data layout: `workflows.db` (runs, approvals, orders) and `context.db`
(preferences, position memory, market events). With PostgreSQL both URLs may name the same database.
State changes that must happen once (an approval decided, an order sent) are conditional UPDATEs, so
they stay atomic across tasks and processes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import event, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import Field, Session, SQLModel, col, select

from workflows.db import Database, sqlite_pragmas
from workflows.times import utc_now

if TYPE_CHECKING:
    from poller.events import TriggerEvent
    from workflows.audit import AuditRecord

RunStatus = Literal["running", "awaiting_approval", "completed", "rejected", "denied", "failed", "cancelled"]
ApprovalStatus = Literal["pending", "approved", "rejected", "expired", "cancelled"]
LedgerStatus = Literal["intent", "sent", "submitted", "filled", "cancelled", "failed", "unknown"]


class WorkflowRun(SQLModel, table=True):
    __tablename__ = "workflow_run"

    workflow_id: str = Field(primary_key=True)
    workflow: str = Field(index=True)
    status: str = Field(default="running", index=True)
    symbol: str | None = None
    trigger_event_id: str | None = Field(default=None, unique=True)
    worker: str | None = None
    summary: str = ""
    result_json: str = "{}"
    error: str | None = None
    created_at: datetime = Field(default_factory=utc_now)
    updated_at: datetime = Field(default_factory=utc_now)


class Approval(SQLModel, table=True):
    __tablename__ = "approval"

    approval_id: str = Field(primary_key=True)
    workflow_id: str = Field(index=True)
    status: str = Field(default="pending", index=True)
    proposal_json: str
    created_at: datetime = Field(default_factory=utc_now)
    expires_at: datetime
    decided_at: datetime | None = None
    decision_note: str | None = None
    quantity: float | None = None
    limit_price: float | None = None


class OrderRecord(SQLModel, table=True):
    __tablename__ = "order_ledger"

    client_order_id: str = Field(primary_key=True)
    workflow_id: str = Field(index=True)
    approval_id: str | None = None
    account_id: str
    symbol: str
    side: str
    quantity: float
    order_type: str
    limit_price: float | None = None
    status: str = Field(default="intent", index=True)
    broker_order_id: str | None = None
    filled_quantity: float = 0.0
    avg_fill_price: float | None = None
    error: str | None = None
    created_at: datetime = Field(default_factory=utc_now)
    updated_at: datetime = Field(default_factory=utc_now)


class Preference(SQLModel, table=True):
    __tablename__ = "preference"

    key: str = Field(primary_key=True)
    value_json: str
    updated_at: datetime = Field(default_factory=utc_now)


class PositionMemory(SQLModel, table=True):
    """Why a position was opened and when to leave it (the seed's "position memory")."""

    __tablename__ = "position_memory"

    symbol: str = Field(primary_key=True)
    workflow_id: str
    entry_logic: str
    exit_criteria_json: str = "{}"
    updated_at: datetime = Field(default_factory=utc_now)


class MarketEvent(SQLModel, table=True):
    __tablename__ = "market_event"

    event_id: str = Field(primary_key=True)
    trigger_name: str
    symbol: str = Field(index=True)
    price: float
    condition: str
    channel: str
    payload_json: str
    received_at: datetime = Field(default_factory=utc_now)

    @classmethod
    def of(cls, event: TriggerEvent) -> MarketEvent:
        """The row remembering `event`, its whole payload included (a run cut short starts over from it)."""
        return cls(
            event_id=event.event_id,
            trigger_name=event.trigger_name,
            symbol=event.symbol,
            price=event.price,
            condition=event.condition,
            channel=event.channel,
            payload_json=event.model_dump_json(),
        )


WORKFLOW_TABLES = [WorkflowRun.__table__, Approval.__table__, OrderRecord.__table__]  # type: ignore[attr-defined]
CONTEXT_TABLES = [Preference.__table__, PositionMemory.__table__, MarketEvent.__table__]  # type: ignore[attr-defined]


def make_engine(url: str) -> AsyncEngine:
    """An async engine; creates the parent folder of a SQLite file. `postgresql://` means psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    if parsed.get_backend_name() == "postgresql":
        # pre-ping: connections broken by a server restart are replaced instead of failing the next query
        return create_async_engine(parsed, pool_pre_ping=True)
    engine = create_async_engine(parsed)
    event.listen(engine.sync_engine, "connect", sqlite_pragmas)
    return engine


class WorkflowStore:
    """Runs, approvals, the order ledger and the trading context.

    Every method is one unit of work (workflows.db): on SQLite files it runs on a worker thread in one hop,
    however many statements it makes. `order_listeners` are called after each change of an order's ledger
    row (a fill, a submission), e.g. to refresh a cached view of the account."""

    def __init__(self, workflow_engine: AsyncEngine, context_engine: AsyncEngine | None = None) -> None:
        self.workflow_engine = workflow_engine
        self.context_engine = context_engine or workflow_engine
        self.order_listeners: list[Callable[[str], None]] = []
        self._workflows = Database(self.workflow_engine)
        self._context = (
            self._workflows if self.context_engine is self.workflow_engine else Database(self.context_engine)
        )

    async def init(self) -> None:
        async with self.workflow_engine.begin() as conn:
            await conn.run_sync(SQLModel.metadata.create_all, tables=WORKFLOW_TABLES)
        async with self.context_engine.begin() as conn:
            await conn.run_sync(SQLModel.metadata.create_all, tables=CONTEXT_TABLES)

    async def close(self) -> None:
        await self._workflows.dispose()
        await self.workflow_engine.dispose()
        if self.context_engine is not self.workflow_engine:
            await self._context.dispose()
            await self.context_engine.dispose()

    async def create_run(self, run: WorkflowRun, *, audit: AuditRecord | None = None) -> tuple[WorkflowRun, bool]:
        """Insert a run; (existing run, False) when its trigger event was already taken by another run.
        `audit` is written only when the run is created, in the same transaction when the audit log shares
        the workflows database."""
        shared = audit if audit is not None and audit.log.shares_database(self.workflow_engine) else None

        def work(session: Session) -> tuple[WorkflowRun | None, bool]:
            if shared is not None:
                shared.log.chain_in(session, [shared])
            session.add(run)
            try:
                session.commit()
                return run, True
            except IntegrityError:
                session.rollback()
            existing = _run_for_event(session, run.trigger_event_id) if run.trigger_event_id else None
            return existing or session.get(WorkflowRun, run.workflow_id), False

        if shared is not None:
            async with shared.log.lock:
                stored, created = await self._workflows.run(work)
        else:
            stored, created = await self._workflows.run(work)
            if created and audit is not None:
                await audit.log.write([audit])
        if stored is None:
            raise RuntimeError(f"run {run.workflow_id} could not be created")
        return stored, created

    async def run_for_event(self, event_id: str) -> WorkflowRun | None:
        return await self._workflows.run(partial(_run_for_event, event_id=event_id))

    async def get_run(self, workflow_id: str) -> WorkflowRun | None:
        return await self._workflows.run(lambda session: session.get(WorkflowRun, workflow_id))

    async def update_run(self, workflow_id: str, **changes: Any) -> None:
        if "result" in changes:
            changes["result_json"] = json.dumps(changes.pop("result"), default=str)

        def work(session: Session) -> None:
            _update_run(session, workflow_id, **changes)
            session.commit()

        await self._workflows.run(work)

    async def list_runs(self, limit: int = 20, status: str | None = None) -> list[WorkflowRun]:
        return await self._workflows.run(partial(_runs, limit=limit, status=status))

    async def add_approval(
        self, approval: Approval, *, run_status: RunStatus | None = None, audit: AuditRecord | None = None
    ) -> tuple[Approval, bool]:
        """Insert once: (approval, True) for the first insert, (the stored one, False) after that.

        `run_status` moves the approval's run to that status either way; `audit` is written with the first
        insert only. All of it is one transaction when the audit log shares the workflows database."""
        shared = audit if audit is not None and audit.log.shares_database(self.workflow_engine) else None

        def attempt(session: Session) -> tuple[Approval, bool]:
            stored = session.get(Approval, approval.approval_id)
            if run_status is not None:
                _update_run(session, approval.workflow_id, status=run_status)
            if stored is None:
                if shared is not None:
                    shared.log.chain_in(session, [shared])
                session.add(approval)
            session.commit()  # the approval's INSERT: a duplicate fails here, undoing the rest
            return (approval, True) if stored is None else (stored, False)

        def work(session: Session) -> tuple[Approval, bool]:
            try:
                return attempt(session)
            except IntegrityError:  # another writer inserted it (or appended to the audit log) first
                session.rollback()
                return attempt(session)

        if shared is not None:
            async with shared.log.lock:
                return await self._workflows.run(work)
        stored, created = await self._workflows.run(work)
        if created and audit is not None:
            await audit.log.write([audit])
        return stored, created

    async def get_approval(self, approval_id: str) -> Approval | None:
        return await self._workflows.run(lambda session: session.get(Approval, approval_id))

    async def pending_approvals(self) -> list[Approval]:
        """Oldest first. Answered without a query while nothing was written since the last call (db.py)."""
        return list(await self._workflows.read_cached("pending_approvals", _pending_approvals))

    async def context_rows(self, runs: int, orders: int) -> tuple[list[Approval], list[WorkflowRun], list[OrderRecord]]:
        """Pending approvals (oldest first), the latest `runs` runs and the latest `orders` ledger rows, read
        in one unit of work: what the trading context shows. Answered without a query while nothing was
        written since the last call (db.py)."""

        def work(session: Session) -> tuple[list[Approval], list[WorkflowRun], list[OrderRecord]]:
            return _pending_approvals(session), _runs(session, runs), _orders(session, orders)

        approvals, recent_runs, recent_orders = await self._workflows.read_cached(f"context:{runs}:{orders}", work)
        return list(approvals), list(recent_runs), list(recent_orders)

    async def decide_approval(
        self,
        approval_id: str,
        status: ApprovalStatus,
        *,
        note: str | None = None,
        quantity: float | None = None,
        limit_price: float | None = None,
    ) -> bool:
        """pending -> status, atomically. False when someone else decided first (or it was not pending)."""

        def work(session: Session) -> bool:
            result = session.connection().execute(
                update(Approval)
                .where(col(Approval.approval_id) == approval_id, col(Approval.status) == "pending")
                .values(
                    status=status,
                    decided_at=utc_now(),
                    decision_note=note,
                    quantity=quantity,
                    limit_price=limit_price,
                )
            )
            session.commit()
            return result.rowcount == 1

        return await self._workflows.run(work)

    async def claim_order(self, record: OrderRecord) -> tuple[OrderRecord, bool]:
        """Record an order intent under its client order id. (record, True) only for the first claimant."""

        def work(session: Session) -> tuple[OrderRecord | None, bool]:
            session.add(record)
            try:
                session.commit()
                return record, True
            except IntegrityError:
                session.rollback()
            return session.get(OrderRecord, record.client_order_id), False

        stored, first = await self._workflows.run(work)
        assert stored is not None
        return stored, first

    async def get_order(self, client_order_id: str) -> OrderRecord | None:
        return await self._workflows.run(lambda session: session.get(OrderRecord, client_order_id))

    async def update_order(self, client_order_id: str, **changes: Any) -> None:
        def work(session: Session) -> None:
            session.connection().execute(
                update(OrderRecord)
                .where(col(OrderRecord.client_order_id) == client_order_id)
                .values(**changes, updated_at=utc_now())
            )
            session.commit()

        await self._workflows.run(work)
        for listener in self.order_listeners:
            listener(client_order_id)

    async def orders(self, limit: int = 50, workflow_id: str | None = None) -> list[OrderRecord]:
        return await self._workflows.run(partial(_orders, limit=limit, workflow_id=workflow_id))

    async def set_preference(self, key: str, value: Any) -> None:
        def work(session: Session) -> None:
            row = session.get(Preference, key)
            if row is None:
                session.add(Preference(key=key, value_json=json.dumps(value)))
            else:
                row.value_json = json.dumps(value)
                row.updated_at = utc_now()
                session.add(row)
            session.commit()

        await self._context.run(work)

    async def preferences(self) -> dict[str, Any]:
        def work(session: Session) -> dict[str, Any]:
            return {row.key: json.loads(row.value_json) for row in session.exec(select(Preference)).all()}

        return await self._context.run(work)

    async def remember_position(self, memory: PositionMemory) -> None:
        def work(session: Session) -> None:
            session.merge(memory)
            session.commit()

        await self._context.run(work)

    async def position_memories(self) -> list[PositionMemory]:
        return await self._context.run(lambda session: list(session.exec(select(PositionMemory)).all()))

    async def record_market_event(self, event: MarketEvent) -> bool:
        """False when the event id was seen before (a redelivery)."""

        def work(session: Session) -> bool:
            session.add(event)
            try:
                session.commit()
                return True
            except IntegrityError:
                session.rollback()
                return False

        return await self._context.run(work)

    async def market_event(self, event_id: str) -> MarketEvent | None:
        return await self._context.run(lambda session: session.get(MarketEvent, event_id))

    async def recent_market_events(self, limit: int = 10) -> list[MarketEvent]:
        def work(session: Session) -> list[MarketEvent]:
            query = select(MarketEvent).order_by(col(MarketEvent.received_at).desc()).limit(limit)
            return list(session.exec(query).all())

        return await self._context.run(work)


# Statements more than one unit of work uses; each runs inside the caller's session.


def _run_for_event(session: Session, event_id: str) -> WorkflowRun | None:
    return session.exec(select(WorkflowRun).where(WorkflowRun.trigger_event_id == event_id)).first()


def _update_run(session: Session, workflow_id: str, **changes: Any) -> None:
    # Through the connection: an ORM-enabled UPDATE would also sync the session's objects (none here), at
    # twice the cost.
    session.connection().execute(
        update(WorkflowRun).where(col(WorkflowRun.workflow_id) == workflow_id).values(**changes, updated_at=utc_now())
    )


def _runs(session: Session, limit: int, status: str | None = None) -> list[WorkflowRun]:
    query = select(WorkflowRun).order_by(col(WorkflowRun.created_at).desc()).limit(limit)
    if status:
        query = query.where(WorkflowRun.status == status)
    return list(session.exec(query).all())


def _pending_approvals(session: Session) -> list[Approval]:
    query = select(Approval).where(Approval.status == "pending").order_by(col(Approval.created_at))
    return list(session.exec(query).all())


def _orders(session: Session, limit: int, workflow_id: str | None = None) -> list[OrderRecord]:
    query = select(OrderRecord).order_by(col(OrderRecord.created_at).desc()).limit(limit)
    if workflow_id:
        query = query.where(OrderRecord.workflow_id == workflow_id)
    return list(session.exec(query).all())
