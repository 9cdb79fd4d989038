"""An append-only, hash-chained audit log: every workflow step, risk decision and order leaves one row.

Each row's `hash` is sha256 over a canonical JSON of its content and the previous row's hash, so editing,
inserting or deleting any row breaks the chain at that row, and `verify()` names it. Deleting rows at the
very end cannot be seen from the rows alone: keep the latest hash somewhere else to anchor it.

Appends are serialised, because two appends that read the same last hash would fork the chain:
- within one process by an asyncio.Lock;
- across processes on PostgreSQL by `pg_advisory_xact_lock`, held until the inserting transaction commits,
  so several overlay workers can share one log. SQLite gets only the in-process lock: one writer process.
A UNIQUE prev_hash backs both: an append that lost a race fails with an IntegrityError instead of forking.

An entry can also be written in the transaction of the store write it accompanies (`AuditLog.record` builds it,
`WorkflowStore` methods that take `audit=` chain it in): the row and its audit entry commit together or not
at all, in one commit instead of two. `write` puts several entries in one transaction. Either way the chain is
built the same way (`AuditLog.chain_in`), under the same locks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import anyio
from sqlalchemy import Text, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Field, Session, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from workflows.db import Database

GENESIS_HASH = "0" * 64
_PAGE_ROWS = 1_000
# One fixed key for every process sharing the database: pg_advisory_xact_lock takes a signed 64-bit integer.
_ADVISORY_LOCK_KEY = int.from_bytes(hashlib.sha256(b"ib-overlay:audit_log").digest()[:8], "big", signed=True)

HASHED_FIELDS = (
    "ts",
    "service",
    "workflow",
    "workflow_id",
    "event",
    "symbol",
    "action",
    "quantity",
    "price",
    "order_id",
    "claude_reasoning",
    "payload",
    "prev_hash",
)


class AuditEntry(SQLModel, table=True):
    """One audit row. `ts` is an ISO-8601 UTC string so that the hashed text is the same in every database."""

    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    ts: str
    service: str
    workflow: str | None = Field(default=None, index=True)
    workflow_id: str | None = Field(default=None, index=True)
    event: str
    symbol: str | None = None
    action: str | None = None
    quantity: float | None = None
    price: float | None = None
    order_id: str | None = None
    claude_reasoning: str | None = Field(default=None, sa_type=Text)
    payload: str = Field(default="{}", sa_type=Text)
    """JSON object text: whatever the event carries beyond the fixed columns."""
    prev_hash: str = Field(max_length=64, unique=True)
    """Unique: two rows can never claim the same predecessor, so the database itself refuses a fork."""
    hash: str = Field(max_length=64, unique=True)

    def to_log_record(self) -> dict[str, Any]:
        """The seed's structured-log shape, plus the row id, workflow id and payload."""
        return {
            "timestamp": self.ts,
            "service": self.service,
            "workflow": self.workflow,
            "event": self.event,
            "symbol": self.symbol,
            "action": self.action,
            "quantity": self.quantity,
            "price": self.price,
            "order_id": self.order_id,
            "claude_reasoning": self.claude_reasoning,
            "id": self.id,
            "workflow_id": self.workflow_id,
            "payload": json.loads(self.payload),
        }


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_id: int | None
    reason: str


