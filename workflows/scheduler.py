"""Runs market_scan once per scheduled slot: by default 09:00 America/New_York on exchange trading days.

The time is a crontab expression read in New York time (APScheduler's CronTrigger: a maintained parser that
also gets the DST changes right); the days are narrowed to exchange sessions by the market calendar
(exchange_calendars through workflows.market_hours.ExchangeClock: holidays closed, early closes still open
at 09:00). Each slot starts at most one run, across restarts and workers alike: the run carries the slot's
id as its trigger event id, which the workflow table keeps unique, so a second worker's start finds the
first one's run instead of starting another. A slot missed by less than `catch_up_s` (a restart at 09:20)
still runs; an older one does not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import anyio
from apscheduler.triggers.cron import CronTrigger
from pydantic import Field

from broker.errors import BrokerError
from poller.events import TriggerEvent
from workflows.graphs.market_scan import WORKFLOW as MARKET_SCAN
from workflows.market_hours import NEW_YORK, MarketClock
from workflows.run_types import RunView, WorkflowError
from workflows.runner import WorkflowRunner
from workflows.times import utc_now

log = logging.getLogger(__name__)

DEFAULT_SCAN_CRON = "0 9 * * *"
DEFAULT_CATCH_UP_S = 3600.0
DEFAULT_CHECK_INTERVAL_S = 30.0


class ScanSlotEvent(TriggerEvent):
    """The scheduler's "trigger": one slot, and the symbols to fall back on when no watchlist is set."""

    slot: str
    fallback_symbols: list[str] = Field(default_factory=list)


def slot_id(slot: datetime) -> str:
    local = slot.astimezone(NEW_YORK)
    return f"scan:{local:%Y-%m-%dT%H:%M}"


class ScanScheduler:
    """`await scheduler.run_due(now)` starts the scan of the slot due at `now`, if any and not yet run;
    `await scheduler.run_forever()` does that every `check_interval_s` until cancelled."""

    def __init__(
        self,
        runner: WorkflowRunner,
        clock: MarketClock,
        *,
        cron: str = DEFAULT_SCAN_CRON,
        catch_up_s: float = DEFAULT_CATCH_UP_S,
        fallback_symbols: Callable[[], Sequence[str]] = list,
    ) -> None:
        self.runner = runner
        self.clock = clock
        self.cron = cron
        self.trigger = CronTrigger.from_crontab(cron, timezone=NEW_YORK)
        self.catch_up_s = catch_up_s
        self.fallback_symbols = fallback_symbols

    def due_slot(self, now: datetime) -> datetime | None:
        """The latest cron time in (now - catch_up_s, now] that falls on an exchange trading day."""
        earliest = now - timedelta(seconds=self.catch_up_s)
        latest: datetime | None = None
        fire = self.trigger.get_next_fire_time(None, earliest)
        while fire is not None and fire <= now:
            latest = fire
            fire = self.trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
        if latest is None or not self.clock.is_trading_day(latest.astimezone(NEW_YORK).date()):
            return None
        return latest

    async def run_due(self, now: datetime | None = None) -> RunView | None:
        """Start the due slot's scan; None when no slot is due or its run already exists (here or in
        another worker)."""
        slot = self.due_slot(now or utc_now())
        if slot is None:
            return None
        event_id = slot_id(slot)
        if await self.runner.deps.store.run_for_event(event_id) is not None:
            return None
        event = ScanSlotEvent(
            event_id=event_id,
            trigger_name="scheduled market scan",
            symbol="",
            price=0.0,
            condition=f"cron '{self.cron}' America/New_York, exchange trading days",
            action=f"execute_workflow:{MARKET_SCAN}",
            slot=event_id,
            fallback_symbols=[s.upper() for s in self.fallback_symbols()],
        )
        log.info("starting the %s scan", event_id)
        return await self.runner.start(MARKET_SCAN, event=event)

    async def run_forever(self, check_interval_s: float = DEFAULT_CHECK_INTERVAL_S) -> None:
        while True:
            try:
                await self.run_due()
            except (BrokerError, WorkflowError) as exc:
                log.warning("scheduled market scan: %s", exc)
            await anyio.sleep(check_interval_s)
