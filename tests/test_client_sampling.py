"""A user-started workflow analysed by the connected client's own model (MCP sampling), in both protocol
generations: the client is asked once per start, its answer is checked like Claude's, and it can never
become an order the limits forbid."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest
import respx
from mcp import Client

from broker.sim.market import MarketSimulator
from broker.sim.server import build_sim_server
from mcp_overlay_server.app import Overlay, open_overlay
from mcp_overlay_server.server import build_server
from tests.anthropic_mock import MESSAGES_URL, message_json, mock_anthropic_client
from tests.test_walking_skeleton import POLLER, call, make_market, settings_for
from workflows.analyst import ClaudeAnalyst
from workflows.usage import ClaudeCall

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]

MODES = ["auto", "legacy"]
SELL_10 = {
    "action": "sell",
    "quantity": 10,
    "order_type": "MKT",
    "limit_price": None,
    "rationale": "Take some profit above 200.",
    "confidence": 0.7,
}


@pytest.fixture
def market() -> MarketSimulator:
    return make_market()


@pytest.fixture
async def overlay(tmp_path: Path, market: MarketSimulator) -> AsyncIterator[Overlay]:
    async with open_overlay(
        settings_for(tmp_path), poller_config=POLLER, target=build_sim_server(market), run_poller=False
    ) as opened:
        yield opened


class ClientModel:
    """The MCP client's sampling callback: answers `text` and keeps every request it was sent."""

    def __init__(self, text: str, model: str = "client-model-1", on_answer: Callable[[], None] = lambda: None) -> None:
        self.text = text
        self.model = model
        self.on_answer = on_answer
        self.requests: list[types.CreateMessageRequestParams] = []

    async def __call__(self, context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.requests.append(params)
        self.on_answer()
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=self.text), model=self.model
        )


async def start_aapl(client: Client, **arguments: Any) -> dict[str, Any]:
    return await call(
        client, "start_strategy", workflow="price_alert", symbol="AAPL", condition="price > 200", **arguments
    )


async def the_one_recorded_call(overlay: Overlay) -> ClaudeCall:
    [spend] = await overlay.usage.by_workflow()
    assert spend.calls == 1
    recorded = await overlay.usage.last_call()
    assert recorded is not None
    return recorded


@pytest.mark.parametrize("mode", MODES)
async def test_the_clients_model_is_asked_once_and_its_answer_becomes_the_proposal(
    mode: str, overlay: Overlay, market: MarketSimulator
) -> None:
    # The quote moves while the user's model thinks: the retry of a 2026-07-28 call must still find the prompt
    # it was asked, or the client would be asked again.
    model = ClientModel(f"```json\n{json.dumps(SELL_10)}\n```", on_answer=lambda: market.set_price("AAPL", 201.25))
    async with Client(build_server(overlay), mode=mode, sampling_callback=model) as client:
        run = await start_aapl(client)
        [proposal] = (await call(client, "list_pending_approvals"))["approvals"]
    assert run["status"] == "awaiting_approval"
    assert proposal["side"] == "SELL" and proposal["quantity"] == 10
    assert proposal["analyst"] == "client-sampling"
    assert "Take some profit" in proposal["rationale"]
    [request] = model.requests
    assert "JSON Schema" in request.system_prompt and '"action"' in request.system_prompt
    prompt = request.messages[0].content.text
    assert "<market_data>" in prompt and '"symbol": "AAPL"' in prompt and '"shares": 50' in prompt
    assert '"price_usd": 199.5' in prompt
    assert request.max_tokens > 0 and request.include_context is None
    recorded = await the_one_recorded_call(overlay)
    assert recorded.model == "client-sampling:client-model-1" and recorded.ok
    assert recorded.cost_usd == 0.0 and recorded.workflow_id == run["workflow_id"]
    assert await overlay.usage.spent_today_usd() == 0.0
    assert market.orders == []


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("I think you should sell about ten shares.", "not valid JSON"),
        (json.dumps(SELL_10 | {"quantity": 500}), "exceeds the 50 shares held"),
        (json.dumps(SELL_10 | {"action": "buy", "quantity": 10_000}), "exceeds the order budget"),
    ],
)
async def test_an_unusable_client_answer_is_a_hold_that_says_why(
    text: str, reason: str, overlay: Overlay, market: MarketSimulator
) -> None:
    async with Client(build_server(overlay), sampling_callback=ClientModel(text)) as client:
        run = await start_aapl(client, analyst="client")
        pending = (await call(client, "list_pending_approvals"))["approvals"]
    assert run["status"] == "completed" and run["summary"].startswith("hold")
    assert reason in run["summary"] and "client-model-1" in run["summary"]
    assert pending == [] and market.orders == []
    recorded = await the_one_recorded_call(overlay)
    assert not recorded.ok and reason in (recorded.error or "")


