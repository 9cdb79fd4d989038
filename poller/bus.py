"""Where trigger events go.

Three kinds, chosen by `build_bus` from the settings (EVENT_BUS=memory|redis|webhook):
- `InProcessBus` (memory, the embedded default): an asyncio queue, urgent before info, nothing survives.
- `RedisStreamBus` (poller.redis_bus): Redis Streams with a consumer group, at-least-once delivery.
- `WebhookPublisher` (poller.webhook): POSTs each event to the overlay's `/workflows/trigger`; publish-only.

A publisher only publishes (`EventPublisher`); an `EventBus` also hands the events to consumers.
Delivery is at least once for the Redis bus: a consumer must recognise a redelivered `event_id`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from poller.events import TriggerEvent

BusKind = Literal["memory", "redis", "webhook"]
WEBHOOK_PATH = "/workflows/trigger"


@dataclass
class Delivery:
    """One event handed to a consumer; `ack()` once the workflow has accepted it.

    `redelivered` is True when the event was handed out before and not acknowledged (a consumer died).
    """

    event: TriggerEvent
    ack: Callable[[], Awaitable[None]]
    redelivered: bool = False


class EventPublisher(Protocol):
    async def publish(self, event: TriggerEvent) -> None: ...

    async def aclose(self) -> None: ...


class EventSource(Protocol):
    def deliveries(self) -> AsyncIterator[Delivery]: ...


class EventBus(EventPublisher, EventSource, Protocol):
    """A publisher whose events can be consumed from the same object."""


async def _no_ack() -> None:
    return None


class InProcessBus:
    """An asyncio queue: urgent events jump ahead of informational ones. Nothing survives the process."""

    def __init__(self, max_events: int = 10_000) -> None:
        self._queue: asyncio.PriorityQueue[tuple[int, int, TriggerEvent]] = asyncio.PriorityQueue(max_events)
        self._sequence = 0
        self.published = 0

    async def publish(self, event: TriggerEvent) -> None:
        self._sequence += 1
        priority = 0 if event.channel == "urgent" else 1
        await self._queue.put((priority, self._sequence, event))
        self.published += 1

    async def deliveries(self) -> AsyncIterator[Delivery]:
        while True:
            _, _, event = await self._queue.get()
            yield Delivery(event=event, ack=_no_ack)

    async def aclose(self) -> None:
        return None

    @property
    def backlog(self) -> int:
        return self._queue.qsize()


def build_bus(
    kind: BusKind,
    *,
    redis_url: str | None = None,
    webhook_base_url: str | None = None,
    token: str | None = None,
    dead_letter_path: str | None = None,
    stream_prefix: str | None = None,
    consumer: str | None = None,
) -> EventPublisher:
    """The bus the settings ask for. `memory` and `redis` return an EventBus (consumable); `webhook` only publishes.

    redis needs `redis_url` (REDIS_URL); webhook needs `webhook_base_url` (LANGGRAPH_URL, the overlay's HTTP
    base URL, to which `/workflows/trigger` is appended), `token` (OVERLAY_TOKEN) and `dead_letter_path`.
    """
    # Imported here because both modules import Delivery and the protocols from this one.
    from poller.redis_bus import DEFAULT_STREAM_PREFIX, RedisStreamBus
    from poller.webhook import WebhookPublisher

    if kind == "memory":
        return InProcessBus()
    if kind == "redis":
        if not redis_url:
            raise ValueError("EVENT_BUS=redis needs REDIS_URL (for example redis://127.0.0.1:6379/0)")
        return RedisStreamBus(redis_url, stream_prefix=stream_prefix or DEFAULT_STREAM_PREFIX, consumer=consumer)
    if kind == "webhook":
        if not webhook_base_url or not token or not dead_letter_path:
            raise ValueError(
                "EVENT_BUS=webhook needs LANGGRAPH_URL (the overlay's HTTP base URL), OVERLAY_TOKEN "
                "and a dead-letter file"
            )
        return WebhookPublisher(webhook_base_url.rstrip("/") + WEBHOOK_PATH, token, dead_letter_path=dead_letter_path)
    raise ValueError(f"unknown event bus {kind!r}; use memory, redis or webhook")
