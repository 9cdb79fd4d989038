"""The scan schedule: 09:00 New York on exchange trading days (exchange_calendars), once per slot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from broker.sim.market import MarketSimulator
from broker.sim.server import build_sim_server
from mcp_overlay_server.app import Overlay, open_overlay
from tests.test_walking_skeleton import settings_for
from workflows.market_hours import NEW_YORK, ExchangeClock
from workflows.scheduler import ScanScheduler

pytestmark = pytest.mark.anyio

CLOCK = ExchangeClock("XNYS")


def ny(day: int, hour: int, minute: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=NEW_YORK)


@pytest.fixture
async def overlay(tmp_path: Path) -> AsyncIterator[Overlay]:
    market = MarketSimulator(["AAPL", "MSFT"], seed=5)
    async with open_overlay(settings_for(tmp_path), target=build_sim_server(market), run_poller=False) as opened:
        yield opened


def scheduler(overlay: Overlay, **options: object) -> ScanScheduler:
    return ScanScheduler(overlay.runner, CLOCK, fallback_symbols=lambda: ["aapl", "MSFT"], **options)  # type: ignore[arg-type]


async def scan_runs(overlay: Overlay) -> list[str]:
    return [r.workflow_id for r in await overlay.store.list_runs(limit=50) if r.workflow == "market_scan"]


async def test_thanksgiving_has_no_scan_and_the_early_close_day_after_scans_at_nine(overlay: Overlay) -> None:
    schedule = scheduler(overlay)
    assert await schedule.run_due(ny(26, 9, 5)) is None
    assert await scan_runs(overlay) == []

    run = await schedule.run_due(ny(27, 9, 0))
    assert run is not None and run.status == "completed"
    assert [o["symbol"] for o in run.result["scan"]["ranking"]["opportunities"]] != []
    assert run.result["scan"]["slot"] == "scan:2026-11-27T09:00"


async def test_a_second_call_or_a_second_worker_for_the_same_slot_does_nothing(overlay: Overlay) -> None:
    first = await scheduler(overlay).run_due(ny(24, 9, 1))
    assert first is not None
    assert await scheduler(overlay).run_due(ny(24, 9, 30)) is None
    assert await scheduler(overlay).run_due(ny(24, 9, 59)) is None
    assert await scan_runs(overlay) == [first.workflow_id]
    assert await scheduler(overlay).run_due(ny(25, 9, 0)) is not None
    assert len(await scan_runs(overlay)) == 2


def test_due_slot_on_weekends_normal_days_and_outside_the_catch_up_window() -> None:
    schedule = ScanScheduler(None, CLOCK)  # type: ignore[arg-type]
    assert schedule.due_slot(ny(28, 9, 0)) is None  # Saturday
    assert schedule.due_slot(ny(29, 9, 30)) is None  # Sunday
    assert schedule.due_slot(ny(24, 8, 59)) is None
    assert schedule.due_slot(ny(24, 9, 0)) == ny(24, 9, 0)
    assert schedule.due_slot(ny(24, 9, 45)) == ny(24, 9, 0)
    assert schedule.due_slot(ny(24, 10, 1)) is None
    assert schedule.due_slot(ny(25, 3, 0, month=12)) is None  # Christmas, any time
    summer = ScanScheduler(None, CLOCK, cron="30 8 * * mon-fri")  # type: ignore[arg-type]
    assert summer.due_slot(datetime(2026, 7, 2, 12, 31, tzinfo=NEW_YORK).astimezone(NEW_YORK)) is None
    assert summer.due_slot(ny(2, 8, 40, month=7)) == ny(2, 8, 30, month=7)  # EDT: 12:30 UTC
    assert summer.due_slot(ny(3, 8, 40, month=7)) is None  # Independence Day observed
