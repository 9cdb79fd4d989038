"""Runs cut short by a stopping process: at the next start-up they go on, or end with the reason, and never
stay "running" for ever nor place an order twice.

- Cut between recording the run and the graph's first checkpoint: started again from its trigger event, or
  ended as failed when it was started by hand.
- Started again while IB_MCP is down: nothing resumes (a first step would fail and end the run) until it is
  back, then the run goes on.
- Cut by a shutdown while an approved VWAP schedule runs in the background, at any point (LangGraph may have
  saved a task's writes but not its step's checkpoint): finished, each slice sent once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from broker.sim.market import MarketSimulator
from broker.sim.server import build_sim_server, serve_sim_http
from mcp_overlay_server.app import open_overlay
from poller.events import TriggerEvent
from tests.test_dependency_restarts import free_port, wait_until
from tests.test_vwap_order import assert_each_slice_once, enable_vwap, moving_market
from tests.test_walking_skeleton import POLLER, make_market, settings_for
from workflows.store import MarketEvent, WorkflowRun

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def opened(tmp_path: Path, market: MarketSimulator) -> Any:
    return open_overlay(settings_for(tmp_path), poller_config=POLLER, target=build_sim_server(market), run_poller=False)


async def test_a_triggered_run_cut_before_its_first_step_starts_over_at_the_next_start_up(tmp_path: Path) -> None:
    market = make_market()
    event = TriggerEvent(trigger_name="AAPL price alert", symbol="AAPL", price=200.4, condition="price > 200")
    async with opened(tmp_path, market) as overlay:
        await overlay.store.record_market_event(MarketEvent.of(event))
        await overlay.store.create_run(
            WorkflowRun(
                workflow_id="price_alert-cut", workflow="price_alert", symbol="AAPL", trigger_event_id=event.event_id
            )
        )
    async with opened(tmp_path, market) as overlay:
        run = await overlay.runner.status("price_alert-cut")
        [pending] = await overlay.runner.pending()
    assert run.status == "awaiting_approval" and run.pending_approval_id == pending.approval_id
    assert pending.workflow_id == "price_alert-cut" and pending.side == "SELL" and pending.quantity == 25
    assert market.orders == []


async def test_a_hand_started_run_cut_before_its_first_step_is_ended_with_the_reason(tmp_path: Path) -> None:
    market = make_market()
    async with opened(tmp_path, market) as overlay:
        await overlay.store.create_run(
            WorkflowRun(workflow_id="price_alert-manual", workflow="price_alert", symbol="AAPL")
        )
    async with opened(tmp_path, market) as overlay:
        run = await overlay.runner.status("price_alert-manual")
        audit = await overlay.audit.tail(5)
    assert run.status == "failed" and "before this run's first step" in (run.error or "")
    assert "start_strategy" in run.summary
    assert any(e["event"] == "workflow_failed" and e["workflow_id"] == "price_alert-manual" for e in audit)
    assert market.orders == []


@pytest.mark.parametrize("cut_after_orders", [1, 2, 3])
async def test_shutdown_in_the_middle_of_a_background_schedule_resumes_it_once(
    tmp_path: Path, cut_after_orders: int
) -> None:
    market = moving_market()
    settings = settings_for(tmp_path, resume_wait_s=0.05)
    params = {"request": "buy $2000 of AAPL over 5 min in 5 slices", "slice_interval_s": 0.3}
    async with open_overlay(settings, target=build_sim_server(market), run_poller=False) as overlay:
        await enable_vwap(overlay)
        run = await overlay.runner.start("vwap_order", params=params)
        [pending] = await overlay.runner.pending()
        decided = await overlay.runner.decide(pending.approval_id, "approve")
        assert decided.accepted and decided.run is not None and decided.run.status == "running"
        with anyio.fail_after(10):
            while True:
                if len(market.orders) >= cut_after_orders:
                    break
                await anyio.sleep(0.01)
    assert len(market.orders) < 5
    async with open_overlay(settings, target=build_sim_server(market), run_poller=False) as overlay:
        with anyio.fail_after(20):
            while True:
                status = await overlay.runner.status(run.workflow_id)
                if status.status != "running":
                    break
                await anyio.sleep(0.05)
        assert status.status == "completed", status.summary
        assert status.result["report"]["quantity_filled"] == 10
    assert_each_slice_once(market, pending.approval_id, 5)


async def test_start_up_with_ib_mcp_down_resumes_cut_runs_once_it_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mcp_overlay_server.app.RECOVERY_RETRY_S", 0.1)
    market = make_market()
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp/"
    event = TriggerEvent(trigger_name="AAPL price alert", symbol="AAPL", price=200.4, condition="price > 200")
    async with open_overlay(settings_for(tmp_path), target=url, run_poller=False) as overlay:
        await overlay.store.record_market_event(MarketEvent.of(event))
        await overlay.store.create_run(
            WorkflowRun(
                workflow_id="price_alert-down", workflow="price_alert", symbol="AAPL", trigger_event_id=event.event_id
            )
        )
    async with open_overlay(settings_for(tmp_path), target=url, run_poller=False) as overlay:
        # IB_MCP is down: the run is neither started (its first step would fail) nor given up
        assert (await overlay.runner.status("price_alert-down")).status == "running"
        async with serve_sim_http(market, port=port):

            async def proposed() -> bool:
                return (await overlay.runner.status("price_alert-down")).status == "awaiting_approval"

            await wait_until(proposed)
    assert market.orders == []
