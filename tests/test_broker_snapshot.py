"""get_context's broker part comes from the background snapshot: its age is shown, repeated calls make no
IB_MCP call, a fill refreshes it at once, and risk checks never use it. Real MCP sessions, simulated IB_MCP."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from broker import ib_mcp_tools as ib
from broker.sim.market import MarketSimulator
from broker.sim.server import build_sim_server
from mcp_overlay_server.app import Overlay, open_overlay
from mcp_overlay_server.server import build_server
from tests.test_walking_skeleton import POLLER, call, make_market, settings_for
from workflows.models import OrderIntent

pytestmark = pytest.mark.anyio

NEVER_S = 3600.0


@pytest.fixture
def market() -> MarketSimulator:
    return make_market()


@pytest.fixture
async def overlay(tmp_path: Path, market: MarketSimulator) -> AsyncIterator[Overlay]:
    async with open_overlay(
        settings_for(tmp_path), poller_config=POLLER, target=build_sim_server(market), run_poller=False
    ) as opened:
        # No periodic refresh during a test: whatever refreshes the snapshot here is the order ledger's signal.
        opened.broker_snapshot.refresh_interval_s = NEVER_S
        opened.broker_snapshot.max_age_s = NEVER_S
        opened.broker_snapshot.invalidate()
        yield opened


@pytest.fixture
async def client(overlay: Overlay) -> AsyncIterator[Client]:
    async with Client(build_server(overlay)) as session:
        yield session


@pytest.fixture
def ib_calls(overlay: Overlay) -> Counter[str]:
    """IB_MCP tool calls the overlay makes from now on, by tool name."""
    calls: Counter[str] = Counter()
    forward: Callable[..., Awaitable[Any]] = overlay.broker.call

    async def counted(tool: str, arguments: dict[str, Any] | None = None) -> Any:
        calls[tool] += 1
        return await forward(tool, arguments)

    overlay.broker.call = counted  # type: ignore[method-assign]
    return calls


def holdings(context: dict[str, Any]) -> dict[str, float]:
    return {p["symbol"]: p["quantity"] for p in context["positions"]}


async def test_the_context_says_how_old_the_account_is_and_repeats_it_without_ib_mcp(
    client: Client, ib_calls: Counter[str]
) -> None:
    first = await call(client, "get_context")
    assert holdings(first) == {"AAPL": 50}
    assert first["broker_error"] is None and first["cash_usd"] is not None
    as_of = datetime.fromisoformat(first["broker_as_of"])
    assert as_of.tzinfo is not None and first["broker_age_s"] >= 0
    ib_calls.clear()

    second = await call(client, "get_context")
    assert ib_calls == Counter()
    assert datetime.fromisoformat(second["broker_as_of"]) == as_of
    assert second["broker_age_s"] >= first["broker_age_s"]


async def test_a_fill_refreshes_the_account_at_once(
    overlay: Overlay, market: MarketSimulator, client: Client, ib_calls: Counter[str]
) -> None:
    run = await call(client, "start_strategy", workflow="price_alert", symbol="AAPL", condition="price > 200")
    before = await call(client, "get_context")
    assert holdings(before) == {"AAPL": 50}

    decision = await call(client, "approve_trade", approval_id=run["pending_approval_id"], decision="approve")
    assert decision["accepted"] and decision["run"]["status"] == "completed"
    after = await call(client, "get_context")

    assert holdings(after) == {"AAPL": 25}
    assert [o["status"] for o in after["recent_orders"]] == ["filled"]
    assert datetime.fromisoformat(after["broker_as_of"]) > datetime.fromisoformat(before["broker_as_of"])
    assert len(market.orders) == 1


async def test_risk_checks_read_the_account_live_not_the_snapshot(
    overlay: Overlay, client: Client, ib_calls: Counter[str]
) -> None:
    await call(client, "get_context")
    ib_calls.clear()
    account_id = await overlay.runner.deps.trading_account()
    intent = OrderIntent(
        workflow="price_alert", symbol="MSFT", side="BUY", quantity=1, order_type="MKT", reference_price=400.0
    )
    decision = await overlay.runner.deps.risk.check(intent, account_id)
    assert decision.allowed
    assert ib_calls[ib.ACCOUNT_SUMMARY] == 1 and ib_calls[ib.POSITIONS] == 1
