"""covered_call end to end through the overlay's MCP tools against the simulated IB_MCP with options."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from mcp import Client

from broker.sim.market import MarketSimulator, StartingPosition
from broker.sim.options import OptionSettings
from broker.sim.prices import WalkSettings
from broker.sim.server import build_sim_server
from mcp_overlay_server.app import Overlay, open_overlay
from mcp_overlay_server.server import build_server
from tests.anthropic_mock import MESSAGES_URL, message_json, mock_anthropic_client
from tests.test_walking_skeleton import call, settings_for
from workflows.analyst import ClaudeAnalyst

pytestmark = pytest.mark.anyio

STRATEGIES = frozenset({"price_alert", "covered_call"})


def make_market() -> MarketSimulator:
    # A frozen clock: option time value must not decay between proposal and approval.
    frozen_s = time.time()
    return MarketSimulator(
        ["AAPL", "MSFT"],
        seed=5,
        walks={
            "AAPL": WalkSettings(start_price_usd=Decimal("190.00"), volatility_pct=0.0),
            "MSFT": WalkSettings(start_price_usd=Decimal("410.00"), volatility_pct=0.0),
        },
        positions=[
            StartingPosition("AAPL", Decimal(250), Decimal(150)),
            StartingPosition("MSFT", Decimal(50), Decimal(300)),
        ],
        options=OptionSettings(volatility_pct=25.0),
        clock=lambda: frozen_s,
    )


@asynccontextmanager
async def overlay_session(tmp_path: Path, market: MarketSimulator) -> AsyncIterator[tuple[Overlay, Client]]:
    async with open_overlay(settings_for(tmp_path), target=build_sim_server(market), run_poller=False) as overlay:
        limits = overlay.risk.engine.limits.model_copy(update={"enabled_strategies": STRATEGIES})
        await overlay.risk.set_limits(limits)
        async with Client(build_server(overlay)) as client:
            yield overlay, client


async def start(client: Client, symbol: str = "AAPL", **params: Any) -> dict[str, Any]:
    return await call(client, "start_strategy", workflow="covered_call", symbol=symbol, params=params)


def option_positions(market: MarketSimulator) -> dict[int, Decimal]:
    return {p.instrument.conid: p.quantity for p in market.positions() if p.instrument.sec_type == "OPT"}


async def test_offline_proposal_shows_premium_yield_and_risk_then_sells_once(tmp_path: Path) -> None:
    market = make_market()
    async with overlay_session(tmp_path, market) as (_, client):
        run = await start(client, limit_at="bid")
        assert run["status"] == "awaiting_approval", run
        [proposal] = (await call(client, "list_pending_approvals"))["approvals"]
        assert (proposal["symbol"], proposal["side"], proposal["quantity"]) == ("AAPL", "SELL", 2)
        assert proposal["analyst"] == "offline" and "offline" in proposal["rationale"]
        details = proposal["details"]
        assert details["strike_distance_pct"] >= 5.0 and 0 < details["delta"] <= 0.30
        assert details["premium_usd"] == pytest.approx(details["premium_per_share_usd"] * 200)
        assert details["yield_pct"] == pytest.approx(details["premium_per_share_usd"] / 190 * 100, abs=1e-3)
        assert details["annualized_yield_pct"] > details["yield_pct"]
        assert market.orders == []

        decision = await call(client, "approve_trade", approval_id=proposal["approval_id"], decision="approve")
        assert decision["accepted"] and decision["run"]["status"] == "completed", decision
        [order] = market.orders
        assert order.instrument.sec_type == "OPT" and order.side == "SELL" and order.status == "Filled"
        assert order.limit_price == Decimal(str(details["premium_per_share_usd"]))
        assert option_positions(market) == {order.instrument.conid: Decimal(-2)}
        memory = decision["run"]["result"]["position_memory"]
        assert memory["option_conid"] == order.instrument.conid
        assert memory["alert_when_underlying_at_or_above_usd"] < memory["strike"]

        uncovered = await start(client)
        assert uncovered["status"] == "completed" and "needs 100 AAPL shares" in uncovered["summary"]
        assert "50 not yet covering a short call" in uncovered["summary"]
        assert len(market.orders) == 1


async def test_too_few_shares_finishes_with_no_proposal(tmp_path: Path) -> None:
    market = make_market()
    async with overlay_session(tmp_path, market) as (_, client):
        run = await start(client, "MSFT")
        assert run["status"] == "completed"
        assert "needs 100 MSFT shares" in run["summary"] and "50 held" in run["summary"]
        assert (await call(client, "list_pending_approvals"))["approvals"] == []
        assert market.orders == []


async def test_a_mid_limit_rests_then_fills_when_the_underlying_rises(tmp_path: Path) -> None:
    market = make_market()
    async with overlay_session(tmp_path, market) as (_, client):
        run = await start(client, contracts=1)
        decision = await call(client, "approve_trade", approval_id=run["pending_approval_id"], decision="approve")
        [order] = market.orders
        assert order.status == "Submitted" and decision["run"]["result"]["order"]["status"] == "submitted"
        market.set_price("AAPL", "193.00")
        assert order.status == "Filled" and order.avg_fill_price is not None
        assert order.avg_fill_price >= order.limit_price


async def test_restart_while_waiting_for_approval_resumes_and_sells_once(tmp_path: Path) -> None:
    market = make_market()
    async with overlay_session(tmp_path, market) as (_, client):
        run = await start(client, limit_at="bid")
        approval_id = run["pending_approval_id"]
    async with overlay_session(tmp_path, market) as (_, client):
        decision = await call(client, "approve_trade", approval_id=approval_id, decision="approve")
        assert decision["accepted"] and decision["run"]["status"] == "completed"
        again = await call(client, "approve_trade", approval_id=approval_id, decision="approve")
        assert again["accepted"] is False
    assert len(market.orders) == 1 and market.orders[0].status == "Filled"


def claude_pick(body: dict[str, Any], strike_rank: int) -> str:
    """Claude's answer picking the `strike_rank`-th candidate (by strike) of the nearest expiry."""
    prompt = body["messages"][0]["content"]
    data = json.loads(prompt[prompt.index("{") : prompt.rindex("}") + 1])
    nearest = min(c["expiry"] for c in data["candidates"])
    ranked = sorted((c for c in data["candidates"] if c["expiry"] == nearest), key=lambda c: c["strike"])
    pick = ranked[strike_rank]
    return json.dumps(
        {"action": "sell_call", "conid": pick["conid"], "contracts": 1, "rationale": "far OTM", "confidence": 0.7}
    )


