"""The bounded price cache, in SQLite and in the real Redis on 127.0.0.1:6379."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis

from poller.events import Tick
from poller.price_cache import PriceCache, RedisPriceCache, SQLitePriceCache, build_price_cache

REDIS_URL = "redis://127.0.0.1:6379/0"
START = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _ticks(symbol: str, prices: list[float], first_second: int = 0) -> list[Tick]:
    return [
        Tick(symbol=symbol, price=price, ts=START + timedelta(seconds=first_second + index))
        for index, price in enumerate(prices)
    ]


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"test-prices:{uuid.uuid4().hex}"
    yield prefix
    redis = Redis.from_url(REDIS_URL)
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def cache(request: pytest.FixtureRequest, tmp_path: Path, redis_prefix: str) -> AsyncIterator[PriceCache]:
    made: PriceCache
    if request.param == "sqlite":
        made = SQLitePriceCache(tmp_path / "poller" / "price_cache.db", max_points_per_symbol=5)
    else:
        made = RedisPriceCache(REDIS_URL, key_prefix=redis_prefix, max_points_per_symbol=5)
    yield made
    await made.aclose()


@pytest.mark.anyio
async def test_keeps_the_last_points_per_symbol_oldest_first(cache: PriceCache) -> None:
    await cache.append(_ticks("AAPL", [1.0, 2.0, 3.0]))
    await cache.append(_ticks("AAPL", [4.0, 5.0, 6.0, 7.0], first_second=3) + _ticks("msft", [10.0, 11.0]))
    await cache.append(_ticks("AAPL", [8.0], first_second=7))

    recent = await cache.recent("AAPL")
    assert [price for _, price in recent] == [4.0, 5.0, 6.0, 7.0, 8.0]
    assert [ts for ts, _ in recent] == [START + timedelta(seconds=second) for second in range(3, 8)]
    assert await cache.recent("aapl", 2) == recent[-2:]
    assert [price for _, price in await cache.recent("MSFT")] == [10.0, 11.0]
    assert await cache.recent("TSLA") == []
    assert await cache.symbols() == ["AAPL", "MSFT"]


@pytest.mark.anyio
async def test_a_batch_longer_than_the_bound_keeps_its_tail(cache: PriceCache) -> None:
    await cache.append(_ticks("SPY", [float(price) for price in range(12)]))
    assert [price for _, price in await cache.recent("SPY", 100)] == [7.0, 8.0, 9.0, 10.0, 11.0]


@pytest.mark.anyio
async def test_sqlite_history_survives_reopening_and_is_readable_by_a_second_reader(tmp_path: Path) -> None:
    path = tmp_path / "price_cache.db"
    writer = SQLitePriceCache(path, max_points_per_symbol=3)
    await writer.append(_ticks("AAPL", [1.0, 2.0]))
    reader = SQLitePriceCache(path, max_points_per_symbol=3)
    seen_while_open = await reader.recent("AAPL")
    await writer.append(_ticks("AAPL", [3.0, 4.0], first_second=2))
    await writer.aclose()
    await reader.aclose()

    reopened = SQLitePriceCache(path, max_points_per_symbol=3)
    assert [price for _, price in seen_while_open] == [1.0, 2.0]
    assert [price for _, price in await reopened.recent("AAPL")] == [2.0, 3.0, 4.0]
    await reopened.aclose()


def test_build_price_cache_picks_redis_only_when_configured(tmp_path: Path) -> None:
    assert isinstance(build_price_cache(sqlite_path=tmp_path / "p.db"), SQLitePriceCache)
    assert isinstance(build_price_cache(redis_url=REDIS_URL), RedisPriceCache)
    with pytest.raises(ValueError, match="at least 1"):
        SQLitePriceCache(tmp_path / "p.db", max_points_per_symbol=0)