async def test_without_sampling_auto_falls_back_to_the_overlays_analyst_and_client_is_refused(
    overlay: Overlay,
) -> None:
    async with Client(build_server(overlay)) as client:
        refused = await client.call_tool(
            "start_strategy", {"workflow": "price_alert", "symbol": "AAPL", "analyst": "client"}
        )
        run = await start_aapl(client)
        [proposal] = (await call(client, "list_pending_approvals"))["approvals"]
    assert refused.is_error and "does not offer sampling" in refused.content[0].text
    assert "analyst='auto'" in refused.content[0].text
    assert run["status"] == "awaiting_approval" and proposal["analyst"] == "offline"


async def test_a_workflow_without_a_client_analysis_is_refused_by_name(overlay: Overlay) -> None:
    model = ClientModel(json.dumps(SELL_10))
    async with Client(build_server(overlay), sampling_callback=model) as client:
        refused = await client.call_tool(
            "start_strategy", {"workflow": "vwap_order", "symbol": "AAPL", "analyst": "client"}
        )
    assert refused.is_error and "vwap_order does not take a client analysis" in refused.content[0].text
    assert "price_alert" in refused.content[0].text
    assert model.requests == []


async def test_overlay_choice_and_a_configured_claude_key_keep_the_client_unasked(overlay: Overlay) -> None:
    model = ClientModel(json.dumps(SELL_10 | {"quantity": 3}))
    with respx.mock(assert_all_called=True) as router:
        claude_answer = SELL_10 | {"quantity": 7, "rationale": "Claude says trim."}
        router.post(MESSAGES_URL).mock(return_value=httpx.Response(200, json=message_json(json.dumps(claude_answer))))
        async with Client(build_server(overlay), sampling_callback=model) as client:
            offline = await start_aapl(client, analyst="overlay")
            overlay.runner.deps.analyst = ClaudeAnalyst(mock_anthropic_client(router), usage=overlay.usage)
            by_claude = await start_aapl(client)
            sampled = await start_aapl(client, analyst="client")
            pending = {p["workflow_id"]: p for p in (await call(client, "list_pending_approvals"))["approvals"]}
    assert pending[offline["workflow_id"]]["analyst"] == "offline"
    assert pending[by_claude["workflow_id"]]["analyst"] == "claude"
    assert pending[by_claude["workflow_id"]]["quantity"] == 7
    assert pending[sampled["workflow_id"]]["analyst"] == "client-sampling"
    assert pending[sampled["workflow_id"]]["quantity"] == 3
    assert len(model.requests) == 1


async def test_momentum_trade_takes_the_clients_entry_within_its_smaller_entry_budget(
    overlay: Overlay, market: MarketSimulator
) -> None:
    buy = {"action": "buy", "order_type": "MKT", "limit_price": None, "rationale": "Dip entry.", "confidence": 0.6}
    model = ClientModel(json.dumps(buy | {"quantity": 2}))
    too_big = ClientModel(json.dumps(buy | {"quantity": 40}))
    arguments = {"workflow": "momentum_trade", "symbol": "MSFT", "condition": "price < 300", "analyst": "client"}
    async with Client(build_server(overlay), sampling_callback=model) as client:
        await call(client, "set_risk_limits", limits={"enabled_strategies": ["price_alert", "momentum_trade"]})
        entered = await call(client, "start_strategy", **arguments)
        [proposal] = (await call(client, "list_pending_approvals"))["approvals"]
    async with Client(build_server(overlay), sampling_callback=too_big) as client:
        refused = await call(client, "start_strategy", **arguments, params={"entry_fraction": 0.1})
    assert entered["status"] == "awaiting_approval"
    assert proposal["analyst"] == "client-sampling" and proposal["side"] == "BUY" and proposal["quantity"] == 2
    assert "at most $2,000.00" in model.requests[0].messages[0].content.text
    assert refused["status"] == "completed" and "exceeds the order budget $1,000.00" in refused["summary"]
    assert market.orders == []
