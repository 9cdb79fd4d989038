"""IB's pacing limits hold under more demand than they allow, across workers, and nothing is dropped."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio as aioredis

from broker import ib_mcp_tools as ib
from broker.client import BrokerClient
from broker.pacing import ENDPOINT_PACES, LocalPacer, Pacer, RedisPacer
from broker.sim.market import MarketSimulator
from broker.sim.server import build_sim_server

pytestmark = pytest.mark.anyio


class RecordingPacer:
    """Wraps a pacer and notes when each call was let through."""

    def __init__(self, inner: Pacer, released: list[tuple[str, float]]) -> None:
        self.inner = inner
        self.released = released

    async def acquire(self, tool: str) -> None:
        await self.inner.acquire(tool)
        self.released.append((tool, time.monotonic()))


# Release times are noted by the caller after the pacer lets it go, so on a loaded machine two notes can
# land a little closer together than the pacer's own decisions were: judge windows 0.2 s shorter.
MEASUREMENT_SLACK_S = 0.2


def busiest_window(times: list[float], window_s: float) -> int:
    ordered = sorted(times)
    return max((sum(1 for t in ordered[i:] if t - start < window_s) for i, start in enumerate(ordered)), default=0)


async def hammer_snapshots(broker: BrokerClient, calls: int) -> int:
    answered = 0

    async def one() -> None:
        nonlocal answered
        quotes = await broker.quotes(["AAPL", "MSFT"])
        answered += len(quotes) == 2

    async with anyio.create_task_group() as tasks:
        for _ in range(calls):
            tasks.start_soon(one)
    return answered


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url("redis://127.0.0.1:6379/0")
    yield client
    await client.aclose()


async def test_one_worker_never_exceeds_the_snapshot_limit_and_loses_nothing() -> None:
    released: list[tuple[str, float]] = []
    market = MarketSimulator(["AAPL", "MSFT"], seed=2)
    async with BrokerClient(build_sim_server(market), pacer=RecordingPacer(LocalPacer(), released)) as broker:
        await broker.resolve_conids(["AAPL", "MSFT"])
        answered = await hammer_snapshots(broker, 25)
    snapshots = [t for tool, t in released if tool == ib.SNAPSHOT]
    assert answered == 25 and len(snapshots) == 25
    assert busiest_window(snapshots, 1.0 - MEASUREMENT_SLACK_S) <= ENDPOINT_PACES[ib.SNAPSHOT].requests


@pytest.mark.redis
async def test_two_workers_share_one_users_budget_through_redis(redis_client: aioredis.Redis) -> None:
    prefix = f"test:pacing:{uuid.uuid4().hex}"
    released: list[tuple[str, float]] = []
    market = MarketSimulator(["AAPL", "MSFT"], seed=2)
    try:
        async with (
            BrokerClient(
                build_sim_server(market), pacer=RecordingPacer(RedisPacer(redis_client, prefix=prefix), released)
            ) as one,
            BrokerClient(
                build_sim_server(market), pacer=RecordingPacer(RedisPacer(redis_client, prefix=prefix), released)
            ) as two,
        ):
            await one.resolve_conids(["AAPL", "MSFT"])
            await two.resolve_conids(["AAPL", "MSFT"])
            released.clear()
            answered: list[int] = []

            async def run(broker: BrokerClient) -> None:
                answered.append(await hammer_snapshots(broker, 12))

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(run, one)
                tasks.start_soon(run, two)
    finally:
        keys = [key async for key in redis_client.scan_iter(f"{prefix}:*")]
        if keys:
            await redis_client.delete(*keys)
    assert answered == [12, 12]
    all_calls = [t for _, t in released]
    assert len(all_calls) == 24
    assert busiest_window(all_calls, 1.0 - MEASUREMENT_SLACK_S) <= 10


async def test_a_throttled_call_is_retried_with_backoff() -> None:
    market = MarketSimulator(["AAPL"], seed=2)
    market.faults.fail_next(ib.ACCOUNTS, times=2, status_code=429, message="Too many requests")
    async with BrokerClient(build_sim_server(market)) as broker:
        accounts = await broker.accounts()
    assert [a.account_id for a in accounts] == [market.account_id]
    assert broker.throttled_calls == 2
