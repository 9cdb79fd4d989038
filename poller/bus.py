"""Where trigger events go. The in-process queue is the embedded default."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from poller.events import TriggerEvent


@dataclass
class Delivery:
    """One event handed to a consumer; `ack()` once the workflow has accepted it."""

    event: TriggerEvent
    ack: Callable[[], Awaitable[None]]


class EventBus(Protocol):
    async def publish(self, event: TriggerEvent) -> None: ...

    def deliveries(self) -> AsyncIterator[Delivery]: ...


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

    @property
    def backlog(self) -> int:
        return self._queue.qsize()
