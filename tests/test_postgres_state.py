"""The scale-out path: workflow state, approvals, the ledger and LangGraph checkpoints in real PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.sim.market import MarketSimulator
from broker.sim.server import build_sim_server
from mcp_overlay_server.app import open_overlay
from tests.test_order_safety import approve_at_once, pending_approval_id
from tests.test_walking_skeleton import POLLER, fire_aapl_trigger, make_market, settings_for

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


def open_worker(tmp_path: Path, market: MarketSimulator, database_url: str) -> Any:
    return open_overlay(
        settings_for(tmp_path, database_url=database_url),
        poller_config=POLLER,
        target=build_sim_server(market),
        run_poller=False,
    )


async def test_an_approval_given_to_another_worker_resumes_the_run(tmp_path: Path, postgres_url: str) -> None:
    market = make_market()
    async with open_worker(tmp_path / "a", market, postgres_url) as first:
        await fire_aapl_trigger(first, market)
        approval_id = await pending_approval_id(first)
    async with open_worker(tmp_path / "b", market, postgres_url) as second:
        result = await second.runner.decide(approval_id, "approve")
        [order] = await second.store.orders()
    assert result.accepted and result.run is not None and result.run.status == "completed"
    assert order.status == "filled" and len(market.orders) == 1


async def test_two_workers_approving_at_once_place_one_order(tmp_path: Path, postgres_url: str) -> None:
    market = make_market()
    async with (
        open_worker(tmp_path / "a", market, postgres_url) as one,
        open_worker(tmp_path / "b", market, postgres_url) as two,
    ):
        await fire_aapl_trigger(one, market)
        results = await approve_at_once([one, two], await pending_approval_id(one))
    assert sorted(r.accepted for r in results) == [False, True]
    assert len(market.orders) == 1