@pytest.mark.parametrize(("strike_rank", "accepted"), [(-1, True), (0, False)])
async def test_claude_picks_the_call_and_an_out_of_range_pick_becomes_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strike_rank: int, accepted: bool
) -> None:
    router = respx.Router(assert_all_mocked=True)

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=message_json(claude_pick(json.loads(request.content), strike_rank)))

    router.post(MESSAGES_URL).mock(side_effect=answer)
    monkeypatch.setattr(
        "workflows.analyst.build_analyst",
        lambda api_key, usage, **_: ClaudeAnalyst(mock_anthropic_client(router), usage=usage),
    )
    market = make_market()
    async with overlay_session(tmp_path, market) as (overlay, client):
        run = await start(client, max_delta=0.2)
        usage = await overlay.usage.spent_today_usd()
    assert usage > 0
    if accepted:
        assert run["status"] == "awaiting_approval"
        [proposal] = await call_pending(tmp_path, market)
        assert proposal["analyst"] == "claude" and proposal["quantity"] == 1
    else:
        # The nearest strike is barely out of the money: its delta exceeds 0.2, so the pick is refused.
        assert run["status"] == "completed" and "rejected" in run["summary"] and "delta" in run["summary"]
    assert market.orders == []


async def call_pending(tmp_path: Path, market: MarketSimulator) -> list[dict[str, Any]]:
    async with overlay_session(tmp_path, market) as (_, client):
        return (await call(client, "list_pending_approvals"))["approvals"]
