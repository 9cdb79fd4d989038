"""momentum_trade end to end through the overlay's MCP tools: small entry, approval, then the pre-declared
exit (stop, target or time), either held at the broker as a bracket or placed exactly once by the overlay's
monitoring loop (IB_BRACKETS=off, or an IB_MCP that does not take brackets)."""

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
from mcp.server.mcpserver import MCPServer

from broker import ib_mcp_tools as ib
from broker.sim.market import MarketSimulator
from broker.sim.orders import SimOrder
from broker.sim.prices import WalkSettings
from broker.sim.server import build_sim_server
from mcp_overlay_server.app import Overlay, open_overlay
from mcp_overlay_server.server import build_server
from tests.anthropic_mock import MESSAGES_URL, message_json, mock_anthropic_client
from tests.test_sim_brackets import sim_without_brackets
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
async def overlay_session(
    tmp_path: Path, market: MarketSimulator, target: MCPServer | None = None, **settings: Any
) -> AsyncIterator[tuple[Overlay, Client]]:
    async with open_overlay(
        settings_for(tmp_path, **settings), target=target or build_sim_server(market), run_poller=False
    ) as overlay:
        limits = overlay.risk.engine.limits.model_copy(update={"enabled_strategies": STRATEGIES})
        await overlay.risk.set_limits(limits)
        async with Client(build_server(overlay)) as client:
            yield overlay, client


async def start(client: Client, **params: Any) -> dict[str, Any]:
    return await call(client, "start_strategy", workflow="momentum_trade", symbol="AAPL", condition=DROP, params=params)


def described(orders: list[SimOrder]) -> list[tuple[str, str, str, str | None]]:
    return [(o.side, o.order_type, o.status, o.client_order_id) for o in orders]


async def wait_until_finished(client: Client, workflow_id: str) -> dict[str, Any]:
    with anyio.fail_after(20):
        while True:
            status = await call(client, "get_workflow_status", workflow_id=workflow_id)
            if status["status"] not in ("running", "awaiting_approval"):
                return status
            await anyio.sleep(0.02)


async def wait_for_orders(market: MarketSimulator, count: int) -> None:
    """Until the broker holds `count` orders (a run going on in the background places them)."""
    with anyio.fail_after(20):
        while True:
            if len(market.orders) >= count:
                return
            await anyio.sleep(0.02)


def count_place_order_calls(overlay: Overlay) -> list[dict[str, Any]]:
    """Every place-order request the overlay sends to IB_MCP, from here on."""
    sent: list[dict[str, Any]] = []
    real_call = overlay.broker.call

    async def spying_call(tool: str, arguments: dict[str, Any] | None = None) -> Any:
        if tool == ib.PLACE_ORDER:
            sent.append(arguments or {})
        return await real_call(tool, arguments)

    overlay.broker.call = spying_call  # type: ignore[method-assign]
    return sent


# --- exits watched by the overlay (IB_BRACKETS=off, or an IB_MCP that takes no brackets) -----------------


async def test_small_entry_then_time_exit_places_each_order_once(tmp_path: Path) -> None:
    market = make_market()
    async with overlay_session(tmp_path, market, brackets="off") as (_, client):
        run = await start(client, monitor_interval_s=0, max_polls=3)
        [proposal] = (await call(client, "list_pending_approvals"))["approvals"]
        # entry budget: 20% of max_order_notional_usd 10,000 -> floor(2000 / 190) shares
        assert (proposal["side"], proposal["quantity"]) == ("BUY", 10)
        assert proposal["analyst"] == "offline" and "dip" in proposal["rationale"]
        details = proposal["details"]
        assert details["stop_price_usd"] == 188.1 and details["target_price_usd"] == 193.8
        assert details["exit_mode"] == "watch" and "the overlay watches the price" in details["exit_policy"]
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
    async with overlay_session(tmp_path, market, brackets="off") as (_, client):
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
    assert described(market.orders) == [
        ("BUY", "MKT", "Filled", decision["run"]["result"]["order"]["client_order_id"]),
        ("SELL", "MKT", "Filled", f"{decision['run']['result']['order']['client_order_id']}-exit"),
    ]
    assert market.position("AAPL") == 0


@pytest.mark.parametrize(
    ("brackets", "orders"),
    [
        ("off", [("BUY", "Filled"), ("SELL", "Filled")]),
        ("auto", [("BUY", "Filled"), ("SELL", "Cancelled"), ("SELL", "Cancelled"), ("SELL", "Filled")]),
    ],
)
async def test_restart_while_waiting_for_approval_resumes_and_trades_once(
    tmp_path: Path, brackets: str, orders: list[tuple[str, str]]
) -> None:
    market = make_market()
    async with overlay_session(tmp_path, market, brackets=brackets) as (_, client):
        run = await start(client, monitor_interval_s=0, max_polls=2)
    async with overlay_session(tmp_path, market, brackets=brackets) as (_, client):
        decision = await call(client, "approve_trade", approval_id=run["pending_approval_id"], decision="approve")
        assert decision["run"]["status"] == "completed"
        again = await call(client, "approve_trade", approval_id=run["pending_approval_id"], decision="approve")
        assert again["accepted"] is False
    assert [(o.side, o.status) for o in market.orders] == orders


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
        "workflows.analyst.build_analyst",
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
    settings = settings_for(tmp_path, resume_wait_s=0.2, brackets="off")
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


