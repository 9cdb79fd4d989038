"""Event buses: the in-process queue, Redis Streams (the real Redis on 127.0.0.1:6379, and a private
redis-server that is stopped and started again), and the webhook publisher against a real local HTTP server."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
import uvicorn
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from poller.bus import Delivery, InProcessBus, build_bus
from poller.events import TriggerEvent
from poller.redis_bus import RedisStreamBus
from poller.webhook import WebhookPublisher

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _event(name: str, channel: str = "info", price: float = 100.0) -> TriggerEvent:
    return TriggerEvent(trigger_name=name, symbol="AAPL", price=price, condition="price > 99", channel=channel)


async def _take(deliveries: AsyncIterator[Delivery], count: int) -> list[Delivery]:
    taken: list[Delivery] = []
    with anyio.fail_after(10):
        while len(taken) < count:
            taken.append(await anext(deliveries))
    return taken


@pytest.fixture
async def stream_prefix() -> AsyncIterator[str]:
    prefix = f"test:{uuid.uuid4().hex}"
    yield prefix
    redis = Redis.from_url(REDIS_URL)
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


# --- in-process -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_in_process_bus_hands_out_urgent_events_first() -> None:
    bus = InProcessBus()
    for event in (_event("info-1"), _event("urgent-1", "urgent"), _event("info-2")):
        await bus.publish(event)
    taken = await _take(bus.deliveries(), 3)
    assert [delivery.event.trigger_name for delivery in taken] == ["urgent-1", "info-1", "info-2"]
    assert bus.backlog == 0


# --- Redis Streams --------------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.anyio
async def test_redis_bus_publishes_delivers_and_acknowledges(stream_prefix: str) -> None:
    bus = RedisStreamBus(REDIS_URL, stream_prefix=stream_prefix, consumer="worker-a")
    published = [_event(f"e{index}", price=100 + index) for index in range(3)]
    for event in published:
        await bus.publish(event)
    deliveries = bus.deliveries()
    taken = await _take(deliveries, 3)
    assert [delivery.event for delivery in taken] == published
    assert not any(delivery.redelivered for delivery in taken)
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    pending_before = await redis.xpending(f"{stream_prefix}:info", "overlay-workers")
    for delivery in taken:
        await delivery.ack()
    pending_after = await redis.xpending(f"{stream_prefix}:info", "overlay-workers")
    await redis.aclose()
    await deliveries.aclose()
    await bus.aclose()
    assert pending_before["pending"] == 3
    assert pending_after["pending"] == 0
    assert bus.published == 3


@pytest.mark.redis
@pytest.mark.anyio
async def test_redis_bus_delivers_urgent_before_info(stream_prefix: str) -> None:
    bus = RedisStreamBus(REDIS_URL, stream_prefix=stream_prefix, consumer="worker-a")
    for event in (_event("info-1"), _event("info-2"), _event("urgent-1", "urgent"), _event("info-3")):
        await bus.publish(event)
    await bus.publish(_event("urgent-2", "urgent"))
    deliveries = bus.deliveries()
    taken = await _take(deliveries, 5)
    for delivery in taken:
        await delivery.ack()
    await deliveries.aclose()
    await bus.aclose()
    assert [delivery.event.trigger_name for delivery in taken] == ["urgent-1", "urgent-2", "info-1", "info-2", "info-3"]


@pytest.mark.redis
@pytest.mark.anyio
async def test_unacknowledged_event_of_a_dead_consumer_is_claimed_by_another(stream_prefix: str) -> None:
    publisher = RedisStreamBus(REDIS_URL, stream_prefix=stream_prefix)
    event = _event("claimed", "urgent")
    await publisher.publish(event)
    await publisher.publish(_event("handled"))

    dying = RedisStreamBus(REDIS_URL, stream_prefix=stream_prefix, consumer="worker-dies")
    dying_deliveries = dying.deliveries()
    first, second = await _take(dying_deliveries, 2)
    await second.ack()
    # worker-dies stops here without acknowledging `first`.
    await dying_deliveries.aclose()
    await dying.aclose()

    survivor = RedisStreamBus(REDIS_URL, stream_prefix=stream_prefix, consumer="worker-b", claim_idle_ms=0)
    survivor_deliveries = survivor.deliveries()
    (claimed,) = await _take(survivor_deliveries, 1)
    await claimed.ack()
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    pending = await redis.xpending(f"{stream_prefix}:urgent", "overlay-workers")
    await redis.aclose()
    await survivor_deliveries.aclose()
    await survivor.aclose()
    await publisher.aclose()

    assert first.event == event
    assert not first.redelivered
    assert claimed.event.event_id == event.event_id
    assert claimed.redelivered
    assert pending["pending"] == 0


@pytest.mark.redis
@pytest.mark.anyio
async def test_a_poison_event_that_kills_every_worker_is_set_aside_after_max_deliveries(stream_prefix: str) -> None:
    publisher = RedisStreamBus(REDIS_URL, stream_prefix=stream_prefix)
    poison = _event("poison", "urgent")
    await publisher.publish(poison)
    seen: list[Delivery] = []
    for worker in range(2):
        # each worker takes the event and dies before acknowledging it
        bus = RedisStreamBus(
            REDIS_URL, stream_prefix=stream_prefix, consumer=f"worker-{worker}", claim_idle_ms=0, max_deliveries=2
        )
        deliveries = bus.deliveries()
        seen.extend(await _take(deliveries, 1))
        await deliveries.aclose()
        await bus.aclose()
    await publisher.publish(_event("healthy", "urgent"))
    last = RedisStreamBus(
        REDIS_URL, stream_prefix=stream_prefix, consumer="worker-3", claim_idle_ms=0, max_deliveries=2
    )
    deliveries = last.deliveries()
    (next_one,) = await _take(deliveries, 1)
    await next_one.ack()
    await deliveries.aclose()
    await last.aclose()
    await publisher.aclose()
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    dead = await redis.xrange(f"{stream_prefix}:dead")
    pending = await redis.xpending(f"{stream_prefix}:urgent", "overlay-workers")
    await redis.aclose()

    assert [d.event.event_id for d in seen] == [poison.event_id] * 2
    assert next_one.event.trigger_name == "healthy"
    [(_, fields)] = dead
    assert fields["event_id"] == poison.event_id and fields["deliveries"] == "3"
    assert fields["stream"] == f"{stream_prefix}:urgent"
    assert pending["pending"] == 0


@pytest.mark.redis
@pytest.mark.anyio
async def test_a_restarted_consumer_gets_back_what_it_read_and_never_acknowledged(stream_prefix: str) -> None:
    bus = RedisStreamBus(REDIS_URL, stream_prefix=stream_prefix, consumer="worker-a")
    event = _event("unacked")
    await bus.publish(event)
    deliveries = bus.deliveries()
    (first,) = await _take(deliveries, 1)
    await deliveries.aclose()
    await bus.aclose()

    restarted = RedisStreamBus(REDIS_URL, stream_prefix=stream_prefix, consumer="worker-a")
    again = restarted.deliveries()
    (second,) = await _take(again, 1)
    await second.ack()
    await again.aclose()
    await restarted.aclose()
    assert first.event.event_id == second.event.event_id == event.event_id
    assert second.redelivered


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class PrivateRedis:
    """A redis-server of our own, without persistence, that a test may stop and start again."""

    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = field(default=None)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(500):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.01)
        raise AssertionError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None


@contextmanager
def private_redis(workdir: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(_free_port(), workdir)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.stop()


@pytest.mark.redis
@pytest.mark.anyio
async def test_redis_bus_buffers_while_redis_is_away_and_catches_up_when_it_returns(tmp_path: Path) -> None:
    with private_redis(tmp_path) as server:
        bus = RedisStreamBus(server.url, stream_prefix="outage", consumer="worker-a", reconnect_max_s=0.2)
        deliveries = bus.deliveries()
        await bus.publish(_event("before"))
        (before,) = await _take(deliveries, 1)
        await before.ack()

        server.stop()
        during = [_event("during-1"), _event("during-2", "urgent"), _event("during-3")]
        for event in during:
            await bus.publish(event)
        assert bus.buffered == 3

        server.start()
        with anyio.fail_after(10):
            while True:
                if not bus.buffered:
                    break
                await anyio.sleep(0.02)
        taken = await _take(deliveries, 3)
        for delivery in taken:
            await delivery.ack()
        await deliveries.aclose()
        await bus.aclose()

    # Redis came back empty (no persistence): the group was created again and every buffered event arrived.
    assert before.event.trigger_name == "before"
    assert [delivery.event.trigger_name for delivery in taken] == ["during-2", "during-1", "during-3"]
    assert bus.dropped == 0


@pytest.mark.redis
@pytest.mark.anyio
async def test_build_bus_makes_each_kind_and_names_missing_settings(stream_prefix: str, tmp_path: Path) -> None:
    memory = build_bus("memory")
    redis_bus = build_bus("redis", redis_url=REDIS_URL, stream_prefix=stream_prefix)
    webhook = build_bus(
        "webhook", webhook_base_url="http://127.0.0.1:1/", token="t", dead_letter_path=str(tmp_path / "dead.jsonl")
    )
    assert isinstance(memory, InProcessBus)
    assert isinstance(redis_bus, RedisStreamBus)
    assert redis_bus.streams == {"urgent": f"{stream_prefix}:urgent", "info": f"{stream_prefix}:info"}
    assert isinstance(webhook, WebhookPublisher)
    assert webhook.url == "http://127.0.0.1:1/workflows/trigger"
    for bus in (memory, redis_bus, webhook):
        await bus.aclose()
    with pytest.raises(ValueError, match="REDIS_URL"):
        build_bus("redis")
    with pytest.raises(ValueError, match="OVERLAY_TOKEN"):
        build_bus("webhook", webhook_base_url="http://127.0.0.1:1", dead_letter_path=str(tmp_path / "d"))


# --- webhook --------------------------------------------------------------------------------------


@dataclass
class TriggerEndpoint:
    """The overlay's POST /workflows/trigger, answering `statuses` in turn (then 200), recording each request."""

    token: str
    statuses: list[int]
    requests: list[tuple[dict[str, str], dict[str, object]]] = field(default_factory=list)

    async def handle(self, request: Request) -> JSONResponse:
        self.requests.append((dict(request.headers), await request.json()))
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        status = self.statuses.pop(0) if self.statuses else 200
        return JSONResponse({"accepted": status == 200}, status_code=status)


