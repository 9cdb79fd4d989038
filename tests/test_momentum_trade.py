"""momentum_trade end to end through the overlay's MCP tools: small entry, approval, then the pre-declared
exit (stop, target or time) placed exactly once by the monitoring loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import respx
from mcp import Client

from broker.sim.market import MarketSimulator
from broker.sim.prices import WalkSettings
from broker.sim.server import build_sim_server
from mcp_overlay_server.app import Overlay, open_overlay
from mcp_overlay_server.server import build_server
from tests.anthropic_mock import MESSAGES_URL, message_json, mock_anthropic_client
from tests.test_walking_skeleton import call, settings_for
from workflows.analyst import ClaudeAnalyst

pytestmark = pytest.mark.anyio

STRATEGIES = frozenset({"price_alert", "momentum_trade"})
DROP = "percent_change_5min < -2"


def make_market() -> MarketSimulator:
    return MarketSimulator(
        ["AAPL"], seed=9, walks={"AAPL": WalkSettings(start_price_usd=Decimal("190.00"), volatility_pct=0.0)}
    )


@asynccontextmanager
async def overlay_session(tmp_path: Path, market: MarketSimulator) -> AsyncIterator[tuple[Overlay, Client]]:
    async with open_overlay(settings_for(tmp_path), target=build_sim_server(market), run_poller=False) as overlay:
        limits = overlay.risk.engine.limits.model_copy(update={"enabled_strategies": STRATEGIES})
        await overlay.risk.set_limits(limits)
        async with Client(build_server(overlay)) as client:
            yield overlay, client


async def start(client: Client, **params: Any) -> dict[str, Any]:
    return await call(client, "start_strategy", workflow="momentum_trade", symbol="AAPL", condition=DROP, params=params)


async def test_small_entry_then_time_exit_places_each_order_once(tmp_path: Path) -> None:
    market = make_market()
    async with overlay_session(tmp_path, market) as (_, client):
        run = await start(client, monitor_interval_s=0, max_polls=3)
        [proposal] = (await call(client, "list_pending_approvals"))["approvals"]
        # entry budget: 20% of max_order_notional_usd 10,000 -> floor(2000 / 190) shares
        assert (proposal["side"], proposal["quantity"]) == ("BUY", 10)
        assert proposal["analyst"] == "offline" and "dip" in proposal["rationale"]
        details = proposal["details"]
        assert details["stop_price_usd"] == 188.1 and details["target_price_usd"] == 193.8
        assert "no second approval" in details["exit_policy"]

        decision = await call(client, "approve_trade", approval_id=run["pending_approval_id"], decision="approve")
        result = decision["run"]["result"]
        assert decision["run"]["status"] == "completed" and result["exit_reason"] == "time"
    entry, exit_order = market.orders
    assert (entry.side, entry.status, exit_order.side, exit_order.status) == ("BUY", "Filled", "SELL", "Filled")
    assert exit_order.client_order_id == f"{entry.client_order_id}-exit"
    assert market.position("AAPL") == 0


@pytest.mark.parametrize(("move_to", "reason"), [("194.50", "target"), ("187.00", "stop")])
async def test_the_loop_exits_on_target_or_stop(tmp_path: Path, move_to: str, reason: str) -> None:
    market = make_market()
    async with overlay_session(tmp_path, market) as (_, client):
        run = await start(client, monitor_interval_s=0.01, max_polls=2000)
        decisions: list[dict[str, Any]] = []

        async def approve() -> None:
            decisions.append(
                await call(client, "approve_trade", approval_id=run["pending_approval_id"], decision="approve")
            )

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(approve)
            for _ in range(1000):  # the entry fills inside approve_trade; then the loop polls
                if market.orders and market.orders[0].status == "Filled":
                    break
                await anyio.sleep(0.01)
            market.set_price("AAPL", move_to)
        [decision] = decisions
        assert decision["run"]["result"]["exit_reason"] == reason
    assert [o.side for o in market.orders] == ["BUY", "SELL"] and market.position("AAPL") == 0


async def test_restart_while_waiting_for_approval_resumes_and_trades_once(tmp_path: Path) -> None:
    market = make_market()
    async with overlay_session(tmp_path, market) as (_, client):
        run = await start(client, monitor_interval_s=0, max_polls=2)
    async with overlay_session(tmp_path, market) as (_, client):
        decision = await call(client, "approve_trade", approval_id=run["pending_approval_id"], decision="approve")
        assert decision["run"]["status"] == "completed"
        again = await call(client, "approve_trade", approval_id=run["pending_approval_id"], decision="approve")
        assert again["accepted"] is False
    assert [o.side for o in market.orders] == ["BUY", "SELL"]


@pytest.mark.parametrize(("answer", "proposes"), [("buy", True), ("sell", False)])
async def test_claude_decides_and_a_sell_answer_is_a_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: str, proposes: bool
) -> None:
    router = respx.Router(assert_all_mocked=True)
    text = (
        f'{{"action": "{answer}", "quantity": 5, "order_type": "MKT", "limit_price": null, '
        '"rationale": "oversold bounce", "confidence": 0.6}'
    )
    router.post(MESSAGES_URL).mock(return_value=httpx.Response(200, json=message_json(text)))
    monkeypatch.setattr(
        "mcp_overlay_server.app.build_analyst",
        lambda api_key, usage, **_: ClaudeAnalyst(mock_anthropic_client(router), usage=usage),
    )
    market = make_market()
    async with overlay_session(tmp_path, market) as (_, client):
        run = await start(client, monitor_interval_s=0, max_polls=1)
        if proposes:
            [proposal] = (await call(client, "list_pending_approvals"))["approvals"]
            assert proposal["analyst"] == "claude" and proposal["quantity"] == 5
        else:
            # With no shares held, a sell is refused by the analyst's own limits (no short selling).
            assert run["status"] == "completed" and run["summary"].startswith("hold")
            assert "no short selling" in run["summary"]
    assert market.orders == []


async def test_approval_returns_while_the_exit_watch_goes_on_in_the_background(tmp_path: Path) -> None:
    market = make_market()
    settings = settings_for(tmp_path, resume_wait_s=0.2)
    async with open_overlay(settings, target=build_sim_server(market), run_poller=False) as overlay:
        limits = overlay.risk.engine.limits.model_copy(update={"enabled_strategies": STRATEGIES})
        await overlay.risk.set_limits(limits)
        async with Client(build_server(overlay)) as client:
            run = await start(client, monitor_interval_s=0.05, max_polls=100_000)
            decision = await call(client, "approve_trade", approval_id=run["pending_approval_id"], decision="approve")
            assert decision["accepted"] and decision["run"]["status"] == "running"
            assert [o.side for o in market.orders] == ["BUY"]

            market.set_price("AAPL", "194.50")
            with anyio.fail_after(20):
                while True:
                    status = await call(client, "get_workflow_status", workflow_id=run["workflow_id"])
                    if status["status"] == "completed":
                        break
                    await anyio.sleep(0.05)
    assert [(o.side, o.status) for o in market.orders] == [("BUY", "Filled"), ("SELL", "Filled")]