async def test_an_ib_mcp_without_brackets_gets_the_watch_loop_and_on_refuses_to_propose(tmp_path: Path) -> None:
    market = make_market()
    async with overlay_session(tmp_path, market, target=sim_without_brackets(market)) as (_, client):
        run = await start(client, monitor_interval_s=0, max_polls=1)
        [proposal] = (await call(client, "list_pending_approvals"))["approvals"]
        assert proposal["details"]["exit_mode"] == "watch"
        decision = await call(client, "approve_trade", approval_id=run["pending_approval_id"], decision="approve")
        assert decision["run"]["result"]["exit_reason"] == "time"
    assert [(o.side, o.order_type) for o in market.orders] == [("BUY", "MKT"), ("SELL", "MKT")]

    async with overlay_session(tmp_path, market, target=sim_without_brackets(market), brackets="on") as (_, client):
        refused = await client.call_tool(
            "start_strategy", {"workflow": "momentum_trade", "symbol": "AAPL", "condition": DROP, "params": {}}
        )
        pending = (await call(client, "list_pending_approvals"))["approvals"]
    assert refused.is_error and "IB_BRACKETS=on" in refused.content[0].text
    assert pending == [] and len(market.orders) == 2


# --- exits held at the broker as a bracket (the default with an IB_MCP that takes them) ------------------


@pytest.mark.parametrize(
    ("move_to", "reason", "cancelled"), [("194.50", "target", "stop"), ("187.00", "stop", "target")]
)
async def test_a_bracket_is_placed_once_and_the_child_the_price_reaches_is_the_exit(
    tmp_path: Path, move_to: str, reason: str, cancelled: str
) -> None:
    market = make_market()
    async with overlay_session(tmp_path, market, resume_wait_s=0.2) as (overlay, client):
        sent = count_place_order_calls(overlay)
        run = await start(client, monitor_interval_s=0.02, max_polls=100_000)
        [proposal] = (await call(client, "list_pending_approvals"))["approvals"]
        details = proposal["details"]
        assert details["exit_mode"] == "bracket" and "held at the broker" in details["exit_policy"]
        assert "no second approval" in details["exit_policy"]

        decision = await call(client, "approve_trade", approval_id=run["pending_approval_id"], decision="approve")
        assert decision["accepted"] and decision["run"]["status"] == "running"
        await wait_for_orders(market, 3)
        coid = f"ovl-{run['pending_approval_id']}"
        entry, stop, target = market.orders
        assert described(market.orders) == [
            ("BUY", "MKT", "Filled", coid),
            ("SELL", "STP", "Submitted", f"{coid}-stop"),
            ("SELL", "LMT", "Submitted", f"{coid}-target"),
        ]
        assert stop.parent_id == target.parent_id == entry.order_id
        assert (stop.stop_price, target.limit_price) == (Decimal("188.1"), Decimal("193.8"))
        assert len(sent) == 1 and [o.get("parentId") for o in sent[0]["orders"]] == [None, coid, coid]

        market.set_price("AAPL", move_to)
        status = await wait_until_finished(client, run["workflow_id"])
        ledger = {o.client_order_id: o.status for o in await overlay.store.orders(workflow_id=run["workflow_id"])}
    result = status["result"]
    assert status["status"] == "completed" and result["exit_reason"] == reason
    assert result["exit_order"]["client_order_id"] == f"{coid}-{reason}"
    assert result["exit_orders"][cancelled]["status"] == "cancelled"
    assert "(broker-held)" in status["summary"]
    assert len(market.orders) == 3 and len(sent) == 1  # no exit placed by the overlay
    assert market.position("AAPL") == 0
    assert ledger == {coid: "filled", f"{coid}-{reason}": "filled", f"{coid}-{cancelled}": "cancelled"}


async def test_the_time_exit_cancels_both_children_and_sells_once(tmp_path: Path) -> None:
    market = make_market()
    async with overlay_session(tmp_path, market) as (overlay, client):
        sent = count_place_order_calls(overlay)
        run = await start(client, monitor_interval_s=0, max_polls=3)
        decision = await call(client, "approve_trade", approval_id=run["pending_approval_id"], decision="approve")
        ledger = {o.client_order_id: o.status for o in await overlay.store.orders(workflow_id=run["workflow_id"])}
    result = decision["run"]["result"]
    coid = f"ovl-{run['pending_approval_id']}"
    assert decision["run"]["status"] == "completed" and result["exit_reason"] == "time"
    assert described(market.orders) == [
        ("BUY", "MKT", "Filled", coid),
        ("SELL", "STP", "Cancelled", f"{coid}-stop"),
        ("SELL", "LMT", "Cancelled", f"{coid}-target"),
        ("SELL", "MKT", "Filled", f"{coid}-exit"),
    ]
    assert len(sent) == 2 and result["exit_order"]["client_order_id"] == f"{coid}-exit"
    assert ledger == {
        coid: "filled",
        f"{coid}-stop": "cancelled",
        f"{coid}-target": "cancelled",
        f"{coid}-exit": "filled",
    }
    assert market.position("AAPL") == 0