@asynccontextmanager
async def serve(endpoint: TriggerEndpoint) -> AsyncIterator[str]:
    app = Starlette(routes=[Route("/workflows/trigger", endpoint.handle, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve, [sock])
        with anyio.fail_after(10):
            while True:
                if server.started:
                    break
                await anyio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
    sock.close()


def _dead_letters(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.anyio
async def test_webhook_retries_a_failing_overlay_until_it_accepts(tmp_path: Path) -> None:
    endpoint = TriggerEndpoint(token="secret", statuses=[503, 502])
    event = _event("webhook", "urgent")
    async with serve(endpoint) as base_url:
        publisher = WebhookPublisher(
            f"{base_url}/workflows/trigger", "secret", dead_letter_path=tmp_path / "dead.jsonl", backoff_s=0.01
        )
        await publisher.publish(event)
        await publisher.aclose()
    assert len(endpoint.requests) == 3
    headers, body = endpoint.requests[-1]
    assert TriggerEvent.model_validate(body) == event
    assert headers["idempotency-key"] == event.event_id
    assert publisher.delivered == 1
    assert publisher.dead_lettered == 0
    assert _dead_letters(tmp_path / "dead.jsonl") == []


@pytest.mark.anyio
async def test_webhook_dead_letters_after_the_last_retry(tmp_path: Path) -> None:
    endpoint = TriggerEndpoint(token="secret", statuses=[500] * 10)
    event = _event("never accepted")
    dead = tmp_path / "poller" / "dead.jsonl"
    async with serve(endpoint) as base_url:
        publisher = WebhookPublisher(
            f"{base_url}/workflows/trigger", "secret", dead_letter_path=dead, retries=2, backoff_s=0.01
        )
        await publisher.publish(event)
        await publisher.aclose()
    (letter,) = _dead_letters(dead)
    assert len(endpoint.requests) == 3
    assert TriggerEvent.model_validate(letter["event"]) == event
    assert "HTTP 500" in str(letter["error"])
    assert publisher.dead_lettered == 1


@pytest.mark.anyio
async def test_webhook_does_not_retry_a_wrong_token(tmp_path: Path) -> None:
    endpoint = TriggerEndpoint(token="secret", statuses=[])
    dead = tmp_path / "dead.jsonl"
    async with serve(endpoint) as base_url:
        publisher = WebhookPublisher(f"{base_url}/workflows/trigger", "wrong", dead_letter_path=dead, backoff_s=0.01)
        await publisher.publish(_event("refused"))
        await publisher.aclose()
    (letter,) = _dead_letters(dead)
    assert len(endpoint.requests) == 1
    assert "HTTP 401" in str(letter["error"])


@pytest.mark.anyio
async def test_webhook_dead_letters_when_the_overlay_is_unreachable(tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    publisher = WebhookPublisher(
        f"http://127.0.0.1:{_free_port()}/workflows/trigger", "t", dead_letter_path=dead, retries=1, backoff_s=0.01
    )
    await publisher.publish(_event("nobody home"))
    await publisher.publish(_event("still nobody"))
    await publisher.aclose()
    letters = _dead_letters(dead)
    assert [letter["event"]["trigger_name"] for letter in letters] == ["nobody home", "still nobody"]  # type: ignore[index]
    assert publisher.delivered == 0
