"""The LangGraph checkpointer: SQLite by default, PostgreSQL when the URL says so."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from langgraph.checkpoint.base import BaseCheckpointSaver

POSTGRES_POOL_SIZE = 4
SQLITE_BUSY_TIMEOUT_MS = 5000


def _is_postgres(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def _sqlite_path(url: str) -> str:
    for prefix in ("sqlite+aiosqlite:///", "sqlite:///"):
        if url.startswith(prefix):
            return url[len(prefix) :]
    return url


@asynccontextmanager
async def open_checkpointer(url: str) -> AsyncIterator[BaseCheckpointSaver]:
    """One saver connection for the process lifetime (STACK-NOTES: keep it open; resuming from a new process
    on the same file works). `url` is a SQLite path or URL, or a postgresql:// URL."""
    if _is_postgres(url):
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
        # A pool that checks each connection before lending it: a PostgreSQL restart costs the steps that
        # were running at that moment, not every later checkpoint (one long-lived connection would stay dead).
        async with AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=POSTGRES_POOL_SIZE,
            kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
            check=AsyncConnectionPool.check_connection,
            open=False,
        ) as pool:
            saver = AsyncPostgresSaver(pool)
            await saver.setup()
            yield saver
        return
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    path = _sqlite_path(url)
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    async with AsyncSqliteSaver.from_conn_string(path) as saver:
        # Another process (or a previous run still closing) may hold the write lock for a moment: wait for
        # it instead of failing the step with "database is locked".
        await saver.conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        await saver.setup()
        yield saver


async def checkpoint_threads(saver: BaseCheckpointSaver) -> list[str]:
    """The thread ids that have checkpoints (one per workflow run still kept)."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    if isinstance(saver, AsyncSqliteSaver):
        async with saver.lock, saver.conn.execute("SELECT DISTINCT thread_id FROM checkpoints") as cursor:
            return [str(row[0]) for row in await cursor.fetchall()]
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg_pool import AsyncConnectionPool

    if not isinstance(saver, AsyncPostgresSaver):
        raise TypeError(f"no thread listing for {type(saver).__name__}")
    query = "SELECT DISTINCT thread_id FROM checkpoints"
    if isinstance(saver.conn, AsyncConnectionPool):
        async with saver.conn.connection() as conn:
            rows = await (await conn.execute(query)).fetchall()
    else:
        async with saver.lock:
            rows = await (await saver.conn.execute(query)).fetchall()
    return [str(row["thread_id"] if isinstance(row, dict) else row[0]) for row in rows]


async def compact_checkpoints(saver: BaseCheckpointSaver) -> None:
    """After deleting threads: fold SQLite's write-ahead log into the database and truncate it to zero bytes
    (the freed pages are reused by later checkpoints, so the file stops growing). PostgreSQL's autovacuum
    does the same on its own."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    if isinstance(saver, AsyncSqliteSaver):
        async with saver.lock:
            await saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
