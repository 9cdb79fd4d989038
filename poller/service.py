"""The polling loop: source -> trigger engine -> bus, on a fixed interval, with backoff when the source fails."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio

from poller.bus import EventPublisher
from poller.events import Tick, TriggerEvent
from poller.price_cache import PriceCache
from poller.sources import QuoteSource
from poller.triggers import TriggerEngine

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


@dataclass
class PollerStats:
    cycles: int = 0
    ticks: int = 0
    events: int = 0
    failed_polls: int = 0
    # Scheduled polls that did not happen: the failed ones, those slept through while backing off after a
    # failure, and those skipped after an overrun.
    missed_polls: int = 0
    price_cache_failures: int = 0
    overruns: int = 0
    skipped_cycles: int = 0
    last_poll_at: datetime | None = None
    last_poll_ms: float | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    fired_by_trigger: dict[str, int] = field(default_factory=dict)


class Poller:
    def __init__(
        self,
        source: QuoteSource,
        engine: TriggerEngine,
        bus: EventPublisher,
        *,
        interval_s: float,
        symbols: Iterable[str] = (),
        price_cache: PriceCache | None = None,
    ) -> None:
        self.source = source
        self.engine = engine
        self.bus = bus
        self.price_cache = price_cache
        self.interval_s = interval_s
        self.extra_symbols = {s.upper() for s in symbols}
        self.stats = PollerStats()
        self.running = False

    @property
    def symbols(self) -> list[str]:
        return sorted(self.extra_symbols | self.engine.symbols())

    async def poll_once(self) -> list[TriggerEvent]:
        """One cycle: one source call for every symbol, each tick through the engine, events published."""
        symbols = self.symbols
        if not symbols:
            return []
        started = time.perf_counter()
        ticks = await self.source.poll(symbols)
        if self.price_cache is not None and ticks:
            await self._remember(self.price_cache, ticks)
        events = self.engine.on_ticks(ticks)
        for event in events:
            await self.bus.publish(event)
            self.stats.fired_by_trigger[event.trigger_name] = self.stats.fired_by_trigger.get(event.trigger_name, 0) + 1
            log.info(
                "trigger fired: %s (%s %s) at %.4f",
                event.trigger_name,
                event.symbol,
                event.condition,
                event.price,
                extra={"event": "trigger_fired", "symbol": event.symbol, "price": event.price},
            )
        self.stats.cycles += 1
        self.stats.ticks += len(ticks)
        self.stats.events += len(events)
        self.stats.last_poll_at = datetime.now(UTC)
        self.stats.last_poll_ms = (time.perf_counter() - started) * 1000
        return events

    async def _remember(self, cache: PriceCache, ticks: list[Tick]) -> None:
        """Ticks into the price cache; a cache failure is logged and counted, never allowed to stop triggers."""
        try:
            await cache.append(ticks)
        except Exception as exc:
            self.stats.price_cache_failures += 1
            log.warning("price cache append failed: %s: %s", type(exc).__name__, exc)

    async def run(self) -> None:
        """Poll until cancelled. A failing source is retried with exponential backoff; an overrun cycle
        makes the loop skip to the next interval boundary instead of piling up."""
        self.running = True
        next_at = time.monotonic()
        try:
            while True:
                try:
                    await self.poll_once()
                    self.stats.consecutive_failures = 0
                    self.stats.last_error = None
                except Exception as exc:  # a source failure must never end the loop
                    self.stats.failed_polls += 1
                    self.stats.consecutive_failures += 1
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                    backoff_s = min(MAX_BACKOFF_S, self.interval_s * 2 ** min(self.stats.consecutive_failures, 10))
                    self.stats.missed_polls += max(1, int(backoff_s // self.interval_s))
                    log.warning("poll failed (%s); retrying in %.1f s", self.stats.last_error, backoff_s)
                    await anyio.sleep(backoff_s)
                    next_at = time.monotonic()
                    continue
                next_at += self.interval_s
                now = time.monotonic()
                if now > next_at:
                    missed = int((now - next_at) // self.interval_s) + 1
                    self.stats.overruns += 1
                    self.stats.skipped_cycles += missed
                    self.stats.missed_polls += missed
                    log.warning(
                        "poll cycle overran the %.2f s interval; skipping %d cycle(s)",
                        self.interval_s,
                        missed,
                    )
                    next_at += missed * self.interval_s
                await anyio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            self.running = False
