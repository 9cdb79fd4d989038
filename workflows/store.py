"""SQLModel tables for workflow runs, approvals, the order ledger and the trading context.

Two databases, as in the seed's data layout: `workflows.db` (runs, approvals, orders) and `context.db`
(preferences, position memory, market events). With PostgreSQL both URLs may name the same database.
State changes that must happen once (an approval decided, an order sent) are conditional UPDATEs, so
they stay atomic across tasks and processes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import event, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

RunStatus = Literal["running", "awaiting_approval", "completed", "rejected", "denied", "failed", "cancelled"]
ApprovalStatus = Literal["pending", "approved", "rejected", "expired", "cancelled"]
LedgerStatus = Literal["intent", "sent", "submitted", "filled", "cancelled", "failed", "unknown"]


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands datetimes back naive; every time we store is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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
    event.listen(engine.sync_engine, "connect", _sqlite_wal)
    return engine


def _sqlite_wal(connection: Any, _: Any) -> None:
    """WAL lets readers and the writer work at once; synchronous=NORMAL is durable across a process crash
    (an OS crash may lose the last commits) and roughly halves a workflow step's commit cost."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class WorkflowStore:
    """Runs, approvals, the order ledger and the trading context."""

    def __init__(self, workflow_engine: AsyncEngine, context_engine: AsyncEngine | None = None) -> None:
        self.workflow_engine = workflow_engine
        self.context_engine = context_engine or workflow_engine

    async def init(self) -> None:
        async with self.workflow_engine.begin() as conn:
            await conn.run_sync(SQLModel.metadata.create_all, tables=WORKFLOW_TABLES)
        async with self.context_engine.begin() as conn:
            await conn.run_sync(SQLModel.metadata.create_all, tables=CONTEXT_TABLES)

    async def close(self) -> None:
        await self.workflow_engine.dispose()
        if self.context_engine is not self.workflow_engine:
            await self.context_engine.dispose()

    @asynccontextmanager
    async def _workflows(self) -> AsyncIterator[AsyncSession]:
        async with AsyncSession(self.workflow_engine, expire_on_commit=False) as session:
            yield session

    @asynccontextmanager
    async def _context(self) -> AsyncIterator[AsyncSession]:
        async with AsyncSession(self.context_engine, expire_on_commit=False) as session:
            yield session

    async def create_run(self, run: WorkflowRun) -> tuple[WorkflowRun, bool]:
        """Insert a run; (existing run, False) when its trigger event was already taken by another run."""
        async with self._workflows() as session:
            session.add(run)
            try:
                await session.commit()
                return run, True
            except IntegrityError:
                await session.rollback()
        existing = await self.run_for_event(run.trigger_event_id) if run.trigger_event_id else None
        if existing is None:
            existing = await self.get_run(run.workflow_id)
        if existing is None:
            raise RuntimeError(f"run {run.workflow_id} could not be created")
        return existing, False

    async def run_for_event(self, event_id: str) -> WorkflowRun | None:
        async with self._workflows() as session:
            result = await session.exec(select(WorkflowRun).where(WorkflowRun.trigger_event_id == event_id))
            return result.first()

    async def get_run(self, workflow_id: str) -> WorkflowRun | None:
        async with self._workflows() as session:
            return await session.get(WorkflowRun, workflow_id)

    async def update_run(self, workflow_id: str, **changes: Any) -> None:
        if "result" in changes:
            changes["result_json"] = json.dumps(changes.pop("result"), default=str)
        async with self._workflows() as session:
            await session.exec(
                update(WorkflowRun)
                .where(col(WorkflowRun.workflow_id) == workflow_id)
                .values(**changes, updated_at=utc_now())
            )
            await session.commit()

    async def list_runs(self, limit: int = 20, status: str | None = None) -> list[WorkflowRun]:
        async with self._workflows() as session:
            query = select(WorkflowRun).order_by(col(WorkflowRun.created_at).desc()).limit(limit)
            if status:
                query = query.where(WorkflowRun.status == status)
            return list((await session.exec(query)).all())

    async def add_approval(self, approval: Approval) -> tuple[Approval, bool]:
        """Insert once: (approval, True) for the first insert, (the stored one, False) after that."""
        async with self._workflows() as session:
            session.add(approval)
            try:
                await session.commit()
                return approval, True
            except IntegrityError:
                await session.rollback()
        found = await self.get_approval(approval.approval_id)
        assert found is not None
        return found, False

    async def get_approval(self, approval_id: str) -> Approval | None:
        async with self._workflows() as session:
            return await session.get(Approval, approval_id)

    async def pending_approvals(self) -> list[Approval]:
        async with self._workflows() as session:
            query = select(Approval).where(Approval.status == "pending").order_by(col(Approval.created_at))
            return list((await session.exec(query)).all())

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
        async with self._workflows() as session:
            result = await session.exec(
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
            await session.commit()
            return result.rowcount == 1

    async def claim_order(self, record: OrderRecord) -> tuple[OrderRecord, bool]:
        """Record an order intent under its client order id. (record, True) only for the first claimant."""
        async with self._workflows() as session:
            session.add(record)
            try:
                await session.commit()
                return record, True
            except IntegrityError:
                await session.rollback()
        existing = await self.get_order(record.client_order_id)
        assert existing is not None
        return existing, False

    async def get_order(self, client_order_id: str) -> OrderRecord | None:
        async with self._workflows() as session:
            return await session.get(OrderRecord, client_order_id)

    async def update_order(self, client_order_id: str, **changes: Any) -> None:
        async with self._workflows() as session:
            await session.exec(
                update(OrderRecord)
                .where(col(OrderRecord.client_order_id) == client_order_id)
                .values(**changes, updated_at=utc_now())
            )
            await session.commit()

    async def orders(self, limit: int = 50, workflow_id: str | None = None) -> list[OrderRecord]:
        async with self._workflows() as session:
            query = select(OrderRecord).order_by(col(OrderRecord.created_at).desc()).limit(limit)
            if workflow_id:
                query = query.where(OrderRecord.workflow_id == workflow_id)
            return list((await session.exec(query)).all())

    async def set_preference(self, key: str, value: Any) -> None:
        async with self._context() as session:
            row = await session.get(Preference, key)
            if row is None:
                session.add(Preference(key=key, value_json=json.dumps(value)))
            else:
                row.value_json = json.dumps(value)
                row.updated_at = utc_now()
                session.add(row)
            await session.commit()

    async def preferences(self) -> dict[str, Any]:
        async with self._context() as session:
            rows = (await session.exec(select(Preference))).all()
            return {row.key: json.loads(row.value_json) for row in rows}

    async def remember_position(self, memory: PositionMemory) -> None:
        async with self._context() as session:
            await session.merge(memory)
            await session.commit()

    async def position_memories(self) -> list[PositionMemory]:
        async with self._context() as session:
            return list((await session.exec(select(PositionMemory))).all())

    async def record_market_event(self, event: MarketEvent) -> bool:
        """False when the event id was seen before (a redelivery)."""
        async with self._context() as session:
            session.add(event)
            try:
                await session.commit()
                return True
            except IntegrityError:
                await session.rollback()
                return False

    async def recent_market_events(self, limit: int = 10) -> list[MarketEvent]:
        async with self._context() as session:
            query = select(MarketEvent).order_by(col(MarketEvent.received_at).desc()).limit(limit)
            return list((await session.exec(query)).all())
