"""BrokerClient.positions() against the simulated IB_MCP, which pages positions by 100 as IB documents: a page
shorter than IB's smallest documented page (30 rows) is the last one, a full page is followed by the next."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from broker import ib_mcp_tools as ib
from broker.client import BrokerClient
from broker.sim.market import MarketSimulator, StartingPosition
from broker.sim.server import build_sim_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RecordingBrokerClient(BrokerClient):
    """A BrokerClient that records the positions pages it asks IB_MCP for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pages: list[int] = []

    async def call(self, tool: str, arguments: dict[str, Any] | None = None) -> Any:
        if tool == ib.POSITIONS:
            self.pages.append(int((arguments or {})["pageId"]))
        return await super().call(tool, arguments)


async def read_positions(count: int) -> tuple[dict[str, float], list[int]]:
    market = MarketSimulator(
        ["AAPL"],
        positions=[StartingPosition(f"S{i:03d}", Decimal(i + 1), Decimal(20)) for i in range(count)],
    )
    async with RecordingBrokerClient(build_sim_server(market)) as broker:
        [account] = await broker.accounts()
        positions = await broker.positions(account.account_id)
        return {p.symbol: p.quantity for p in positions}, broker.pages


async def test_a_short_first_page_is_the_only_call() -> None:
    positions, pages = await read_positions(3)
    assert positions == {"S000": 1.0, "S001": 2.0, "S002": 3.0}
    assert pages == [0]


async def test_a_full_first_page_is_followed_by_the_next() -> None:
    positions, pages = await read_positions(129)
    assert positions == {f"S{i:03d}": float(i + 1) for i in range(129)}
    assert pages == [0, 1]


async def test_a_full_last_page_ends_with_an_empty_one() -> None:
    positions, pages = await read_positions(100)
    assert len(positions) == 100
    assert pages == [0, 1]
