"""Event bus: throughput and end-to-end latency through the project's Redis Streams bus (poller.redis_bus)
against raw redis-py XADD / XREADGROUP / XACK carrying the same JSON, on the real Redis at 127.0.0.1:6379.

Throughput: one consumer reads and acknowledges while the producer publishes N events as fast as it can;
events/s = N / (first publish to last acknowledgement). Latency: one event at a time, publish to delivery.
Keys use a unique prefix and are deleted at the end.

    python -m benchmarks.bus [--events 2000] [--latency-events 300] [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import anyio
from redis.asyncio import Redis

from benchmarks.figures import Figure, p50_p99, print_figures
from poller.events import TriggerEvent
from poller.redis_bus import RedisStreamBus

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
GROUP = "bench-workers"
BLOCK_MS = 1_000


def sample_event(index: int) -> TriggerEvent:
    return TriggerEvent(
        trigger_name=f"bench {index}",
        symbol="AAPL",
        price=200.0 + index * 0.01,
        condition="price > 200",
        indicators={"rsi(14)": 55.0},
        recent_prices=[199.0 + i * 0.05 for i in range(50)],
    )


class RawStreams:
    """The baseline: one stream, one group, XADD / XREADGROUP (count 16, blocking) / XACK, nothing else."""

    def __init__(self, redis: Redis, stream: str) -> None:
        self.redis = redis
        self.stream = stream

    async def setup(self) -> None:
        await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)

    async def publish(self, event: TriggerEvent) -> None:
        await self.redis.xadd(self.stream, {"event_id": event.event_id, "event": event.model_dump_json()})

    async def deliveries(self) -> AsyncIterator[tuple[str, Callable[[], Awaitable[Any]]]]:
        while True:
            reply = await self.redis.xreadgroup(GROUP, "raw", {self.stream: ">"}, count=16, block=BLOCK_MS)
            for _, entries in reply.items() if isinstance(reply, dict) else reply or []:
                for entry_id, fields in entries:
                    yield fields["event_id"], _acker(self.redis, self.stream, entry_id)


def _acker(redis: Redis, stream: str, entry_id: str) -> Callable[[], Awaitable[Any]]:
    async def ack() -> Any:
        return await redis.xack(stream, GROUP, entry_id)

    return ack


Publish = Callable[[TriggerEvent], Awaitable[None]]
Consume = Callable[[], AsyncIterator[tuple[str, Callable[[], Awaitable[Any]]]]]


async def _bus_deliveries(bus: RedisStreamBus) -> AsyncIterator[tuple[str, Callable[[], Awaitable[Any]]]]:
    async for delivery in bus.deliveries():
        yield delivery.event.event_id, delivery.ack


async def _throughput(publish: Publish, consume: Consume, count: int) -> float:
    events = [sample_event(i) for i in range(count)]
    done = anyio.Event()
    received = 0

    async def consumer() -> None:
        nonlocal received
        async for _, ack in consume():
            await ack()
            received += 1
            if received == count:
                done.set()
                return

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(consumer)
        await anyio.sleep(0.05)
        started = time.perf_counter()
        for event in events:
            await publish(event)
        with anyio.fail_after(60):
            await done.wait()
        elapsed = time.perf_counter() - started
        tasks.cancel_scope.cancel()
    return count / elapsed


async def _latency(publish: Publish, consume: Consume, count: int) -> list[float]:
    arrived: dict[str, float] = {}
    waiting: dict[str, anyio.Event] = {}

    async def consumer() -> None:
        async for event_id, ack in consume():
            arrived[event_id] = time.perf_counter()
            waiting[event_id].set()
            await ack()

    samples: list[float] = []
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(consumer)
        await anyio.sleep(0.05)
        for index in range(count):
            event = sample_event(index)
            waiting[event.event_id] = anyio.Event()
            started = time.perf_counter()
            await publish(event)
            with anyio.fail_after(10):
                await waiting[event.event_id].wait()
            samples.append((arrived[event.event_id] - started) * 1000)
        tasks.cancel_scope.cancel()
    return samples


async def measure(redis_url: str, events: int, latency_events: int) -> dict[str, Any]:
    prefix = f"bench:{uuid.uuid4().hex[:12]}"
    redis = Redis.from_url(redis_url, decode_responses=True)
    results: dict[str, Any] = {}
    try:
        for phase in ("throughput", "latency"):
            bus = RedisStreamBus(
                redis_url, stream_prefix=f"{prefix}:{phase}:bus", group=GROUP, consumer="bench", block_ms=BLOCK_MS
            )
            raw = RawStreams(redis, f"{prefix}:{phase}:raw")
            await raw.setup()
            try:
                if phase == "throughput":
                    results["bus_eps"] = await _throughput(bus.publish, partial(_bus_deliveries, bus), events)
                    results["raw_eps"] = await _throughput(raw.publish, raw.deliveries, events)
                else:
                    results["bus_ms"] = await _latency(bus.publish, partial(_bus_deliveries, bus), latency_events)
                    results["raw_ms"] = await _latency(raw.publish, raw.deliveries, latency_events)
            finally:
                await bus.aclose()
    finally:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
    return results


async def run(events: int = 2000, latency_events: int = 300, redis_url: str = DEFAULT_REDIS_URL) -> list[Figure]:
    results = await measure(redis_url, events, latency_events)
    bus_p50, bus_p99 = p50_p99(results["bus_ms"])
    raw_p50, raw_p99 = p50_p99(results["raw_ms"])
    return [
        Figure(
            "bus throughput (events/s, higher is better)",
            "ev/s",
            results["bus_eps"],
            results["raw_eps"],
            note=f"{events} events, one producer and one consumer in one process; ratio < 1 means slower than raw",
        ),
        Figure("bus end-to-end latency p50", "ms", bus_p50, raw_p50),
        Figure("bus end-to-end latency p99", "ms", bus_p99, raw_p99),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--latency-events", type=int, default=300)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    args = parser.parse_args()
    print_figures(
        "bus (baseline: raw redis-py streams)", anyio.run(run, args.events, args.latency_events, args.redis_url)
    )


if __name__ == "__main__":
    main()
