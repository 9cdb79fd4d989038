"""Trigger events over Redis Streams, for the poller as its own process and for several overlay workers.

Layout: urgent and informational events go to two streams, `<prefix>:urgent` and `<prefix>:info`, each kept
to about `maxlen` entries (approximate MAXLEN trimming). Every entry holds the event's JSON and its id.

Consumers share one consumer group, so each event goes to one worker. Delivery is at least once:
- a worker reads with XREADGROUP, urgent first, and acknowledges with XACK (`Delivery.ack`);
- at start a worker first gets back what it read under the same consumer name and never acknowledged;
- entries another worker read but did not acknowledge within `claim_idle_ms` (it died) are taken over
  with XAUTOCLAIM and handed out again with `redelivered=True`.
A redelivered event keeps its `event_id`; the workflow store deduplicates by it.
An entry delivered more than `max_deliveries` times without an ack (a poison event: every worker that takes
it dies) is moved to `<prefix>:dead` with its delivery count and acknowledged, so it stops taking workers
down; `XRANGE <prefix>:dead - +` shows what was set aside.

Redis going away: `publish` never raises for it. The event waits in a bounded in-memory buffer (oldest
dropped, and counted, once `buffer_size` is reached) and a background task re-publishes the buffer in order,
with exponential backoff, once Redis answers again. Later events queue behind the buffer so order is kept.
A trigger fires on an edge and does not fire again by itself, so raising would lose the event for good.
`deliveries()` keeps retrying with backoff too, and re-creates the group if Redis came back empty.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from poller.bus import Delivery
from poller.events import Channel, TriggerEvent

log = logging.getLogger(__name__)

DEFAULT_STREAM_PREFIX = "overlay:events"
DEFAULT_GROUP = "overlay-workers"
CHANNELS: tuple[Channel, ...] = ("urgent", "info")
ACK_ATTEMPTS = 5

T = TypeVar("T")


class _GroupMissing(Exception):
    """Redis answered NOGROUP: it restarted without its data; the group must be created again."""


_TRANSIENT = (RedisConnectionError, RedisTimeoutError, _GroupMissing)


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class RedisStreamBus:
    """Publish to and consume from Redis Streams with a consumer group (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        stream_prefix: str = DEFAULT_STREAM_PREFIX,
        group: str = DEFAULT_GROUP,
        consumer: str | None = None,
        claim_idle_ms: int = 30_000,
        max_deliveries: int = 5,
        maxlen: int = 100_000,
        block_ms: int = 1_000,
        batch_size: int = 16,
        buffer_size: int = 10_000,
        reconnect_min_s: float = 0.1,
        reconnect_max_s: float = 10.0,
    ) -> None:
        self.url = url
        self.streams: dict[Channel, str] = {channel: f"{stream_prefix}:{channel}" for channel in CHANNELS}
        self.dead_letters = f"{stream_prefix}:dead"
        self.max_deliveries = max_deliveries
        self.group = group
        self.consumer = consumer or default_consumer_name()
        self.claim_idle_ms = claim_idle_ms
        self.maxlen = maxlen
        self.block_ms = block_ms
        self.batch_size = batch_size
        self.buffer_size = buffer_size
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.published = 0
        self.dropped = 0
        self._redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=2.0,
            # A blocking XREADGROUP holds the socket for block_ms: the read timeout must be longer.
            socket_timeout=block_ms / 1000 + 5.0,
            # Few quick retries: a longer outage is handled by the buffer and the backoff below.
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        )
        self._backlog: deque[TriggerEvent] = deque()
        self._drain_task: asyncio.Task[None] | None = None
        self._groups_ready = False

    # --- publishing -------------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Events waiting for Redis to come back."""
        return len(self._backlog)

    async def publish(self, event: TriggerEvent) -> None:
        if self._backlog:
            self._buffer(event)
            return
        try:
            await self._xadd(event)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("Redis at %s unreachable (%s); event %s buffered", self.url, exc, event.event_id)
            self._buffer(event)

    async def _xadd(self, event: TriggerEvent) -> None:
        await self._redis.xadd(
            self.streams[event.channel],
            {"event_id": event.event_id, "event": event.model_dump_json()},
            maxlen=self.maxlen,
            approximate=True,
        )
        self.published += 1

    def _buffer(self, event: TriggerEvent) -> None:
        if len(self._backlog) >= self.buffer_size:
            lost = self._backlog.popleft()
            self.dropped += 1
            log.error("event buffer full (%d): event %s dropped while Redis is down", self.buffer_size, lost.event_id)
        self._backlog.append(event)
        if self._drain_task is None or self._drain_task.done():
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        await self._retrying()(self._flush_backlog)
        log.info("Redis at %s is back: buffered events published", self.url)

    async def _flush_backlog(self) -> None:
        while self._backlog:
            await self._xadd(self._backlog[0])
            self._backlog.popleft()

    def _retrying(self, attempts: int | None = None) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception_type(_TRANSIENT),
            wait=wait_exponential(multiplier=self.reconnect_min_s, min=self.reconnect_min_s, max=self.reconnect_max_s),
            reraise=True,
            **({} if attempts is None else {"stop": stop_after_attempt(attempts)}),
        )

    async def _with_reconnect(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run a Redis operation, retrying with backoff while Redis is away; re-create the groups if lost."""
        return await self._retrying()(self._guarded, operation)

    async def _guarded(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            if not self._groups_ready:
                await self._ensure_groups()
            return await operation()
        except ResponseError as exc:
            if str(exc).startswith("NOGROUP"):
                self._groups_ready = False
                raise _GroupMissing(str(exc)) from exc
            raise
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("Redis at %s unreachable (%s); retrying", self.url, exc)
            raise

    # --- consuming --------------------------------------------------------------------------------

    async def _ensure_groups(self) -> None:
        for stream in self.streams.values():
            try:
                await self._redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise
        self._groups_ready = True

    async def deliveries(self) -> AsyncIterator[Delivery]:
        """Events for this consumer, urgent first, forever. Each must be acknowledged with `ack()`."""
        for delivery in await self._with_reconnect(self._read_own_pending):
            yield delivery
        claim_interval_s = self.claim_idle_ms / 2000
        next_claim_at = time.monotonic()
        while True:
            if time.monotonic() >= next_claim_at:
                next_claim_at = time.monotonic() + claim_interval_s
                for delivery in await self._with_reconnect(self._claim_abandoned):
                    yield delivery
            for delivery in await self._with_reconnect(self._read_new):
                yield delivery

    async def _read_own_pending(self) -> list[Delivery]:
        """What this consumer name read before (a restart) and never acknowledged."""
        reply = await self._redis.xreadgroup(
            self.group, self.consumer, {stream: "0" for stream in self.streams.values()}, count=self.buffer_size
        )
        return await self._deliveries_from(_entries_by_stream(reply), redelivered=True)

    async def _claim_abandoned(self) -> list[Delivery]:
        deliveries: list[Delivery] = []
        for stream in self.streams.values():
            reply = await self._redis.xautoclaim(
                stream, self.group, self.consumer, min_idle_time=self.claim_idle_ms, count=self.batch_size
            )
            claimed = reply[1] if len(reply) > 1 else []
            if claimed:
                log.warning("took over %d unacknowledged event(s) on %s from a silent consumer", len(claimed), stream)
            deliveries.extend(await self._deliveries_from({stream: claimed}, redelivered=True))
        return deliveries

    async def _set_aside_poison(self, stream: str, entries: list[Any]) -> list[Any]:
        """`entries` without those delivered more than `max_deliveries` times, which go to the dead letters."""
        if not entries:
            return entries
        ids = [entry_id for entry_id, _ in entries]
        pending = await self._redis.xpending_range(stream, self.group, min=min(ids), max=max(ids), count=len(ids) * 2)
        deliveries = {row["message_id"]: row["times_delivered"] for row in pending}
        kept: list[Any] = []
        for entry_id, fields in entries:
            count = deliveries.get(entry_id, 0)
            if count <= self.max_deliveries:
                kept.append((entry_id, fields))
                continue
            await self._redis.xadd(
                self.dead_letters,
                {**(fields or {}), "stream": stream, "entry_id": entry_id, "deliveries": str(count)},
                maxlen=self.maxlen,
                approximate=True,
            )
            await self._redis.xack(stream, self.group, entry_id)
            log.error(
                "entry %s on %s was delivered %d times and never acknowledged: moved to %s",
                entry_id,
                stream,
                count,
                self.dead_letters,
            )
        return kept

    async def _read_new(self) -> list[Delivery]:
        urgent = self.streams["urgent"]
        reply = await self._redis.xreadgroup(self.group, self.consumer, {urgent: ">"}, count=self.batch_size)
        if not _entries_by_stream(reply):
            # One at a time while waiting, so an urgent event never queues behind a batch of info events.
            reply = await self._redis.xreadgroup(
                self.group,
                self.consumer,
                {stream: ">" for stream in self.streams.values()},
                count=1,
                block=self.block_ms,
            )
        return await self._deliveries_from(_entries_by_stream(reply), redelivered=False)

    async def _deliveries_from(self, by_stream: dict[str, list[Any]], *, redelivered: bool) -> list[Delivery]:
        deliveries: list[Delivery] = []
        for channel in CHANNELS:
            stream = self.streams[channel]
            entries = by_stream.get(stream, [])
            if redelivered:
                entries = await self._set_aside_poison(stream, entries)
            for entry_id, fields in entries:
                event = _decode(stream, entry_id, fields)
                if event is None:
                    await self._redis.xack(stream, self.group, entry_id)
                    continue
                deliveries.append(Delivery(event=event, ack=self._acker(stream, entry_id), redelivered=redelivered))
        return deliveries

    async def _xack(self, stream: str, entry_id: str) -> None:
        # A coroutine function of our own: tenacity would not await the redis method's awaitable.
        await self._redis.xack(stream, self.group, entry_id)

    def _acker(self, stream: str, entry_id: str) -> Callable[[], Awaitable[None]]:
        async def ack() -> None:
            try:
                await self._retrying(ACK_ATTEMPTS)(self._xack, stream, entry_id)
            except _TRANSIENT as exc:
                # Not fatal: the entry stays pending, is claimed again later and deduplicated by event id.
                log.warning("could not acknowledge %s on %s (%s); it will be redelivered", entry_id, stream, exc)

        return ack

    # --- lifecycle --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        if self._drain_task is not None and not self._drain_task.done():
            self._drain_task.cancel()
        if self._backlog:
            log.error("%d buffered event(s) never reached Redis at %s and are lost", len(self._backlog), self.url)
        await self._redis.aclose()


def _entries_by_stream(reply: Any) -> dict[str, list[Any]]:
    """XREADGROUP's reply as {stream: [(id, fields), ...]}; RESP2 gives a list of pairs, RESP3 a mapping."""
    if not reply:
        return {}
    pairs = reply.items() if isinstance(reply, dict) else reply
    by_stream: dict[str, list[Any]] = {}
    for stream, entries in pairs:
        if entries:
            by_stream[stream] = list(entries)
    return by_stream


def _decode(stream: str, entry_id: str, fields: dict[str, str] | None) -> TriggerEvent | None:
    """The event of one entry; None for an entry trimmed away while pending or one that does not parse."""
    if not fields or "event" not in fields:
        return None
    try:
        return TriggerEvent.model_validate_json(fields["event"])
    except ValidationError as exc:
        log.error("entry %s on %s is not a TriggerEvent and is discarded: %s", entry_id, stream, exc)
        return None
