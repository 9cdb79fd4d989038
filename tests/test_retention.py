"""Checkpoint retention on real SQLite and real PostgreSQL: the LangGraph threads of runs finished longer ago
than the retention are deleted; recent and live runs keep theirs (and still work); the run records stay."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from sqlalchemy import update
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.sim.market import MarketSimulator
from broker.sim.server import build_sim_server
from mcp_overlay_server.actions import start_workflow
from mcp_overlay_server.app import Overlay, open_overlay
from tests.test_walking_skeleton import POLLER, make_market, settings_for
from workflows.checkpoint import checkpoint_threads
from workflows.retention import CheckpointRetention
from workflows.store import WorkflowRun
from workflows.times import utc_now

pytestmark = pytest.mark.anyio

RETENTION_DAYS = 7
LONG_AGO = timedelta(days=RETENTION_DAYS + 3)


@asynccontextmanager
async def overlay_on(tmp_path: Path, market: MarketSimulator, database_url: str | None) -> AsyncIterator[Overlay]:
    settings = settings_for(tmp_path, database_url=database_url, checkpoint_retention_days=RETENTION_DAYS)
    async with open_overlay(settings, poller_config=POLLER, target=build_sim_server(market), run_poller=False) as o:
        yield o


async def proposal(overlay: Overlay) -> tuple[str, str]:
    """Start a price_alert run by hand; it stops at its proposal. (workflow id, approval id)"""
    run = await start_workflow(overlay, "price_alert", "AAPL", "price > 200")
    assert run.status == "awaiting_approval" and run.pending_approval_id, run
    return run.workflow_id, run.pending_approval_id


async def age(overlay: Overlay, workflow_id: str, by: timedelta) -> None:
    """Make a run look as if it last changed `by` ago (what the days in between would have done)."""
    async with AsyncSession(overlay.store.workflow_engine) as session:
        await session.exec(
            update(WorkflowRun).where(col(WorkflowRun.workflow_id) == workflow_id).values(updated_at=utc_now() - by)
        )
        await session.commit()


async def three_runs(overlay: Overlay, market: MarketSimulator) -> tuple[str, str, str, str]:
    """An old finished run, a recent finished run, and an old run still waiting for approval (+ its approval)."""
    market.set_price("AAPL", "200.40")
    old_done, old_approval = await proposal(overlay)
    recent_done, recent_approval = await proposal(overlay)
    old_waiting, waiting_approval = await proposal(overlay)
    for approval_id in (old_approval, recent_approval):
        decided = await overlay.runner.decide(approval_id, "reject", note="not now")
        assert decided.run is not None and decided.run.status == "rejected"
    await age(overlay, old_done, LONG_AGO)
    await age(overlay, old_waiting, LONG_AGO)
    return old_done, recent_done, old_waiting, waiting_approval


async def check_retention(overlay: Overlay, market: MarketSimulator) -> None:
    old_done, recent_done, old_waiting, waiting_approval = await three_runs(overlay, market)
    assert {old_done, recent_done, old_waiting} <= set(await checkpoint_threads(overlay.retention.saver))

    swept = await overlay.retention.sweep()

    assert swept.threads_deleted == [old_done]
    threads = set(await checkpoint_threads(overlay.retention.saver))
    assert old_done not in threads and {recent_done, old_waiting} <= threads
    assert (await overlay.runner.status(old_done)).status == "rejected"  # the record stays
    # the old run that still waits is intact: approving it resumes its graph and places the order
    decided = await overlay.runner.decide(waiting_approval, "approve")
    assert decided.accepted and decided.run is not None and decided.run.status == "completed"
    assert len(market.orders) == 1
    assert (await overlay.retention.sweep()).threads_deleted == []


async def test_sqlite_deletes_old_finished_threads_and_truncates_the_wal(tmp_path: Path) -> None:
    market = make_market()
    async with overlay_on(tmp_path, market, None) as overlay:
        await check_retention(overlay, market)
        wal = tmp_path / "langgraph" / "checkpoints" / "checkpoints.db-wal"
        await overlay.retention.sweep()
        assert wal.stat().st_size == 0


@pytest.mark.postgres
async def test_postgres_deletes_old_finished_threads(tmp_path: Path, postgres_url: str) -> None:
    market = make_market()
    async with overlay_on(tmp_path, market, postgres_url) as overlay:
        await check_retention(overlay, market)


async def test_the_periodic_sweep_deletes_what_has_aged(tmp_path: Path) -> None:
    market = make_market()
    async with overlay_on(tmp_path, market, None) as overlay:
        market.set_price("AAPL", "200.40")
        workflow_id, approval_id = await proposal(overlay)
        await overlay.runner.decide(approval_id, "reject")
        await age(overlay, workflow_id, LONG_AGO)
        sweeper = CheckpointRetention(
            overlay.retention.saver, overlay.store, keep=timedelta(days=RETENTION_DAYS), first_after_s=0
        )
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(sweeper.run_forever)
            with anyio.fail_after(20):
                while True:
                    if workflow_id not in await checkpoint_threads(overlay.retention.saver):
                        break
                    await anyio.sleep(0.05)
            tasks.cancel_scope.cancel()


def test_retention_days_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_for(tmp_path).checkpoint_retention_days == 7
    monkeypatch.setenv("CHECKPOINT_RETENTION_DAYS", "30")
    assert settings_for(tmp_path).checkpoint_retention_days == 30
    monkeypatch.setenv("CHECKPOINT_RETENTION_DAYS", "-1")
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        settings_for(tmp_path)
