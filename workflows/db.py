"""Running a unit of work (a few statements and their commit) on one database in as few hops as possible.

Through SQLAlchemy's aiosqlite adapter every statement is four hops to aiosqlite's thread and back (cursor,
execute, fetch, close) and every session adds one or two for its commit and rollback: about 0.1 ms each, so
a one-row read cost ~0.5 ms and a workflow step's few writes several. On a SQLite file the whole unit runs
instead as plain synchronous SQLAlchemy on a worker thread, through a second (pysqlite) engine on the same
file: one hop for the unit, whatever it does. Blocking calls stay off the event loop, SQLite's busy timeout
waits on the worker thread, and a unit started is finished even if its caller is cancelled (its transaction
is never cut in half). Elsewhere (PostgreSQL, in-memory SQLite) the same unit runs in an AsyncSession.

The async engine stays what every other part of the overlay uses; both engines see the same data.

`read_cached` answers a read from its last result while nothing has been committed to the file since, by any
connection of any process: SQLite's `PRAGMA data_version` on a watcher connection of its own says so in a few
microseconds (a WAL reader never waits for a lock, so it is read on the event loop). The read tools the model
calls again and again (get_context, list_pending_approvals) then cost no database work between changes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession

T = TypeVar("T")
Work = Callable[[Session], T]


def sqlite_pragmas(connection: Any, _: Any) -> None:
    """WAL lets readers and the writer work at once; synchronous=NORMAL is durable across a process crash
    (an OS crash may lose the last commits) and roughly halves a workflow step's commit cost."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _sync_twin(engine: AsyncEngine) -> Engine | None:
    """A pysqlite engine on the same SQLite file as `engine`; None for other databases and `:memory:`."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    twin = create_engine(url.set(drivername="sqlite"))
    event.listen(twin, "connect", sqlite_pragmas)
    return twin


class Database:
    """`run(work)`: `work` gets a Session, does its statements and commits; on a SQLite file it runs on a
    worker thread in one hop, elsewhere in an AsyncSession. Objects it returns are detached and loaded."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sync = _sync_twin(engine)
        self._watcher: sqlite3.Connection | None = None
        self._cached: dict[str, tuple[int, Any]] = {}

    async def run(self, work: Work[T]) -> T:
        if self._sync is not None:
            return await anyio.to_thread.run_sync(partial(_in_session, self._sync, work))
        async with AsyncSession(self.engine, expire_on_commit=False) as session:
            return await session.run_sync(work)

    async def read_cached(self, key: str, work: Work[T]) -> T:
        """`run(work)` for a read-only `work`, answered with its last result (the same objects: do not
        modify them) while nothing was committed to the database since. Always run on other databases."""
        version = self._data_version()
        if version is None:
            return await self.run(work)
        cached = self._cached.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        # The version is read before the rows: a commit in between makes the next call read again.
        result = await self.run(work)
        self._cached[key] = (version, result)
        return result

    def _data_version(self) -> int | None:
        """Changes whenever another connection commits to this SQLite file; None when not known."""
        if self._sync is None:
            return None
        try:
            if self._watcher is None:
                # timeout=0: never wait for a lock on the event loop (a WAL reader only would during recovery)
                self._watcher = sqlite3.connect(self.engine.url.database or "", timeout=0, check_same_thread=False)
            row = self._watcher.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            return None
        return int(row[0])

    async def dispose(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        if self._sync is not None:
            self._sync.dispose()


def _in_session(engine: Engine, work: Work[T]) -> T:
    with Session(engine, expire_on_commit=False) as session:
        return work(session)