async def test_approving_twice_at_once_places_one_bracket(tmp_path: Path) -> None:
    market = make_market()
    async with overlay_session(tmp_path, market) as (_, client):
        run = await start(client, monitor_interval_s=0, max_polls=2)
        decisions: list[dict[str, Any]] = []

        async def approve() -> None:
            decisions.append(
                await call(client, "approve_trade", approval_id=run["pending_approval_id"], decision="approve")
            )

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(approve)
            tasks.start_soon(approve)
        again = await call(client, "approve_trade", approval_id=run["pending_approval_id"], decision="approve")
    assert sorted(d["accepted"] for d in decisions) == [False, True] and again["accepted"] is False
    coid = f"ovl-{run['pending_approval_id']}"
    assert [o.client_order_id for o in market.orders] == [coid, f"{coid}-stop", f"{coid}-target", f"{coid}-exit"]


async def test_a_lost_answer_to_the_bracket_is_resolved_by_cooid_not_by_sending_again(tmp_path: Path) -> None:
    market = make_market()
    async with overlay_session(tmp_path, market) as (overlay, client):
        sent = count_place_order_calls(overlay)
        run = await start(client, monitor_interval_s=0, max_polls=2)
        market.faults.lose_next_order_answer()
        decision = await call(client, "approve_trade", approval_id=run["pending_approval_id"], decision="approve")
    assert decision["run"]["status"] == "completed" and decision["run"]["result"]["exit_reason"] == "time"
    assert len(sent) == 2  # the bracket once (its answer lost), the time exit once
    assert [(o.order_type, o.status) for o in market.orders] == [
        ("MKT", "Filled"),
        ("STP", "Cancelled"),
        ("LMT", "Cancelled"),
        ("MKT", "Filled"),
    ]


async def test_a_restart_during_the_watch_finds_the_child_the_broker_filled_meanwhile(tmp_path: Path) -> None:
    market = make_market()
    async with overlay_session(tmp_path, market, resume_wait_s=0.2) as (overlay, client):
        sent = count_place_order_calls(overlay)
        run = await start(client, monitor_interval_s=0.02, max_polls=100_000)
        decision = await call(client, "approve_trade", approval_id=run["pending_approval_id"], decision="approve")
        assert decision["run"]["status"] == "running"
        await wait_for_orders(market, 3)
    # The overlay is down: the broker still holds the exits, and the target fills.
    market.set_price("AAPL", "194.50")
    assert [o.status for o in market.orders] == ["Filled", "Cancelled", "Filled"]

    async with overlay_session(tmp_path, market, resume_wait_s=0.2) as (overlay, client):
        status = await wait_until_finished(client, run["workflow_id"])
        ledger = {o.client_order_id: o.status for o in await overlay.store.orders(workflow_id=run["workflow_id"])}
    coid = f"ovl-{run['pending_approval_id']}"
    assert status["status"] == "completed" and status["result"]["exit_reason"] == "target"
    assert len(sent) == 1 and len(market.orders) == 3 and market.position("AAPL") == 0
    assert ledger == {coid: "filled", f"{coid}-stop": "cancelled", f"{coid}-target": "filled"}


async def audit_events(client: Client, workflow_id: str) -> list[str]:
    return [e["event"] for e in (await call(client, "get_audit_log", workflow_id=workflow_id))["entries"]]


async def test_children_cancelled_outside_the_overlay_make_it_watch_the_price(tmp_path: Path) -> None:
    market = make_market()
    async with overlay_session(tmp_path, market, resume_wait_s=0.2) as (_, client):
        run = await start(client, monitor_interval_s=0.02, max_polls=100_000)
        await call(client, "approve_trade", approval_id=run["pending_approval_id"], decision="approve")
        market.cancel_order(market.account_id, market.orders[1].order_id)  # IB cancels the sibling too
        with anyio.fail_after(20):
            while True:
                if "bracket_exits_lost" in await audit_events(client, run["workflow_id"]):
                    break
                await anyio.sleep(0.02)
        market.set_price("AAPL", "187.00")
        status = await wait_until_finished(client, run["workflow_id"])
    coid = f"ovl-{run['pending_approval_id']}"
    assert status["result"]["exit_reason"] == "stop" and status["result"]["exit_mode"] == "watch"
    assert described(market.orders)[1:] == [
        ("SELL", "STP", "Cancelled", f"{coid}-stop"),
        ("SELL", "LMT", "Cancelled", f"{coid}-target"),
        ("SELL", "MKT", "Filled", f"{coid}-exit"),
    ]
    assert market.position("AAPL") == 0
