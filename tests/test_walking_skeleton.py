"""The whole path through real MCP sessions: trigger -> proposal -> approval -> one order -> fill.

Overlay <-> test client and overlay <-> simulated IB_MCP are both real MCP client sessions (in-process
transport); nothing between them is mocked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from broker.sim.market import MarketSimulator, StartingPosition
from broker.sim.prices import WalkSettings
from broker.sim.server import build_sim_server
from mcp_overlay_server.app import Overlay, open_overlay
from mcp_overlay_server.server import build_server
from mcp_overlay_server.settings import OverlaySettings
from poller.config import PollerConfig
from poller.triggers import TriggerSpec

pytestmark = pytest.mark.anyio


def make_market() -> MarketSimulator:
    return MarketSimulator(
        ["AAPL", "MSFT"],
        seed=3,
        walks={"AAPL": WalkSettings(start_price_usd=Decimal("199.50"), volatility_pct=0.0)},
        positions=[StartingPosition("AAPL", Decimal(50), Decimal(180))],
    )


def settings_for(tmp_path: Path, **overrides: Any) -> OverlaySettings:
    options: dict[str, Any] = {
        "data_dir": tmp_path,
        "database_url": None,
        "market_calendar": "always",
        "anthropic_api_key": None,
        "max_order_notional_usd": 10_000,
        "ib_pacing": "off",
        "scan_cron": None,
    }
    return OverlaySettings(**(options | overrides))


POLLER = PollerConfig(
    interval_seconds=0.05,
    symbols=["AAPL", "MSFT"],
    triggers=[TriggerSpec(name="AAPL price alert", symbol="AAPL", condition="price > 200")],
)


@pytest.fixture
def market() -> MarketSimulator:
    return make_market()


@pytest.fixture
async def overlay(tmp_path: Path, market: MarketSimulator) -> AsyncIterator[Overlay]:
    async with open_overlay(
        settings_for(tmp_path), poller_config=POLLER, target=build_sim_server(market), run_poller=False
    ) as opened:
        yield opened


@pytest.fixture
async def client(overlay: Overlay) -> AsyncIterator[Client]:
    async with Client(build_server(overlay)) as session:
        yield session


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def wait_for_pending(client: Client) -> list[dict[str, Any]]:
    with anyio.fail_after(10):
        while True:
            pending = (await call(client, "list_pending_approvals"))["approvals"]
            if pending:
                return pending
            await anyio.sleep(0.02)


async def fire_aapl_trigger(overlay: Overlay, market: MarketSimulator) -> None:
    assert await overlay.poller.poll_once() == []
    market.set_price("AAPL", "200.40")
    events = await overlay.poller.poll_once()
    assert [e.trigger_name for e in events] == ["AAPL price alert"]


async def test_trigger_to_fill_places_exactly_one_order(
    overlay: Overlay, market: MarketSimulator, client: Client
) -> None:
    await fire_aapl_trigger(overlay, market)
    [proposal] = await wait_for_pending(client)
    assert (proposal["symbol"], proposal["side"], proposal["quantity"]) == ("AAPL", "SELL", 25)
    assert proposal["mode"] == "paper" and proposal["account_id"].startswith("DU")
    assert market.orders == []

    decision = await call(client, "approve_trade", approval_id=proposal["approval_id"], decision="approve")
    assert decision["accepted"] is True
    assert decision["run"]["status"] == "completed"

    context = await call(client, "get_context")
    [order] = context["recent_orders"]
    assert order["status"] == "filled" and order["filled_quantity"] == 25
    assert {p["symbol"]: p["quantity"] for p in context["positions"]}["AAPL"] == 25
    assert len(market.orders) == 1
    assert market.orders[0].client_order_id == order["client_order_id"]
    assert context["pending_approvals"] == []


async def test_approving_twice_places_one_order(overlay: Overlay, market: MarketSimulator, client: Client) -> None:
    await fire_aapl_trigger(overlay, market)
    [proposal] = await wait_for_pending(client)
    results: list[dict[str, Any]] = []

    async def approve() -> None:
        results.append(await call(client, "approve_trade", approval_id=proposal["approval_id"], decision="approve"))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(approve)
        tasks.start_soon(approve)
    again = await call(client, "approve_trade", approval_id=proposal["approval_id"], decision="approve")

    assert sorted(r["accepted"] for r in results) == [False, True]
    assert again["accepted"] is False and "already approved" in again["message"]
    assert len(market.orders) == 1


async def test_rejecting_places_no_order(overlay: Overlay, market: MarketSimulator, client: Client) -> None:
    await fire_aapl_trigger(overlay, market)
    [proposal] = await wait_for_pending(client)
    decision = await call(
        client, "approve_trade", approval_id=proposal["approval_id"], decision="reject", note="not today"
    )
    assert decision["accepted"] is False
    assert decision["run"]["status"] == "rejected"
    late = await call(client, "approve_trade", approval_id=proposal["approval_id"], decision="approve")
    assert late["accepted"] is False and "already rejected" in late["message"]
    assert market.orders == []


async def test_start_strategy_proposes_and_waits(overlay: Overlay, market: MarketSimulator, client: Client) -> None:
    run = await call(client, "start_strategy", workflow="price_alert", symbol="msft", condition="price < 100000")
    assert run["status"] == "awaiting_approval"
    [proposal] = (await call(client, "list_pending_approvals"))["approvals"]
    assert proposal["approval_id"] == run["pending_approval_id"]
    assert proposal["side"] == "BUY" and proposal["notional_usd"] <= 5000
    assert proposal["analyst"] == "offline" and "offline" in proposal["rationale"]
    status = await call(client, "get_workflow_status", workflow_id=run["workflow_id"])
    assert status["status"] == "awaiting_approval"
    assert market.orders == []


async def test_risk_denial_is_reported_with_the_numbers(
    overlay: Overlay, market: MarketSimulator, client: Client
) -> None:
    run = await call(client, "start_strategy", workflow="price_alert", symbol="AAPL", condition="price < 199.6")
    assert run["status"] == "denied"
    assert "max_position_notional_usd_per_symbol" in run["summary"]
    assert "> max_position_notional_usd_per_symbol $10,000.00" in run["summary"]
    assert (await call(client, "list_pending_approvals"))["approvals"] == []
    assert market.orders == []


async def test_bad_input_gives_tool_errors_that_say_what_to_fix(client: Client) -> None:
    unknown = await client.call_tool("approve_trade", {"approval_id": "nope", "decision": "approve"})
    assert unknown.is_error and "list_pending_approvals" in unknown.content[0].text
    wrong_decision = await client.call_tool("approve_trade", {"approval_id": "x", "decision": "maybe"})
    assert wrong_decision.is_error and "decision" in wrong_decision.content[0].text
    workflow = await client.call_tool("start_strategy", {"workflow": "moonshot", "symbol": "AAPL"})
    assert workflow.is_error and "price_alert" in workflow.content[0].text
    symbol = await client.call_tool("start_strategy", {"workflow": "price_alert", "symbol": "ZZZZZ"})
    assert symbol.is_error and "ZZZZZ" in symbol.content[0].text


async def test_unreachable_ib_mcp_is_a_clear_error_and_the_server_stays_up(tmp_path: Path) -> None:
    with anyio.fail_after(30):
        async with (
            open_overlay(
                settings_for(tmp_path),
                poller_config=POLLER,
                target="http://127.0.0.1:9/mcp/",
                run_poller=False,
            ) as overlay,
            Client(build_server(overlay)) as client,
        ):
            failed = await client.call_tool("start_strategy", {"workflow": "price_alert", "symbol": "AAPL"})
            assert failed.is_error
            assert "cannot reach IB_MCP at http://127.0.0.1:9/mcp/" in failed.content[0].text
            context = await call(client, "get_context")
            assert "cannot reach IB_MCP" in context["broker_error"]
            assert (await call(client, "list_pending_approvals"))["approvals"] == []
