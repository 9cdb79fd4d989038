"""Triggers added, removed or switched on/off at run time, kept in a database so they survive a restart.

    store = TriggerStore("sqlite+aiosqlite:///data/poller/triggers.db")   # or postgresql+psycopg://...
    for spec in await store.load():
        engine.add(spec)

The table (`poller_triggers`) is created on first use; for a SQLite file its folder is created too.
Each row keeps the whole spec as JSON, so new TriggerSpec fields need no migration. A stored spec
that no longer validates is skipped with a logged warning rather than stopping the poller.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import anyio
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import Field, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from poller.triggers import TriggerSpec

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class StoredTrigger(SQLModel, table=True):
    __tablename__ = "poller_triggers"

    name: str = Field(primary_key=True)
    spec_json: str
    enabled: bool = True
    updated_at: datetime = Field(default_factory=_utc_now)


class TriggerStore:
    """Async persistence of TriggerSpecs by name."""

    def __init__(self, url: str) -> None:
        self._url = make_url(url)
        self._engine: AsyncEngine = create_async_engine(self._url)
        self._ready = False
        self._lock = anyio.Lock()

    async def load(self) -> list[TriggerSpec]:
        """Every stored trigger, in name order."""
        await self._ensure_table()
        async with AsyncSession(self._engine) as session:
            rows = (await session.exec(select(StoredTrigger).order_by(StoredTrigger.name))).all()
        specs: list[TriggerSpec] = []
        for row in rows:
            try:
                spec = TriggerSpec.model_validate_json(row.spec_json)
            except ValidationError as exc:
                log.warning("stored trigger %r no longer validates and is skipped: %s", row.name, exc)
                continue
            specs.append(spec.model_copy(update={"enabled": row.enabled}))
        return specs

    async def save(self, spec: TriggerSpec) -> None:
        """Insert or replace the trigger with this spec's name."""
        await self._ensure_table()
        async with AsyncSession(self._engine) as session:
            row = await session.get(StoredTrigger, spec.name)
            if row is None:
                row = StoredTrigger(name=spec.name, spec_json="")
            row.spec_json = spec.model_dump_json()
            row.enabled = spec.enabled
            row.updated_at = _utc_now()
            session.add(row)
            await session.commit()

    async def delete(self, name: str) -> bool:
        await self._ensure_table()
        async with AsyncSession(self._engine) as session:
            row = await session.get(StoredTrigger, name)
            if row is None:
                return False
            await session.delete(row)
            await session.commit()
            return True

    async def set_enabled(self, name: str, enabled: bool) -> bool:
        await self._ensure_table()
        async with AsyncSession(self._engine) as session:
            row = await session.get(StoredTrigger, name)
            if row is None:
                return False
            row.enabled = enabled
            row.updated_at = _utc_now()
            session.add(row)
            await session.commit()
            return True

    async def close(self) -> None:
        await self._engine.dispose()

    async def __aenter__(self) -> TriggerStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _ensure_table(self) -> None:
        if self._ready:
            return
        async with self._lock:
            if self._ready:
                return
            database = self._url.database
            if self._url.get_backend_name() == "sqlite" and database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            async with self._engine.begin() as connection:
                await connection.run_sync(SQLModel.metadata.create_all, tables=[StoredTrigger.__table__])
            self._ready = True
