"""The MCP surface through real client sessions, in both protocol generations: tools, annotations, argument
errors, triggers, limits, the kill switch, approvals in the chat, progress, resources and notifications."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from broker.sim.market import MarketSimulator
from broker.sim.server import build_sim_server
from mcp_overlay_server.app import Overlay, open_overlay
from mcp_overlay_server.server import build_server
from tests.test_walking_skeleton import POLLER, call, fire_aapl_trigger, make_market, settings_for, wait_for_pending

pytestmark = pytest.mark.anyio

MODES = ["auto", "legacy"]
EXPECTED_TOOLS = {
    "get_context",
    "start_strategy",
    "approve_trade",
    "review_approval",
    "list_pending_approvals",
    "get_workflow_status",
    "list_workflows",
    "cancel_workflow",
    "add_trigger",
    "list_triggers",
    "remove_trigger",
    "set_trigger_enabled",
    "set_risk_limits",
    "set_preferences",
    "kill_switch",
    "run_market_scan",
    "get_price_history",
    "get_audit_log",
    "performance_report",
    "get_health",
    "suggest_strategy_changes",
    "decide_strategy_change",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def market() -> MarketSimulator:
    return make_market()


@pytest.fixture
async def overlay(tmp_path: Path, market: MarketSimulator) -> AsyncIterator[Overlay]:
    async with open_overlay(
        settings_for(tmp_path), poller_config=POLLER, target=build_sim_server(market), run_poller=False
    ) as opened:
        yield opened


@pytest.fixture(params=MODES)
async def client(request: pytest.FixtureRequest, overlay: Overlay) -> AsyncIterator[Client]:
    async with Client(build_server(overlay, watch_interval_s=0.05), mode=request.param) as session:
        yield session


async def error_text(client: Client, tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    return result.content[0].text


async def test_every_tool_is_listed_with_a_description_schema_and_truthful_annotations(client: Client) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == EXPECTED_TOOLS
    for tool in tools.values():
        assert tool.description and len(tool.description) > 40, tool.name
        assert tool.output_schema is not None, tool.name
        assert tool.annotations is not None, tool.name
    read_only = {name for name, tool in tools.items() if tool.annotations.read_only_hint}
    assert read_only == {
        "get_context",
        "list_pending_approvals",
        "get_workflow_status",
        "list_workflows",
        "list_triggers",
        "get_price_history",
        "get_audit_log",
        "performance_report",
        "get_health",
    }
    for name in ("approve_trade", "kill_switch", "review_approval"):
        assert tools[name].annotations.destructive_hint is True
    assert "answer" not in tools["review_approval"].input_schema["properties"]


async def test_malformed_arguments_are_tool_errors_naming_the_field(client: Client) -> None:
    text = await error_text(client, "approve_trade", approval_id="x", decision=3)
    assert text.startswith("invalid arguments for approve_trade: decision:") and "(got 3)" in text
    missing = await error_text(client, "add_trigger", name="t", symbol="AAPL")
    assert "condition: Field required" in missing
    limits = await error_text(client, "list_workflows", limit=0)
    assert "limit:" in limits


async def test_a_bad_condition_is_refused_with_its_position(client: Client, overlay: Overlay) -> None:
    text = await error_text(client, "add_trigger", name="typo", symbol="AAPL", condition="price >> 3")
    assert "condition" in text and "at column 8" in text
    assert "typo" not in {spec.name for spec in overlay.triggers.specs()}


async def test_triggers_can_be_added_paused_listed_and_removed(client: Client, overlay: Overlay) -> None:
    added = await call(client, "add_trigger", name="dip", symbol="msft", condition="rsi(14) crosses_below 30")
    assert added["spec"]["symbol"] == "MSFT" and added["spec"]["enabled"] is True
    paused = await call(client, "set_trigger_enabled", name="dip", enabled=False)
    assert paused["changed"] is True
    listed = await call(client, "list_triggers")
    assert {t["spec"]["name"]: t["spec"]["enabled"] for t in listed["triggers"]}["dip"] is False
    assert [spec.name for spec in await overlay.trigger_store.load() if not spec.enabled] == ["dip"]
    assert (await call(client, "remove_trigger", name="dip"))["changed"] is True
    assert (await call(client, "remove_trigger", name="dip"))["changed"] is False
    assert "no trigger named 'nope'" in await error_text(client, "set_trigger_enabled", name="nope", enabled=True)


async def test_risk_limits_change_partially_and_persist(client: Client, overlay: Overlay) -> None:
    result = await call(client, "set_risk_limits", limits={"max_order_notional_usd": 1234.5})
    assert result["changed"] == ["max_order_notional_usd"]
    assert result["limits"]["max_order_notional_usd"] == 1234.5
    assert result["limits"]["max_orders_per_hour"] == 30
    assert (await overlay.store.preferences())["risk_limits"]["max_order_notional_usd"] == 1234.5
    text = await error_text(client, "set_risk_limits", limits={"max_orders_per_minute": -1})
    assert "max_orders_per_minute" in text
    assert overlay.risk.engine.limits.max_orders_per_minute == 5


async def test_preferences_are_saved_but_not_over_the_risk_keys(client: Client, overlay: Overlay) -> None:
    saved = await call(client, "set_preferences", preferences={"watchlist": ["AAPL", "SPY"]})
    assert saved["preferences"]["watchlist"] == ["AAPL", "SPY"]
    assert "set_risk_limits" in await error_text(client, "set_preferences", preferences={"risk_limits": {}})


async def test_cancel_workflow_rejects_its_proposal_and_marks_the_run(client: Client, market: MarketSimulator) -> None:
    run = await call(client, "start_strategy", workflow="price_alert", symbol="MSFT", condition="price < 100000")
    cancelled = await call(client, "cancel_workflow", workflow_id=run["workflow_id"], reason="changed my mind")
    assert cancelled["cancelled"] is True and cancelled["run"]["status"] == "cancelled"
    assert (await call(client, "list_pending_approvals"))["approvals"] == []
    again = await call(client, "cancel_workflow", workflow_id=run["workflow_id"])
    assert again["cancelled"] is False
    assert market.orders == []


async def test_kill_switch_halts_cancels_working_orders_and_rejects_proposals(
    client: Client, overlay: Overlay, market: MarketSimulator
) -> None:
    await fire_aapl_trigger(overlay, market)
    [proposal] = await wait_for_pending(client)
    approved = await call(
        client, "approve_trade", approval_id=proposal["approval_id"], decision="approve", limit_price=250.0
    )
    assert approved["accepted"] is True
    working = [o for o in await overlay.broker.live_orders() if o.is_working]
    assert len(working) == 1
    run = await call(client, "start_strategy", workflow="price_alert", symbol="MSFT", condition="price < 100000")
    assert run["status"] == "awaiting_approval"

    halted = await call(client, "kill_switch", state="halted", reason="test")
    assert halted["trading_state"] == "HALTED"
    assert [c["order_id"] for c in halted["cancelled_orders"]] == [working[0].order_id]
    assert halted["rejected_approvals"] == [run["pending_approval_id"]]
    assert [o for o in await overlay.broker.live_orders() if o.is_working] == []
    assert (await overlay.store.preferences())["trading_state"] == "HALTED"
    denied = await call(client, "start_strategy", workflow="price_alert", symbol="MSFT", condition="price < 100000")
    assert denied["status"] == "denied" and "trading_state" in denied["summary"]
    assert (await call(client, "kill_switch", state="active"))["trading_state"] == "ACTIVE"


async def test_run_market_scan_runs_the_scan_and_the_latest_scan_resource_shows_it(client: Client) -> None:
    run = await call(client, "run_market_scan", symbols=["AAPL", "MSFT"])
    assert run["workflow"] == "market_scan"
    latest = (await client.read_resource("overlay://scans/latest")).contents[0].text
    assert run["workflow_id"] in latest


async def test_start_strategy_sends_progress_and_passes_params(overlay: Overlay) -> None:
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with Client(build_server(overlay), mode="legacy") as client:
        result = await client.call_tool(
            "start_strategy",
            {"workflow": "price_alert", "symbol": "MSFT", "condition": "price < 100000", "params": {"note": "x"}},
            progress_callback=on_progress,
        )
    assert not result.is_error and result.structured_content["status"] == "awaiting_approval"
    assert progress and progress[0] == 0


def _form_answer(content: dict[str, Any]) -> Any:
    async def answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert "SELL 25 AAPL" in params.message and "PAPER" in params.message
        return types.ElicitResult(action="accept", content=content)

    return answer


@pytest.mark.parametrize("mode", MODES)
async def test_review_approval_asks_in_the_chat_and_records_the_answer(
    mode: str, overlay: Overlay, market: MarketSimulator
) -> None:
    await fire_aapl_trigger(overlay, market)
    callback = _form_answer({"decision": "approve", "quantity": 10})
    async with Client(build_server(overlay), mode=mode, elicitation_callback=callback) as client:
        [proposal] = await wait_for_pending(client)
        review = await call(client, "review_approval", approval_id=proposal["approval_id"])
    assert review["asked_in_chat"] is True
    assert review["decision"]["accepted"] is True
    assert [o.quantity for o in market.orders] == [10]


async def test_review_approval_without_forms_names_approve_trade(
    client: Client, overlay: Overlay, market: MarketSimulator
) -> None:
    await fire_aapl_trigger(overlay, market)
    [proposal] = await wait_for_pending(client)
    review = await call(client, "review_approval", approval_id=proposal["approval_id"])
    assert review["asked_in_chat"] is False and "approve_trade" in review["message"]
    assert review["proposal"]["approval_id"] == proposal["approval_id"]
    assert market.orders == []


async def test_resources_and_prompts_are_listed_and_readable(client: Client, overlay: Overlay) -> None:
    uris = {str(r.uri) for r in (await client.list_resources()).resources}
    assert uris == {"overlay://context", "overlay://approvals/pending", "overlay://triggers", "overlay://scans/latest"}
    templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
    assert templates == {"overlay://workflows/{workflow_id}", "overlay://prices/{symbol}"}
    triggers = (await client.read_resource("overlay://triggers")).contents[0]
    assert "AAPL price alert" in triggers.text
    prices = (await client.read_resource("overlay://prices/aapl")).contents[0]
    assert '"symbol":"AAPL"' in prices.text
    prompts = {p.name: p for p in (await client.list_prompts()).prompts}
    assert set(prompts) == {"daily_market_scan", "covered_call_setup", "review_pending_approvals"}
    assert all(p.description for p in prompts.values())
    text = (await client.get_prompt("covered_call_setup", {"symbol": "tsla"})).messages[0].content.text
    assert "TSLA" in text and "approve_trade" in text


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_legacy_clients_get_resource_updates_and_background_log_messages(
    overlay: Overlay, market: MarketSimulator
) -> None:
    updated: list[str] = []
    logged: list[dict[str, Any]] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updated.append(str(message.params.uri))

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logged.append(params.data)

    server = build_server(overlay, watch_interval_s=0.05)
    async with Client(server, mode="legacy", message_handler=on_message, logging_callback=on_log) as client:
        capabilities = client.server_capabilities
        assert capabilities.resources.subscribe is True and capabilities.logging is not None
        await client.subscribe_resource("overlay://approvals/pending")
        await client.set_logging_level("info")
        await anyio.sleep(0.2)
        await fire_aapl_trigger(overlay, market)
        await wait_for_pending(client)
        with anyio.fail_after(10):
            while True:
                if "overlay://approvals/pending" in updated and logged:
                    break
                await anyio.sleep(0.05)
    assert any(entry.get("event") == "trigger_fired" and entry.get("symbol") == "AAPL" for entry in logged)
