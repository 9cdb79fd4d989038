"""position_monitor: remembered entry logic and exit criteria; an exit proposed when one is met, through the
shared risk / approval / execute-once path; the periodic check proposes each exit once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from broker.sim.market import MarketSimulator, StartingPosition
from broker.sim.prices import WalkSettings
from broker.sim.server import build_sim_server
from mcp_overlay_server.app import Overlay, open_overlay
from mcp_overlay_server.server import build_server
from tests.test_walking_skeleton import call, settings_for
from workflows.graphs.position_monitor import ExitCriteria, monitor_positions, remember_entry

pytestmark = pytest.mark.anyio


def held_market() -> MarketSimulator:
    return MarketSimulator(
        ["AAPL", "MSFT"],
        seed=2,
        walks={"AAPL": WalkSettings(start_price_usd=Decimal("199.50"), volatility_pct=0.0)},
        positions=[StartingPosition("AAPL", Decimal(50), Decimal(180))],
    )


def opened(tmp_path: Path, market: MarketSimulator) -> Any:
    return open_overlay(settings_for(tmp_path), target=build_sim_server(market), run_poller=False)


async def enable(overlay: Overlay) -> None:
    limits = overlay.risk.engine.limits
    await overlay.risk.set_limits(limits.model_copy(update={"enabled_strategies": frozenset({"position_monitor"})}))


@pytest.fixture
def market() -> MarketSimulator:
    return held_market()


@pytest.fixture
async def overlay(tmp_path: Path, market: MarketSimulator) -> AsyncIterator[Overlay]:
    async with opened(tmp_path, market) as opened_overlay:
        await enable(opened_overlay)
        yield opened_overlay


async def test_target_met_proposes_a_full_exit_and_approval_sells_once(
    overlay: Overlay, market: MarketSimulator
) -> None:
    async with Client(build_server(overlay)) as client:
        run = await overlay.runner.start(
            "position_monitor",
            params={"symbol": "AAPL", "entry_logic": "breakout above $180", "exit_criteria": {"take_profit_pct": 10}},
        )
        assert run.status == "awaiting_approval"
        [proposal] = (await call(client, "list_pending_approvals"))["approvals"]
        assert (proposal["side"], proposal["quantity"]) == ("SELL", 50)
        assert proposal["details"]["exit_rule"] == "take_profit"
        assert "breakout above $180" in proposal["rationale"]
        decision = await call(client, "approve_trade", approval_id=proposal["approval_id"], decision="approve")
        assert decision["run"]["status"] == "completed"
        assert market.position("AAPL") == 0 and len(market.orders) == 1
        assert [m.entry_logic for m in await overlay.store.position_memories()] == ["closed by position_monitor"]


async def test_no_criterion_met_holds_and_says_where_it_stands(overlay: Overlay, market: MarketSimulator) -> None:
    run = await overlay.runner.start(
        "position_monitor", params={"symbol": "AAPL", "exit_criteria": {"take_profit_pct": 20, "stop_loss_pct": 5}}
    )
    assert run.status == "completed"
    assert "P&L +10.83%: no exit criterion met" in run.summary
    [evaluation] = run.result["evaluations"]
    assert evaluation["criteria"]["take_profit_pct"] == 20
    assert market.orders == []


async def test_periodic_check_proposes_a_stop_once(overlay: Overlay, market: MarketSimulator) -> None:
    await remember_entry(overlay.store, "AAPL", "price_alert-1", "bought the dip", ExitCriteria(stop_loss_pct=5))
    assert await monitor_positions(overlay.runner) == []
    market.set_price("AAPL", "170.00")
    [started] = await monitor_positions(overlay.runner)
    assert await monitor_positions(overlay.runner) == []
    status = await overlay.runner.status(started)
    assert status.status == "awaiting_approval"
    [pending] = await overlay.runner.pending()
    assert pending.details["exit_rule"] == "stop_loss" and pending.quantity == 50
    assert market.orders == []


async def test_max_holding_time_and_a_restart_in_the_approval_wait(tmp_path: Path, market: MarketSimulator) -> None:
    async with opened(tmp_path, market) as overlay:
        await enable(overlay)
        run = await overlay.runner.start(
            "position_monitor", params={"symbol": "AAPL", "exit_criteria": {"max_holding_hours": 1e-9}}
        )
        [pending] = await overlay.runner.pending()
        assert pending.details["exit_rule"] == "max_holding_time"
    async with opened(tmp_path, market) as overlay:
        decided = await overlay.runner.decide(pending.approval_id, "approve")
        assert decided.accepted and decided.run is not None and decided.run.workflow_id == run.workflow_id
    assert [o.client_order_id for o in market.orders] == [f"ovl-{pending.approval_id}"]
