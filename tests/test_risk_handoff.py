"""A run's gather step hands its live read of the account to the same run's risk check: 3 IB_MCP calls per
price_alert run instead of 7, and the read is used only while it is recent, of the same account, and no order
changed since. Real store, simulated IB_MCP."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from broker import ib_mcp_tools as ib
from broker.sim.market import MarketSimulator
from broker.sim.server import build_sim_server
from mcp_overlay_server.app import Overlay, open_overlay
from tests.test_walking_skeleton import POLLER, make_market, settings_for
from workflows.risk import PositionSnapshot
from workflows.risk_gate import HANDOFF_MAX_AGE_S, AccountRead, handed_over
from workflows.store import OrderRecord
from workflows.times import utc_now

pytestmark = pytest.mark.anyio


@pytest.fixture
async def overlay(tmp_path: Path) -> AsyncIterator[Overlay]:
    market: MarketSimulator = make_market()
    async with open_overlay(
        settings_for(tmp_path), poller_config=POLLER, target=build_sim_server(market), run_poller=False
    ) as opened:
        yield opened


@pytest.fixture
def ib_calls(overlay: Overlay) -> Counter[str]:
    calls: Counter[str] = Counter()
    forward: Callable[..., Awaitable[Any]] = overlay.broker.call

    async def counted(tool: str, arguments: dict[str, Any] | None = None) -> Any:
        calls[tool] += 1
        return await forward(tool, arguments)

    overlay.broker.call = counted  # type: ignore[method-assign]
    return calls


def claimed_read(account_id: str, age_s: float = 0.0) -> AccountRead:
    """A read that says 9,999 AAPL: no live read of the simulated account (50 AAPL) says that."""
    return AccountRead(
        account_id=account_id,
        read_at=utc_now() - timedelta(seconds=age_s),
        net_liquidation_usd=1_000_000.0,
        buying_power_usd=1_000_000.0,
        positions={"AAPL": PositionSnapshot(quantity=9_999, market_price_usd=199.5)},
    )


async def test_a_run_reads_the_account_once_for_its_analyst_and_its_risk_check(
    overlay: Overlay, ib_calls: Counter[str]
) -> None:
    await overlay.runner.deps.trading_account()  # the account list is read once per session, not per run
    ib_calls.clear()
    run = await overlay.runner.start("price_alert", params={"symbol": "AAPL", "condition": "price > 200"})
    assert run.status == "awaiting_approval"
    assert ib_calls[ib.SNAPSHOT] == 1
    assert ib_calls[ib.ACCOUNT_SUMMARY] == 1
    assert ib_calls[ib.POSITIONS] == 1


async def test_a_recent_read_of_the_same_account_is_used(overlay: Overlay, ib_calls: Counter[str]) -> None:
    account_id = await overlay.runner.deps.trading_account()
    ib_calls.clear()
    with handed_over(claimed_read(account_id)):
        ctx = await overlay.risk.context(account_id)
    assert ctx.positions["AAPL"].quantity == 9_999
    assert ib_calls[ib.ACCOUNT_SUMMARY] == 0 and ib_calls[ib.POSITIONS] == 0


@pytest.mark.parametrize("why", ["too old", "another account", "an order changed since", "none handed over"])
async def test_otherwise_the_account_is_read_live(overlay: Overlay, ib_calls: Counter[str], why: str) -> None:
    account_id = await overlay.runner.deps.trading_account()
    read = {
        "too old": claimed_read(account_id, age_s=HANDOFF_MAX_AGE_S + 1),
        "another account": claimed_read("DU0000000"),
        "an order changed since": claimed_read(account_id),
        "none handed over": None,
    }[why]
    if why == "an order changed since":
        await overlay.store.claim_order(
            OrderRecord(
                client_order_id="ovl-elsewhere",
                workflow_id="wf-elsewhere",
                account_id=account_id,
                symbol="MSFT",
                side="BUY",
                quantity=1,
                order_type="MKT",
            )
        )
    ib_calls.clear()
    with handed_over(read):
        ctx = await overlay.risk.context(account_id)
    assert ctx.positions["AAPL"].quantity == 50
    assert ib_calls[ib.ACCOUNT_SUMMARY] == 1 and ib_calls[ib.POSITIONS] == 1
