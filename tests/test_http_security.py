"""The HTTP app as a client on the network sees it: token, Host check, size limit, then /mcp and REST behind them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest

from broker.sim.market import MarketSimulator
from broker.sim.server import build_sim_server
from mcp_overlay_server.app import Overlay, open_overlay
from mcp_overlay_server.http import HttpSettings, build_http_app, overlay_client, serve_http
from mcp_overlay_server.server import build_server
from poller.events import TriggerEvent
from tests.test_walking_skeleton import POLLER, make_market, settings_for

pytestmark = pytest.mark.anyio

TOKEN = "test-token-0123456789"
MAX_BYTES = 20_000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Served:
    url: str
    base: str
    overlay: Overlay
    market: MarketSimulator


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    market = make_market()
    async with open_overlay(
        settings_for(tmp_path), poller_config=POLLER, target=build_sim_server(market), run_poller=False
    ) as overlay:
        app = build_http_app(
            overlay,
            build_server(overlay),
            TOKEN,
            "127.0.0.1",
            http_settings=HttpSettings(allowed_hosts=["overlay:8765"], max_request_bytes=MAX_BYTES),
        )
        async with serve_http(app, "127.0.0.1", 0) as url:
            yield Served(url=url, base=url.removesuffix("/mcp"), overlay=overlay, market=market)


def http(served: Served, token: str | None = TOKEN, **headers: str) -> httpx.AsyncClient:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.AsyncClient(base_url=served.base, headers=headers, timeout=30)


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


async def test_requests_without_or_with_a_wrong_token_are_refused(served: Served) -> None:
    for token in (None, "wrong"):
        async with http(served, token) as client:
            mcp = await client.post("/mcp", json=INITIALIZE, headers=MCP_HEADERS)
            context = await client.get("/context")
            metrics = await client.get("/metrics")
        assert (mcp.status_code, context.status_code, metrics.status_code) == (401, 401, 401)
        assert mcp.json()["error"] == "unauthorized" and mcp.headers["www-authenticate"] == "Bearer"
    async with http(served, None) as client:
        health = await client.get("/healthz")
    assert health.status_code == 200 and health.json()["ib_mcp"]["connected"] is True


async def test_a_forged_host_header_is_refused_even_with_the_token(served: Served) -> None:
    async with http(served, Host="evil.example:8765") as client:
        mcp = await client.post("/mcp", json=INITIALIZE, headers=MCP_HEADERS)
        context = await client.get("/context")
        health = await client.get("/healthz")
    assert (mcp.status_code, context.status_code, health.status_code) == (421, 421, 421)
    async with http(served, Host="overlay:8765") as client:
        allowed = await client.post("/mcp", json=INITIALIZE, headers=MCP_HEADERS)
    assert allowed.status_code == 200


async def test_oversized_bodies_are_refused(served: Served) -> None:
    async with http(served) as client:
        response = await client.post("/workflows/execute", content=b"x" * (MAX_BYTES + 1))
    assert response.status_code == 413 and response.json()["error"] == "request_too_large"


async def test_an_mcp_client_with_the_token_lists_the_tools(served: Served) -> None:
    async with overlay_client(served.url, TOKEN, mode="legacy") as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
    assert {"get_context", "approve_trade", "kill_switch"} <= names


async def test_execute_then_status_then_context(served: Served) -> None:
    async with http(served) as client:
        started = await client.post(
            "/workflows/execute", json={"workflow": "price_alert", "symbol": "msft", "condition": "price < 100000"}
        )
        assert started.status_code == 200, started.text
        run = started.json()
        assert run["status"] == "awaiting_approval" and run["symbol"] == "MSFT"
        status = await client.get(f"/workflows/{run['workflow_id']}/status")
        assert status.json()["pending_approval_id"] == run["pending_approval_id"]
        context = (await client.get("/context")).json()
        assert [a["approval_id"] for a in context["pending_approvals"]] == [run["pending_approval_id"]]
        missing = await client.get("/workflows/nope/status")
        assert missing.status_code == 404 and "nope" in missing.json()["detail"]


async def test_bad_input_is_a_4xx_naming_the_field(served: Served) -> None:
    async with http(served) as client:
        invalid = await client.post("/workflows/execute", json={"workflow": "price_alert"})
        not_json = await client.post("/workflows/execute", content=b"{nope")
        unknown = await client.post("/workflows/execute", json={"workflow": "moonshot", "symbol": "AAPL"})
        bad_event = await client.post("/workflows/trigger", json={"symbol": "AAPL", "price": "high"})
    assert invalid.status_code == 422
    assert [p["field"] for p in invalid.json()["detail"]] == ["symbol"]
    assert not_json.status_code == 400 and not_json.json()["error"] == "invalid_json"
    assert unknown.status_code == 404 and "price_alert" in unknown.json()["detail"]
    assert bad_event.status_code == 422
    assert {p["field"] for p in bad_event.json()["detail"]} == {"trigger_name", "price", "condition"}


async def test_trigger_webhook_is_idempotent_by_event_id(served: Served) -> None:
    event = TriggerEvent(trigger_name="AAPL price alert", symbol="AAPL", price=200.4, condition="price > 200")
    async with http(served) as client:
        first = await client.post("/workflows/trigger", content=event.model_dump_json())
        assert first.status_code == 202 and first.json()["duplicate"] is False
        with anyio.fail_after(10):
            while True:
                if await served.overlay.runner.pending():
                    break
                await anyio.sleep(0.02)
        again = await client.post("/workflows/trigger", content=event.model_dump_json())
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["run"]["status"] == "awaiting_approval"
    assert len(await served.overlay.runner.pending()) == 1


async def test_openapi_and_metrics(served: Served) -> None:
    await served.overlay.broker.connect()
    async with http(served) as client:
        schema = (await client.get("/openapi.json")).json()
        metrics = await client.get("/metrics")
    assert {"/workflows/trigger", "/workflows/execute", "/workflows/{workflow_id}/status", "/context"} <= set(
        schema["paths"]
    )
    assert {"TriggerEvent", "ExecuteRequest", "RunView", "TradingContext"} <= set(schema["components"]["schemas"])
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    for name in (
        "overlay_poll_latency_seconds",
        "overlay_polls_missed_total",
        "overlay_trigger_fires_total",
        "overlay_workflow_runs_total",
        "overlay_claude_spent_today_usd",
        "overlay_claude_daily_budget_usd",
        "overlay_pending_approvals",
        "overlay_ib_mcp_connected 1.0",
    ):
        assert name in metrics.text, name
