"""suggest_strategy_changes and decide_strategy_change through a real MCP session, and performance_report's
attribution by trigger on live (simulated paper) history."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import respx
from mcp import Client

from broker.sim.market import MarketSimulator, StartingPosition
from broker.sim.prices import WalkSettings, load_bars_csv
from broker.sim.server import build_sim_server
from mcp_overlay_server.app import Overlay, open_overlay
from mcp_overlay_server.server import build_server
from mcp_overlay_server.settings import OverlaySettings
from poller.config import PollerConfig
from poller.triggers import TriggerSpec
from replay.claude_reviewer import ClaudeReviewer
from replay.engine import ReplayConfig
from replay.policy import ApprovalPolicy
from replay.suggest import suggest
from tests.anthropic_mock import MESSAGES_URL, message_json, mock_anthropic_client, without_retry_backoff

pytestmark = pytest.mark.anyio

HAND_CSV = Path(__file__).parent / "data" / "replay_hand.csv"
# The hand CSV's closes run from 98 to 111: "deep dip" at 90 never fires there.
POLLER = PollerConfig(
    interval_seconds=1,
    symbols=["AAPL"],
    triggers=[
        TriggerSpec(name="deep dip", symbol="AAPL", condition="price < 90"),
        TriggerSpec(name="take profit", symbol="AAPL", condition="price > 110"),
    ],
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def market() -> MarketSimulator:
    return MarketSimulator(
        ["AAPL"],
        seed=3,
        walks={"AAPL": WalkSettings(start_price_usd=Decimal("109.50"), volatility_pct=0.0)},
        positions=[StartingPosition("AAPL", Decimal(50), Decimal(100))],
    )


@pytest.fixture
async def overlay(tmp_path: Path, market: MarketSimulator) -> AsyncIterator[Overlay]:
    settings = OverlaySettings(
        data_dir=tmp_path,
        database_url=None,
        market_calendar="always",
        anthropic_api_key=None,
        max_order_notional_usd=5000,
        ib_pacing="off",
        scan_cron=None,
    )
    async with open_overlay(settings, poller_config=POLLER, target=build_sim_server(market), run_poller=False) as ov:
        yield ov


@pytest.fixture
async def client(overlay: Overlay) -> AsyncIterator[Client]:
    async with Client(build_server(overlay)) as session:
        yield session


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def test_a_suggestion_is_replayed_before_and_after_and_applied_only_once_approved(
    overlay: Overlay, client: Client
) -> None:
    answer = await call(client, "suggest_strategy_changes", data_path=str(HAND_CSV), symbol="AAPL")
    assert answer["reviewer"] == "offline" and answer["baseline"]["trades"] == 0
    [suggestion] = answer["suggestions"]
    change = suggestion["change"]
    # The 10th percentile of 100.50, 99, 101, 111, 98, 105 (inclusive method) is 98.50.
    assert (change["kind"], change["target"]) == ("trigger_condition", "deep dip")
    assert (change["before"], change["after"]) == ("price < 90", "price < 98.50")
    assert suggestion["before"]["trades"] == 0
    # After: only the 98.00 close (03-07) is below 98.50: buy 25 at 98.00, $1 commission, worth 105 at the end.
    assert suggestion["after"]["trades"] == 1
    assert suggestion["after"]["total_pnl_usd"] == "174.00"
    assert suggestion["status"] == "pending"
    assert {s.name: s.condition for s in overlay.triggers.specs()}["deep dip"] == "price < 90"

    applied = await call(
        client, "decide_strategy_change", suggestion_id=suggestion["suggestion_id"], decision="approve"
    )
    assert applied["applied"] is True
    assert {s.name: s.condition for s in overlay.triggers.specs()}["deep dip"] == "price < 98.50"
    assert {s.name: s.condition for s in await overlay.trigger_store.load()}["deep dip"] == "price < 98.50"
    again = await call(client, "decide_strategy_change", suggestion_id=suggestion["suggestion_id"], decision="approve")
    assert again["applied"] is False and "already applied" in again["message"]

    unknown = await client.call_tool("decide_strategy_change", {"suggestion_id": "sugg-x", "decision": "approve"})
    assert unknown.is_error and "suggest_strategy_changes" in unknown.content[0].text
    missing = await client.call_tool("suggest_strategy_changes", {"data_path": "/nonexistent/bars.csv"})
    assert missing.is_error and "/nonexistent/bars.csv" in missing.content[0].text


async def test_performance_report_attributes_live_fills_to_their_trigger(
    overlay: Overlay, market: MarketSimulator, client: Client
) -> None:
    assert await overlay.poller.poll_once() == []
    market.set_price("AAPL", "110.40")
    [event] = await overlay.poller.poll_once()
    # The overlay's own consumer takes the event from the bus too: whichever call starts the run, the other
    # may see it still running, so wait for its proposal.
    run = await overlay.runner.handle_event(event)
    assert run is not None
    with anyio.fail_after(10):
        while True:
            run = await overlay.runner.status(run.workflow_id)
            if run.pending_approval_id:
                break
            await anyio.sleep(0.02)
    await call(client, "approve_trade", approval_id=run.pending_approval_id, decision="approve")

    report = await call(client, "performance_report")
    [line] = report["by_trigger"]
    assert (line["name"], line["sells"], line["fills"]) == ("take profit", 1, 1)
    # The 50 shares were bought outside the overlay: the sell realises nothing here and closes nothing.
    assert line["closing_fills"] == 0 and report["win_rate"] is None
    assert report["drawdown"]["max_drawdown_usd"] == "0"
    assert [point["exposure_usd"] for point in report["exposure"]] == [0.0]
    assert report["claude"] == {"calls": 0, "cost_usd": 0.0, "by_workflow": {}}


async def test_claude_reviews_outcomes_and_only_usable_changes_are_replayed(
    overlay: Overlay, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_retry_backoff(monkeypatch)
    answer = {
        "changes": [
            {"kind": "trigger_condition", "target": "deep dip", "after": "price < 99", "reason": "never fired"},
            {"kind": "trigger_condition", "target": "no such trigger", "after": "price < 1", "reason": "bogus"},
            {"kind": "risk_limit", "target": "enabled_strategies", "after": 1, "reason": "not tunable"},
            {"kind": "trigger_cooldown", "target": "take profit", "after": 3600, "reason": "fires too often"},
        ][:3]
    }
    config = ReplayConfig(
        bars=load_bars_csv(HAND_CSV, "AAPL"), triggers=POLLER.triggers, policy=ApprovalPolicy.parse("all")
    )
    with respx.mock(assert_all_called=False) as router:
        route = router.post(MESSAGES_URL).mock(
            return_value=httpx.Response(200, json=message_json(json.dumps(answer), thinking=""))
        )
        reviewer = ClaudeReviewer(mock_anthropic_client(router), usage=overlay.usage)
        result, suggestions = await suggest(
            config, overlay.risk.engine.limits, overlay.settings, history="hand", reviewer=reviewer
        )
        sent = json.loads(route.calls.last.request.content)
    assert result.reviewer == "claude"
    assert [(s.change.target, s.change.after) for s in suggestions] == [("deep dip", "price < 99")]
    [suggestion] = suggestions
    assert suggestion.before.trades == 0 and suggestion.after.trades >= 1
    assert "<market_data>" in sent["messages"][0]["content"]
    assert (await overlay.usage.by_workflow())[0].workflow == "strategy_review"


async def test_an_unusable_claude_review_falls_back_to_the_offline_rules(
    overlay: Overlay, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_retry_backoff(monkeypatch)
    config = ReplayConfig(
        bars=load_bars_csv(HAND_CSV, "AAPL"), triggers=POLLER.triggers, policy=ApprovalPolicy.parse("all")
    )
    with respx.mock(assert_all_called=False) as router:
        router.post(MESSAGES_URL).mock(return_value=httpx.Response(200, json=message_json("not json", thinking="")))
        reviewer = ClaudeReviewer(mock_anthropic_client(router), usage=overlay.usage)
        result, suggestions = await suggest(
            config, overlay.risk.engine.limits, overlay.settings, history="hand", reviewer=reviewer
        )
    assert result.reviewer.startswith("offline (Claude unavailable")
    assert [s.change.target for s in suggestions] == ["deep dip"]
