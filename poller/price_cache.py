"""Recent prices per symbol, bounded: the last `max_points_per_symbol` ticks of each symbol, oldest dropped.

The poller appends every tick; the risk engine's circuit breaker and the `overlay://prices/{symbol}`
resource read them back, possibly from another process.

    cache = SQLitePriceCache("data/poller/price_cache.db")      # or RedisPriceCache("redis://...")
    await cache.append(ticks)
    await cache.recent("AAPL", 50)    # [(ts, price), ...], oldest first, at most 50

SQLite (the default) is plain `sqlite3` run in a worker thread rather than aiosqlite: an append is one
short transaction (insert the batch, trim each symbol) that reads best as one synchronous function, and
there is no per-connection thread to start and stop. The file is in WAL mode, so the overlay can read
while the poller writes. Redis keeps one capped list per symbol (RPUSH + LTRIM in one transaction).
"""

from __future__ import annotations

import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import anyio
from redis.asyncio import Redis

from poller.events import Tick

DEFAULT_SQLITE_PATH = Path("data/poller/price_cache.db")
DEFAULT_REDIS_PREFIX = "overlay:prices"
DEFAULT_MAX_POINTS = 1_000

PricePoint = tuple[datetime, float]


class PriceCache(Protocol):
    async def append(self, ticks: Iterable[Tick]) -> None: ...

    async def recent(self, symbol: str, n: int | None = None) -> list[PricePoint]:
        """The last `n` (default: all kept) prices of `symbol`, oldest first."""
        ...

    async def symbols(self) -> list[str]: ...

    async def aclose(self) -> None: ...


def _point(ts_s: float, price: float) -> PricePoint:
    return datetime.fromtimestamp(ts_s, UTC), price


def _rows_by_symbol(ticks: Iterable[Tick]) -> dict[str, list[tuple[float, float]]]:
    rows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for tick in ticks:
        ts = tick.ts if tick.ts.tzinfo is not None else tick.ts.replace(tzinfo=UTC)
        rows[tick.symbol.upper()].append((ts.timestamp(), tick.price))
    return rows


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS price_points ("
    "id INTEGER PRIMARY KEY, symbol TEXT NOT NULL, ts_s REAL NOT NULL, price REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS price_points_by_symbol ON price_points (symbol, id)",
)


class SQLitePriceCache:
    """The bounded price history in a SQLite file (`data/poller/price_cache.db` by default)."""

    def __init__(
        self, path: str | Path = DEFAULT_SQLITE_PATH, *, max_points_per_symbol: int = DEFAULT_MAX_POINTS
    ) -> None:
        if max_points_per_symbol < 1:
            raise ValueError("max_points_per_symbol must be at least 1")
        self.path = Path(path)
        self.max_points_per_symbol = max_points_per_symbol
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5.0)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                connection.execute(statement)
            self._connection = connection
        return self._connection

    async def append(self, ticks: Iterable[Tick]) -> None:
        rows = _rows_by_symbol(ticks)
        if rows:
            await anyio.to_thread.run_sync(self._append, rows)

    def _append(self, rows: dict[str, list[tuple[float, float]]]) -> None:
        with self._lock:
            connection = self._connect()
            connection.execute("BEGIN")
            try:
                for symbol, points in rows.items():
                    connection.executemany(
                        "INSERT INTO price_points (symbol, ts_s, price) VALUES (?, ?, ?)",
                        [(symbol, ts_s, price) for ts_s, price in points],
                    )
                    connection.execute(
                        "DELETE FROM price_points WHERE symbol = ? AND id <= ("
                        "SELECT id FROM price_points WHERE symbol = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                        (symbol, symbol, self.max_points_per_symbol),
                    )
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    async def recent(self, symbol: str, n: int | None = None) -> list[PricePoint]:
        return await anyio.to_thread.run_sync(self._recent, symbol.upper(), n or self.max_points_per_symbol)

    def _recent(self, symbol: str, n: int) -> list[PricePoint]:
        with self._lock:
            rows = (
                self._connect()
                .execute(
                    "SELECT ts_s, price FROM (SELECT id, ts_s, price FROM price_points WHERE symbol = ? "
                    "ORDER BY id DESC LIMIT ?) ORDER BY id",
                    (symbol, n),
                )
                .fetchall()
            )
        return [_point(ts_s, price) for ts_s, price in rows]

    async def symbols(self) -> list[str]:
        return await anyio.to_thread.run_sync(self._symbols)

    def _symbols(self) -> list[str]:
        with self._lock:
            rows = self._connect().execute("SELECT DISTINCT symbol FROM price_points ORDER BY symbol").fetchall()
        return [symbol for (symbol,) in rows]

    async def aclose(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


class RedisPriceCache:
    """The bounded price history in Redis: one capped list `<prefix>:<SYMBOL>` of "ts_s price" entries."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = DEFAULT_REDIS_PREFIX,
        max_points_per_symbol: int = DEFAULT_MAX_POINTS,
    ) -> None:
        if max_points_per_symbol < 1:
            raise ValueError("max_points_per_symbol must be at least 1")
        self.key_prefix = key_prefix
        self.max_points_per_symbol = max_points_per_symbol
        self._redis = Redis.from_url(url, decode_responses=True, socket_connect_timeout=2.0, socket_timeout=5.0)

    def _key(self, symbol: str) -> str:
        return f"{self.key_prefix}:{symbol.upper()}"

    async def append(self, ticks: Iterable[Tick]) -> None:
        rows = _rows_by_symbol(ticks)
        if not rows:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            for symbol, points in rows.items():
                key = self._key(symbol)
                pipe.rpush(key, *(f"{ts_s!r} {price!r}" for ts_s, price in points))
                pipe.ltrim(key, -self.max_points_per_symbol, -1)
            await pipe.execute()

    async def recent(self, symbol: str, n: int | None = None) -> list[PricePoint]:
        entries = await self._redis.lrange(self._key(symbol), -(n or self.max_points_per_symbol), -1)
        points: list[PricePoint] = []
        for entry in entries:
            ts_text, price_text = entry.split(" ", 1)
            points.append(_point(float(ts_text), float(price_text)))
        return points

    async def symbols(self) -> list[str]:
        prefix = f"{self.key_prefix}:"
        return sorted([key[len(prefix) :] async for key in self._redis.scan_iter(match=f"{prefix}*")])

    async def aclose(self) -> None:
        await self._redis.aclose()


def build_price_cache(
    *,
    redis_url: str | None = None,
    sqlite_path: str | Path = DEFAULT_SQLITE_PATH,
    max_points_per_symbol: int = DEFAULT_MAX_POINTS,
    redis_prefix: str = DEFAULT_REDIS_PREFIX,
) -> PriceCache:
    """Redis when `redis_url` is given, else the SQLite file."""
    if redis_url:
        return RedisPriceCache(redis_url, key_prefix=redis_prefix, max_points_per_symbol=max_points_per_symbol)
    return SQLitePriceCache(sqlite_path, max_points_per_symbol=max_points_per_symbol)
