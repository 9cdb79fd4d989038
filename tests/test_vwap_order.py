"""vwap_order end to end against the simulated IB_MCP: one approval for the parent, every slice placed
exactly once (also across a restart in the approval wait and in the middle of the schedule), and the
report of the average fill against the interval VWAP."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import respx
from langgraph.checkpoint.memory import InMemorySaver
from mcp import Client

from broker.market_data import HistoryBar
from broker.sim.market import MarketSimulator
from broker.sim.prices import WalkSettings
from broker.sim.server import build_sim_server
from mcp_overlay_server.app import Overlay, open_overlay
from mcp_overlay_server.server import build_server
from tests.anthropic_mock import MESSAGES_URL, message_json, mock_anthropic_client
from tests.test_walking_skeleton import call, settings_for
from workflows.claude_call import ClaudeCaller
from workflows.graphs import vwap_order
from workflows.graphs.vwap_order import allocate, volume_profile_weights
from workflows.runner import WorkflowRunner
from workflows.scan_analyst import ClaudeDesk, parse_order_request

pytestmark = pytest.mark.anyio

REQUEST = "Buy $1000 of AAPL using VWAP strategy over 4 minutes in 4 slices"


def moving_market() -> MarketSimulator:
    """Every snapshot moves the market one bar, so the slices fill at different prices."""
    return MarketSimulator(
        ["AAPL"],
        seed=11,
        walks={"AAPL": WalkSettings(start_price_usd=Decimal("199.50"), volatility_pct=0.05)},
        advance_on_snapshot=True,
    )


def opened(tmp_path: Path, market: MarketSimulator) -> Any:
    return open_overlay(settings_for(tmp_path), target=build_sim_server(market), run_poller=False)


async def enable_vwap(overlay: Overlay) -> None:
    """Risk only trades whitelisted strategies (price_alert by default); the limit is saved across restarts."""
    limits = overlay.risk.engine.limits
    await overlay.risk.set_limits(limits.model_copy(update={"enabled_strategies": frozenset({"vwap_order"})}))


def assert_each_slice_once(market: MarketSimulator, approval_id: str, slices: int) -> None:
    coids = [order.client_order_id for order in market.orders]
    assert sorted(coids) == [f"ovl-{approval_id}-s{i}" for i in range(slices)]


async def test_one_approval_then_every_slice_once_and_a_vwap_report(tmp_path: Path) -> None:
    market = moving_market()
    async with opened(tmp_path, market) as overlay, Client(build_server(overlay)) as client:
        await enable_vwap(overlay)
        run = await overlay.runner.start("vwap_order", params={"request": REQUEST, "slice_interval_s": 0})
        assert run.status == "awaiting_approval"
        [proposal] = (await call(client, "list_pending_approvals"))["approvals"]
        assert (proposal["side"], proposal["quantity"], proposal["workflow"]) == ("BUY", 5, "vwap_order")
        details = proposal["details"]
        assert details["algo"] == "VWAP" and details["schedule_basis"] == "equal"
        assert [s["quantity"] for s in details["schedule"]] == [2, 1, 1, 1]
        assert market.orders == []

        decision = await call(client, "approve_trade", approval_id=proposal["approval_id"], decision="approve")
        assert decision["accepted"] is True
        status = await call(client, "get_workflow_status", workflow_id=run.workflow_id)
        assert status["status"] == "completed"
        report = status["result"]["report"]
        assert report["slices_sent"] == 4 and report["quantity_filled"] == 5
        fills = [f["avg_fill_price"] for f in status["result"]["fills"]]
        assert len(set(fills)) > 1
        assert min(fills) <= report["avg_fill_price"] <= max(fills)
        assert report["interval_vwap"] is not None and report["vwap_bars"] >= 4
        expected_bps = (report["avg_fill_price"] / report["interval_vwap"] - 1) * 10_000
        assert report["slippage_bps"] == pytest.approx(expected_bps, abs=0.01)
        assert "vs interval VWAP" in status["summary"]
        assert_each_slice_once(market, proposal["approval_id"], 4)
        assert market.position("AAPL") == 5
        [memory] = await overlay.store.position_memories()
        assert memory.symbol == "AAPL" and "VWAP" in memory.entry_logic


async def test_restart_in_the_approval_wait_then_slices_once(tmp_path: Path) -> None:
    market = moving_market()
    params = {"symbol": "aapl", "notional_usd": 1200, "window_minutes": 3, "slices": 3, "slice_interval_s": 0}
    async with opened(tmp_path, market) as overlay:
        await enable_vwap(overlay)
        run = await overlay.runner.start("vwap_order", params=params)
        [pending] = await overlay.runner.pending()
    async with opened(tmp_path, market) as overlay:
        decided = await overlay.runner.decide(pending.approval_id, "approve")
        assert decided.accepted and decided.run is not None and decided.run.status == "completed"
        assert (await overlay.runner.status(run.workflow_id)).result["report"]["slices_sent"] == 3
    assert_each_slice_once(market, pending.approval_id, 3)


async def test_restart_in_the_middle_of_the_schedule_places_each_slice_once(tmp_path: Path) -> None:
    market = moving_market()
    params = {"request": "buy $2000 of AAPL over 5 min in 5 slices", "slice_interval_s": 1.0}
    async with opened(tmp_path, market) as overlay:
        # The schedule runs inside the decision's task, so cancelling that task cuts it mid-way like a crash.
        overlay.runner.background = None
        await enable_vwap(overlay)
        run = await overlay.runner.start("vwap_order", params=params)
        [pending] = await overlay.runner.pending()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(partial(overlay.runner.decide, pending.approval_id, "approve"))
            with anyio.fail_after(10):
                while True:
                    if len(market.orders) >= 2:
                        break
                    await anyio.sleep(0.01)
            tasks.cancel_scope.cancel()
        assert (await overlay.runner.status(run.workflow_id)).status == "running"
    sent_before_restart = len(market.orders)
    assert sent_before_restart < 5
    async with opened(tmp_path, market) as overlay:
        # open_overlay resumed the cut-short run at start-up
        status = await overlay.runner.status(run.workflow_id)
        assert status.status == "completed", status.summary
        assert status.result["report"]["quantity_filled"] == 10
    assert_each_slice_once(market, pending.approval_id, 5)


async def test_unreadable_or_too_small_requests_place_nothing(tmp_path: Path) -> None:
    market = moving_market()
    async with opened(tmp_path, market) as overlay:
        await enable_vwap(overlay)
        vague = await overlay.runner.start("vwap_order", params={"request": "get me some apple I guess"})
        assert vague.status == "completed" and "not understood" in vague.summary
        tiny = await overlay.runner.start("vwap_order", params={"symbol": "AAPL", "notional_usd": 50})
        assert "less than one AAPL share" in tiny.summary
        rejected = await overlay.runner.start("vwap_order", params={"request": REQUEST})
        await overlay.runner.decide(rejected.pending_approval_id or "", "reject", note="not now")
        assert (await overlay.runner.status(rejected.workflow_id)).status == "rejected"
    assert market.orders == []


async def test_claude_reads_free_text_and_a_bad_reading_places_nothing(tmp_path: Path) -> None:
    market = moving_market()
    router = respx.Router(assert_all_mocked=True)
    reading = {
        "understood": True,
        "side": "BUY",
        "symbol": "AAPL",
        "notional_usd": 800,
        "window_minutes": 10,
        "reason": "a grand-ish of Apple, VWAP",
    }
    route = router.post(MESSAGES_URL).mock(return_value=httpx.Response(200, json=message_json(json.dumps(reading))))
    async with opened(tmp_path, market) as overlay:
        await enable_vwap(overlay)
        desk = ClaudeDesk(ClaudeCaller(mock_anthropic_client(router), usage=overlay.usage))
        runner = WorkflowRunner(
            overlay.runner.deps, InMemorySaver(), graphs={"vwap_order": partial(vwap_order.build, parser=desk)}
        )
        run = await runner.start("vwap_order", params={"request": "scoop up ~800 bucks of apple, vwap it"})
        assert run.status == "awaiting_approval"
        [pending] = await runner.pending()
        assert (pending.quantity, pending.analyst) == (4, "claude")
        assert pending.details["window_minutes"] == 10

        route.mock(return_value=httpx.Response(200, json=message_json(json.dumps(reading | {"notional_usd": -5}))))
        bad = await runner.start("vwap_order", params={"request": "scoop up some apple, vwap it"})
        assert bad.status == "completed" and "out of range" in bad.summary
        grammar = await runner.start("vwap_order", params={"request": REQUEST})
        assert grammar.status == "awaiting_approval" and route.call_count == 2
    assert market.orders == []


def test_grammar_reads_the_common_phrasings() -> None:
    seed = parse_order_request("Buy $1000 of AAPL using VWAP strategy").intent
    assert seed is not None and (seed.side, seed.symbol, seed.notional_usd, seed.window_minutes) == (
        "BUY",
        "AAPL",
        1000,
        30,
    )
    sell = parse_order_request("sell 2.5k worth of msft with vwap over 1 hour").intent
    assert sell is not None and (sell.side, sell.symbol, sell.notional_usd, sell.window_minutes) == (
        "SELL",
        "MSFT",
        2500,
        60,
    )
    assert parse_order_request("buy $0 of AAPL").intent is None
    assert parse_order_request("buy apples").intent is None


def test_allocation_and_volume_profile() -> None:
    assert allocate(5, [1, 1, 1, 1]) == [2, 1, 1, 1]
    assert allocate(10, [1, 3]) == [3, 7]
    assert sum(allocate(7, [0.2, 0.5, 0.3])) == 7
    day_ms = 86_400_000
    start_ms = int(datetime(2026, 11, 25, 15, 0, tzinfo=UTC).timestamp() * 1000)

    def bar(ts_ms: int, volume: float) -> HistoryBar:
        return HistoryBar(ts=datetime.fromtimestamp(ts_ms / 1000, UTC), open=1, high=1, low=1, close=1, volume=volume)

    yesterday = [bar(start_ms - day_ms + i * 60_000, 100 if i < 2 else 300) for i in range(4)]
    assert volume_profile_weights(yesterday, start_ms, 120_000, 2) == [200, 600]
    assert volume_profile_weights(yesterday, start_ms, 120_000, 3) is None
