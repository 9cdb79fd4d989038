"""`ib-overlay demo`: a simulated IB_MCP, the overlay and its poller, and a trigger that fires within a minute.

The simulated account holds 50 AAPL bought at $180 (the seed's "Workflow 1"). AAPL starts just under $200;
a few seconds in, the scenario lifts it through $200, the `price > 200` trigger fires, the offline analyst
proposes taking partial profit (sell 25), and the proposal waits for your approve_trade.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path

import anyio
from mcp.server.mcpserver import MCPServer

from broker.sim.market import MarketSimulator, StartingPosition
from broker.sim.prices import WalkSettings
from broker.sim.server import build_sim_server, serve_sim_http
from mcp_overlay_server.settings import OverlaySettings
from poller.config import PollerConfig
from poller.triggers import TriggerSpec

DEMO_SYMBOLS = ("AAPL", "MSFT", "SPY")
AAPL_START_USD = Decimal("199.40")
AAPL_BREAKOUT_USD = Decimal("200.35")
BREAKOUT_AFTER_S = 6.0
PENDING_WAIT_S = 60.0
DEMO_MAX_ORDER_NOTIONAL_USD = 10_000.0


def demo_market(seed: int = 7) -> MarketSimulator:
    calm = WalkSettings(volatility_pct=0.01)
    return MarketSimulator(
        DEMO_SYMBOLS,
        seed=seed,
        walks={
            "AAPL": WalkSettings(start_price_usd=AAPL_START_USD, volatility_pct=0.01),
            "MSFT": calm,
            "SPY": calm,
        },
        positions=[StartingPosition("AAPL", Decimal(50), Decimal(180))],
        advance_on_snapshot=True,
    )


def demo_sim_server(market: MarketSimulator) -> MCPServer:
    return build_sim_server(market)


def demo_poller_config() -> PollerConfig:
    return PollerConfig(
        interval_seconds=1.0,
        symbols=list(DEMO_SYMBOLS),
        triggers=[
            TriggerSpec(name="AAPL price alert", symbol="AAPL", condition="price > 200", action="notify_langgraph"),
            TriggerSpec(name="SPY dip watch", symbol="SPY", condition="percent_change_5min < -2", channel="urgent"),
        ],
    )


async def _breakout(market: MarketSimulator) -> None:
    await anyio.sleep(BREAKOUT_AFTER_S)
    market.set_price("AAPL", AAPL_BREAKOUT_USD)


def _banner(url: str, token: str, sim_url: str, data_dir: Path) -> str:
    desktop = {
        "mcpServers": {
            "ib-overlay-demo": {"command": "ib-overlay", "args": ["serve", "--demo"]},
        }
    }
    return f"""
IB MCP Overlay demo is running (paper trading against a simulated IB_MCP; no account needed).
  overlay MCP (streamable HTTP): {url}
  bearer token:                  {token}
  simulated IB_MCP:              {sim_url}
  data:                          {data_dir}
In about {BREAKOUT_AFTER_S:.0f} s AAPL crosses $200, the trigger fires and a proposal waits for approval.

Try it with MCP Inspector:
  npx @modelcontextprotocol/inspector --cli {url} --transport http \\
      --header "Authorization: Bearer {token}" --method tools/call --tool-name list_pending_approvals
  npx @modelcontextprotocol/inspector --cli {url} --transport http \\
      --header "Authorization: Bearer {token}" --method tools/call --tool-name approve_trade \\
      --tool-arg approval_id=<id> --tool-arg decision=approve
Or in Claude Desktop (claude_desktop_config.json; stdio, its own simulated IB_MCP):
{json.dumps(desktop, indent=2)}
Ctrl-C stops the demo.
"""


async def _approve_first_proposal(url: str, token: str) -> int:
    from mcp_overlay_server.http import overlay_client

    async with overlay_client(url, token) as client:
        with anyio.fail_after(PENDING_WAIT_S):
            while True:
                pending = (await client.call_tool("list_pending_approvals", {})).structured_content or {}
                if pending.get("approvals"):
                    break
                await anyio.sleep(0.5)
        proposal = pending["approvals"][0]
        print(
            f"proposal: {proposal['side']} {proposal['quantity']:g} {proposal['symbol']} "
            f"@ ~${proposal['reference_price']:.2f} ({proposal['mode']}): {proposal['rationale']}",
            flush=True,
        )
        result = await client.call_tool(
            "approve_trade", {"approval_id": proposal["approval_id"], "decision": "approve", "note": "demo"}
        )
        decision = result.structured_content or {}
        print(f"approved: {decision.get('message')}", flush=True)
        context = (await client.call_tool("get_context", {})).structured_content or {}
        for order in context.get("recent_orders", []):
            print(
                f"order {order['broker_order_id']} {order['side']} {order['quantity']:g} {order['symbol']}: "
                f"{order['status']} at {order['avg_fill_price']}",
                flush=True,
            )
        filled = any(o["status"] == "filled" for o in context.get("recent_orders", []))
        return 0 if filled else 1


async def run_demo(*, overlay_port: int, sim_port: int, auto_approve: bool, data_dir: Path | None) -> int:
    from mcp_overlay_server.app import open_overlay
    from mcp_overlay_server.http import build_http_app, load_or_create_token, serve_http
    from mcp_overlay_server.server import build_server

    async with AsyncExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ib-overlay-demo-")))
        market = demo_market()
        sim_url = await stack.enter_async_context(serve_sim_http(market, host="127.0.0.1", port=sim_port))
        settings = OverlaySettings(
            ib_mcp_url=sim_url,
            data_dir=data_dir,
            database_url=None,
            market_calendar="always",
            anthropic_api_key=None,
            max_order_notional_usd=DEMO_MAX_ORDER_NOTIONAL_USD,
        )
        overlay = await stack.enter_async_context(open_overlay(settings, poller_config=demo_poller_config()))
        token = load_or_create_token(settings.token_file)
        app = build_http_app(overlay, build_server(overlay), token, "127.0.0.1")
        url = await stack.enter_async_context(serve_http(app, "127.0.0.1", overlay_port))
        print(_banner(url, token, sim_url, data_dir), flush=True)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_breakout, market)
            if auto_approve:
                code = await _approve_first_proposal(url, token)
                tasks.cancel_scope.cancel()
                return code
            await anyio.sleep_forever()
    return 0
