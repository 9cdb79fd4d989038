"""The broker part of the trading context (account summary and positions), kept fresh in the background.

The model reads get_context often; reading IB_MCP on every call made each one two IB_MCP round trips (three
with the account lookup), several times the cost of the tool call itself. Instead a background loop reads
the account every `refresh_interval_s`, at once after the order ledger records a change (an order submitted
or filled), and on the next read when the snapshot is older than `max_age_s` (the loop stalled). A failed read
is kept as the snapshot too, with its error, so an unreachable IB_MCP does not make every call wait for it.
Every snapshot says when it was read, and the context shows its age.

For display only: risk checks and orders never read it (workflows.risk_gate reads the broker live).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio

from broker.errors import BrokerError

if TYPE_CHECKING:
    from broker.client import BrokerClient
    from broker.models import Account, Position

log = logging.getLogger(__name__)

REFRESH_INTERVAL_S = 5.0
MAX_AGE_S = 15.0


@dataclass(frozen=True)
class BrokerSnapshot:
    """One read of the account. `as_of` is when the read started (UTC); `error` is set when it failed."""

    as_of: datetime
    account_id: str | None = None
    summary: Account | None = None
    positions: list[Position] = field(default_factory=list)
    error: str | None = None
    started: float = 0.0
    """time.monotonic() when the read started: what freshness is judged by."""

    @property
    def age_s(self) -> float:
        return max(0.0, time.monotonic() - self.started)


class BrokerSnapshotKeeper:
    """Holds the latest BrokerSnapshot; `run()` keeps it fresh, `current()` returns it (reading it first
    when there is none yet, an order changed since, or it is older than `max_age_s`)."""

    def __init__(
        self,
        broker: BrokerClient,
        account: Callable[[], Awaitable[str]],
        *,
        refresh_interval_s: float = REFRESH_INTERVAL_S,
        max_age_s: float = MAX_AGE_S,
    ) -> None:
        self.broker = broker
        self.account = account
        self.refresh_interval_s = refresh_interval_s
        self.max_age_s = max_age_s
        self.refreshes = 0
        self._snapshot: BrokerSnapshot | None = None
        self._changed_at = -1.0
        self._wake = anyio.Event()
        self._lock = anyio.Lock()

    def invalidate(self, *_: object) -> None:
        """Something that moves the account happened (an order was submitted or filled): the next read
        refreshes, and the background loop does at once. Takes and ignores any arguments (a store listener)."""
        self._changed_at = time.monotonic()
        self._wake.set()

    def _fresh(self, snapshot: BrokerSnapshot | None) -> bool:
        return (
            snapshot is not None
            and snapshot.started > self._changed_at
            and time.monotonic() - snapshot.started <= self.max_age_s
        )

    async def current(self) -> BrokerSnapshot:
        snapshot = self._snapshot
        if self._fresh(snapshot):
            assert snapshot is not None
            return snapshot
        return await self.refresh(only_if_stale=True)

    async def refresh(self, *, only_if_stale: bool = False) -> BrokerSnapshot:
        """Read the account now (one read at a time: a caller that waited for another's read takes its
        result when `only_if_stale` and that result is fresh)."""
        async with self._lock:
            if only_if_stale and self._fresh(self._snapshot):
                assert self._snapshot is not None
                return self._snapshot
            self._snapshot = await self._read()
            self.refreshes += 1
            return self._snapshot

    async def _read(self) -> BrokerSnapshot:
        started = time.monotonic()
        as_of = datetime.now(UTC)
        try:
            account_id = await self.account()
            summary, positions = await asyncio.gather(
                self.broker.account_summary(account_id), self.broker.positions(account_id)
            )
        except BrokerError as exc:
            return BrokerSnapshot(as_of=as_of, error=str(exc), started=started)
        return BrokerSnapshot(as_of=as_of, account_id=account_id, summary=summary, positions=positions, started=started)

    async def run(self) -> None:
        """Refresh every `refresh_interval_s`, or as soon as `invalidate` is called; until cancelled. A read
        that fails in an unexpected way is logged and tried again at the next turn: this loop never ends the
        overlay."""
        while True:
            self._wake = anyio.Event()
            try:
                await self.refresh()
            except Exception:
                log.exception("broker snapshot refresh failed")
            with anyio.move_on_after(self.refresh_interval_s):
                await self._wake.wait()