def entry_hash(fields: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON (sorted keys, no spaces) of the hashed fields, prev_hash included."""
    canonical = json.dumps(
        {name: fields[name] for name in HASHED_FIELDS},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class _ChainCheck:
    """Walks rows in id order and stops at the first one whose hash or link is wrong."""

    def __init__(self) -> None:
        self.checked = 0
        self.previous_id: int | None = None
        self.previous_hash = GENESIS_HASH
        self.failure: VerifyResult | None = None

    def step(self, row: Mapping[str, Any]) -> bool:
        """Check one row; False once the chain is broken."""
        row_id = row["id"]
        if row["prev_hash"] != self.previous_hash:
            before = f"row {self.previous_id}" if self.previous_id is not None else "the genesis hash"
            self.failure = VerifyResult(
                ok=False,
                checked=self.checked,
                first_bad_id=row_id,
                reason=f"row {row_id}: prev_hash does not match {before}: a row before it was deleted, "
                "inserted or rewritten",
            )
            return False
        if entry_hash(row) != row["hash"]:
            self.failure = VerifyResult(
                ok=False,
                checked=self.checked,
                first_bad_id=row_id,
                reason=f"row {row_id}: its content does not match its hash: it was edited after it was written",
            )
            return False
        self.checked += 1
        self.previous_id = row_id
        self.previous_hash = row["hash"]
        return True

    def result(self) -> VerifyResult:
        if self.failure is not None:
            return self.failure
        return VerifyResult(ok=True, checked=self.checked, first_bad_id=None, reason=f"{self.checked} rows, intact")


def verify_entries(rows: Iterable[Mapping[str, Any]]) -> VerifyResult:
    """Verify rows in id order as exported (e.g. the lines of `export_jsonl`), without a database."""
    check = _ChainCheck()
    for row in rows:
        if not check.step(row):
            break
    return check.result()


def _canonical_payload(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _finite(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"audit {name} must be a finite number, got {value!r}")
    return number


_TABLE = AuditEntry.__table__  # type: ignore[attr-defined]
_LAST_HASH = select(_TABLE.c.hash).order_by(_TABLE.c.id.desc()).limit(1)
_INSERT = insert(_TABLE)
_ADVISORY_LOCK = text("SELECT pg_advisory_xact_lock(:key)")


@dataclass(frozen=True)
class AuditRecord:
    """An audit entry not yet written: the log it belongs to and its fields, prev_hash and ts still to come."""

    log: AuditLog
    fields: Mapping[str, Any]


class AuditLog:
    """The audit log over an async SQLAlchemy engine (sqlite+aiosqlite or postgresql+psycopg)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.lock = asyncio.Lock()
        """Held from reading the last hash until the entries that follow it are committed (in-process)."""
        self._db = Database(engine)

    async def init(self) -> None:
        """Create the table if it does not exist."""
        async with self.engine.begin() as conn:
            await conn.run_sync(SQLModel.metadata.create_all, tables=[AuditEntry.__table__])

    def record(
        self,
        event: str,
        *,
        service: str = "overlay",
        workflow: str | None = None,
        workflow_id: str | None = None,
        symbol: str | None = None,
        action: str | None = None,
        quantity: float | None = None,
        price: float | None = None,
        order_id: str | None = None,
        claude_reasoning: str | None = None,
        **payload: Any,
    ) -> AuditRecord:
        """An entry to write later (`write`, or a store write's `audit=`); extra keyword arguments go to the
        JSON payload. Numbers are checked now, so a bad entry fails before anything is written."""
        return AuditRecord(
            self,
            {
                "service": service,
                "workflow": workflow,
                "workflow_id": workflow_id,
                "event": event,
                "symbol": symbol,
                "action": action,
                "quantity": _finite("quantity", quantity),
                "price": _finite("price", price),
                "order_id": order_id,
                "claude_reasoning": claude_reasoning,
                "payload": _canonical_payload(payload),
            },
        )

    async def append(self, event: str, **fields: Any) -> AuditEntry:
        """Write one row chained to the last one; keyword arguments as in `record`."""
        [entry] = await self.write([self.record(event, **fields)])
        return entry

    async def write(self, records: Sequence[AuditRecord]) -> list[AuditEntry]:
        """Write `records` in order, in one transaction."""

        def work(session: Session) -> list[AuditEntry]:
            entries = self.chain_in(session, records)
            session.commit()
            return entries

        async with self.lock:
            return await self._db.run(work)

    def shares_database(self, engine: AsyncEngine) -> bool:
        """Whether a store on `engine` can put this log's entries in its own transactions."""
        return engine is self.engine

    def chain_in(self, session: Session, records: Sequence[AuditRecord]) -> list[AuditEntry]:
        """Insert `records` after the last row, inside the caller's transaction on this log's database; the
        caller holds `lock` until it commits. On PostgreSQL the advisory lock is taken here."""
        if not records:
            return []
        # Core statements built once, executed on the session's connection: an append is on every workflow
        # step's path, and building and caching a fresh INSERT ... VALUES per row cost more than running it.
        connection = session.connection()
        if connection.dialect.name == "postgresql":
            connection.execute(_ADVISORY_LOCK, {"key": _ADVISORY_LOCK_KEY})
        previous = connection.execute(_LAST_HASH).scalar() or GENESIS_HASH
        entries: list[AuditEntry] = []
        for record in records:
            if record.log is not self:
                raise ValueError("an audit record was written to another audit log than the one that built it")
            fields = {
                **record.fields,
                "prev_hash": previous,
                "ts": datetime.now(UTC).isoformat(timespec="microseconds"),
            }
            fields["hash"] = entry_hash(fields)
            row_id = connection.execute(_INSERT, fields).inserted_primary_key[0]
            entries.append(AuditEntry(id=row_id, **fields))
            previous = fields["hash"]
        return entries

    async def _pages(self) -> AsyncIterator[Sequence[AuditEntry]]:
        """All rows in id order, a page at a time (keyset paging keeps memory flat on a long log)."""
        after_id = 0
        while True:
            async with AsyncSession(self.engine) as session:
                page = (
                    await session.exec(
                        select(AuditEntry)
                        .where(col(AuditEntry.id) > after_id)
                        .order_by(col(AuditEntry.id))
                        .limit(_PAGE_ROWS)
                    )
                ).all()
            if not page:
                return
            yield page
            after_id = page[-1].id or after_id

    async def verify(self) -> VerifyResult:
        """Recompute every hash and link; name the first row that does not fit."""
        check = _ChainCheck()
        async for page in self._pages():
            for entry in page:
                if not check.step(entry.model_dump()):
                    return check.result()
        return check.result()

    async def export_jsonl(self, path_or_stream: str | os.PathLike[str] | TextIO) -> int:
        """Write every row, hashes included, one JSON object a line; returns the number of rows written.

        The lines verify on their own with `verify_entries(json.loads(line) for line in lines)`.
        """
        written = 0
        if isinstance(path_or_stream, str | os.PathLike):
            async with await anyio.open_file(path_or_stream, "w", encoding="utf-8") as file:
                async for page in self._pages():
                    await file.write("".join(_jsonl(entry) for entry in page))
                    written += len(page)
            return written
        async for page in self._pages():
            path_or_stream.write("".join(_jsonl(entry) for entry in page))
            written += len(page)
        return written

    async def tail(self, n: int, workflow_id: str | None = None) -> list[dict[str, Any]]:
        """The last `n` rows, oldest first, in the seed's log shape (see `AuditEntry.to_log_record`)."""
        query = select(AuditEntry).order_by(col(AuditEntry.id).desc()).limit(n)
        if workflow_id is not None:
            query = query.where(AuditEntry.workflow_id == workflow_id)
        async with AsyncSession(self.engine) as session:
            newest_first = (await session.exec(query)).all()
        return [entry.to_log_record() for entry in reversed(newest_first)]


def _jsonl(entry: AuditEntry) -> str:
    return json.dumps(entry.model_dump(), ensure_ascii=False, allow_nan=False) + "\n"
