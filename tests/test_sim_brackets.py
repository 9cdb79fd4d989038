"""Bracket orders at the simulated IB_MCP: a parent and its attached stop-loss / take-profit in one request,
children waiting for the parent's fill, stops and limits filled along the price path, one-cancels-all; and
BrokerClient.place_bracket, which sends them only to an IB_MCP whose order tool declares parentId."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel

from broker import ib_mcp_tools as tools
from broker.client import BrokerClient
from broker.errors import BrokerError, OrderConfirmationRefused
from broker.models import BracketTicket, OrderTicket
from broker.sim import Bar, MarketSimulator, WalkSettings, build_sim_server, gateway
from tests.test_sim import AAPL, ACCOUNT, FIXED_CLOCK_S, call, make_market, ticket

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def bracket(parent: dict[str, Any], stop: float, target: float, coid: str = "b1", **child: Any) -> list[dict[str, Any]]:
    exit_side = "SELL" if parent["side"] == "BUY" else "BUY"
    quantity = parent["quantity"]
    return [
        {**parent, "cOID": coid},
        {
            **ticket(AAPL, exit_side, quantity, "STP", price=stop, tif="GTC", cOID=f"{coid}-stop", parentId=coid),
            **child,
        },
        {**ticket(AAPL, exit_side, quantity, "LMT", price=target, tif="GTC", cOID=f"{coid}-target", parentId=coid)},
    ]


async def place_all(client: Client, orders: list[dict[str, Any]]) -> Any:
    """Place, answering every question confirmed=true; the final answer."""
    answer = await call(client, tools.PLACE_ORDER, accountId=ACCOUNT, orders=orders)
    while isinstance(answer, list) and "id" in answer[0]:
        answer = await call(client, tools.REPLY, replyId=answer[0]["id"], confirmed=True)
    return answer


def statuses(market: MarketSimulator) -> list[tuple[str | None, str]]:
    return [(order.client_order_id, order.status) for order in market.orders]


async def test_one_request_places_parent_and_children_that_wait_for_the_parent_fill() -> None:
    market = make_market()
    market.set_price("AAPL", "200.00")
    async with Client(build_sim_server(market)) as client:
        acks = await place_all(client, bracket(ticket(AAPL, "BUY", 10, "LMT", price=195.0), stop=190.0, target=210.0))
        waiting = await call(client, tools.LIVE_ORDERS)
        market.set_price("AAPL", "215.00")  # above the target, but the children wait for the parent
        still_waiting = statuses(market)
        market.set_price("AAPL", "194.00")  # the parent's limit is reached: it fills, the children work
        working = await call(client, tools.LIVE_ORDERS)
        stop_status = await call(client, tools.ORDER_STATUS, orderId=acks[1]["order_id"])
    assert [a["order_status"] for a in acks] == ["Submitted", "PreSubmitted", "PreSubmitted"]
    assert len({a["order_id"] for a in acks}) == 3
    rows = {row["order_ref"]: row for row in waiting["orders"]}
    assert (rows["b1-stop"]["orderType"], rows["b1-stop"]["auxPrice"], rows["b1-stop"]["price"]) == (
        "Stop",
        190.0,
        None,
    )
    assert (rows["b1-target"]["orderType"], rows["b1-target"]["price"]) == ("Limit", 210.0)
    assert still_waiting == [("b1", "Submitted"), ("b1-stop", "PreSubmitted"), ("b1-target", "PreSubmitted")]
    assert [(row["order_ref"], row["status"]) for row in working["orders"]] == [
        ("b1", "Filled"),
        ("b1-stop", "Submitted"),
        ("b1-target", "Submitted"),
    ]
    assert (stop_status["order_type"], stop_status["stop_price"], stop_status["order_ref"]) == (
        "STP",
        "190.00",
        "b1-stop",
    )
    assert market.position("AAPL") == 10


@pytest.mark.parametrize(
    ("move_to", "filled", "cancelled", "fill_price"),
    [("212.00", "b1-target", "b1-stop", Decimal("211.99")), ("189.00", "b1-stop", "b1-target", Decimal("188.99"))],
)
async def test_the_child_the_price_reaches_fills_and_cancels_its_sibling(
    move_to: str, filled: str, cancelled: str, fill_price: Decimal
) -> None:
    market = make_market()
    market.set_price("AAPL", "200.00")
    async with Client(build_sim_server(market)) as client:
        acks = await place_all(client, bracket(ticket(AAPL, "BUY", 10), stop=190.0, target=210.0))
        market.set_price("AAPL", "205.00")
        between = statuses(market)
        market.set_price("AAPL", move_to)
        trades = await call(client, tools.TRADES)
        live = await call(client, tools.LIVE_ORDERS)
    assert [a["order_status"] for a in acks] == ["Filled", "Submitted", "Submitted"]
    assert between == [("b1", "Filled"), ("b1-stop", "Submitted"), ("b1-target", "Submitted")]
    by_ref = {row["order_ref"]: row["status"] for row in live["orders"]}
    assert (by_ref[filled], by_ref[cancelled]) == ("Filled", "Cancelled")
    assert [(t["order_ref"], t["side"]) for t in trades] == [("b1", "B"), (filled, "S")]
    assert market.order_by_client_id(filled).avg_fill_price == fill_price  # type: ignore[union-attr]
    assert market.position("AAPL") == 0


async def test_a_gap_through_the_stop_fills_at_the_new_price_along_a_replayed_path() -> None:
    closes = ("100.00", "99.50", "99.20", "97.00", "103.00")
    bars = [
        Bar(1_700_000_000_000 + i * 60_000, Decimal(p), Decimal(p), Decimal(p), Decimal(p), 100)
        for i, p in enumerate(closes)
    ]
    market = make_market(symbols=[], bars={"AAPL": bars})
    async with Client(build_sim_server(market)) as client:
        await place_all(client, bracket(ticket(AAPL, "BUY", 5), stop=99.0, target=102.0))
        market.step(2)  # 99.50, 99.20: above the stop
        before = statuses(market)
        market.step()  # 97.00: gaps through 99.00; the stop becomes a market order at the bid
        market.step()  # 103.00: the target was cancelled with the stop's fill
    assert before == [("b1", "Filled"), ("b1-stop", "Submitted"), ("b1-target", "Submitted")]
    assert statuses(market)[1:] == [("b1-stop", "Filled"), ("b1-target", "Cancelled")]
    assert market.order_by_client_id("b1-stop").avg_fill_price == Decimal("96.99")  # type: ignore[union-attr]
    assert market.position("AAPL") == 0


async def test_a_random_walk_exits_through_exactly_one_child() -> None:
    market = MarketSimulator(
        ["AAPL"], seed=11, clock=lambda: FIXED_CLOCK_S, walks={"AAPL": WalkSettings(start_price_usd=Decimal("100"))}
    )
    async with Client(build_sim_server(market)) as client:
        await place_all(client, bracket(ticket(AAPL, "BUY", 3), stop=99.0, target=101.0))
        steps = 0
        while market.position("AAPL") != 0 and steps < 100_000:
            market.step()
            steps += 1
    entry, stop, target = market.orders
    [exit_order] = [o for o in (stop, target) if o.status == "Filled"]
    [other] = [o for o in (stop, target) if o is not exit_order]
    assert entry.status == "Filled" and other.status == "Cancelled"
    assert exit_order.avg_fill_price is not None
    if exit_order is stop:
        assert exit_order.avg_fill_price <= Decimal("99.00")
    else:
        assert exit_order.avg_fill_price >= Decimal("101.00")
    assert market.position("AAPL") == 0 and len(market.executions) == 2


async def test_cancelling_a_child_cancels_its_sibling_and_cancelling_the_parent_cancels_all() -> None:
    market = make_market()
    market.set_price("AAPL", "200.00")
    async with Client(build_sim_server(market)) as client:
        first = await place_all(client, bracket(ticket(AAPL, "BUY", 2), stop=190.0, target=210.0, coid="a"))
        await call(client, tools.CANCEL_ORDER, accountId=ACCOUNT, orderId=first[1]["order_id"])
        second = await place_all(
            client, bracket(ticket(AAPL, "BUY", 2, "LMT", price=150.0), stop=140.0, target=160.0, coid="b")
        )
        await call(client, tools.CANCEL_ORDER, accountId=ACCOUNT, orderId=second[0]["order_id"])
        again = await call(client, tools.CANCEL_ORDER, accountId=ACCOUNT, orderId=first[2]["order_id"])
    assert statuses(market) == [
        ("a", "Filled"),
        ("a-stop", "Cancelled"),
        ("a-target", "Cancelled"),
        ("b", "Cancelled"),
        ("b-stop", "Cancelled"),
        ("b-target", "Cancelled"),
    ]
    assert again["status_code"] == 400 and "Cancelled" in again["detail"]
    assert market.position("AAPL") == 2


async def test_a_bracket_asks_each_routine_question_once_and_a_refusal_places_nothing() -> None:
    market = make_market(order_questions={"MKT": ("o10151",), "STP": ("o10151", "o354")})
    async with Client(build_sim_server(market)) as client:
        first = await call(
            client, tools.PLACE_ORDER, accountId=ACCOUNT, orders=bracket(ticket(AAPL, "BUY", 1), 190.0, 210.0)
        )
        second = await call(client, tools.REPLY, replyId=first[0]["id"], confirmed=True)
        declined = await call(client, tools.REPLY, replyId=second[0]["id"], confirmed=False)
        accepted = await place_all(client, bracket(ticket(AAPL, "BUY", 1), 190.0, 210.0, coid="c"))
    assert (first[0]["messageIds"], second[0]["messageIds"]) == (["o10151"], ["o354"])
    assert "error" in declined
    assert len(accepted) == 3 and [o.client_order_id for o in market.orders] == ["c", "c-stop", "c-target"]


@pytest.mark.parametrize(
    ("orders", "refusal"),
    [
        (bracket(ticket(AAPL, "BUY", 1), 190.0, 210.0)[1:], "names no order in this request"),
        ([ticket(AAPL, "BUY", 1), *bracket(ticket(AAPL, "BUY", 1), 190.0, 210.0)[1:]], "needs a cOID"),
        (bracket(ticket(AAPL, "BUY", 1), 190.0, 210.0, parentId="other"), "must have parentId 'b1'"),
        (bracket(ticket(AAPL, "BUY", 1), 190.0, 210.0, cOID="b1-target"), "its own cOID"),
        ([ticket(AAPL, "SELL", 1, "STP")], "stop order needs its stop as price"),
    ],
)
async def test_malformed_brackets_are_refused_whole(orders: list[dict[str, Any]], refusal: str) -> None:
    market = make_market()
    async with Client(build_sim_server(market)) as client:
        answer = await call(client, tools.PLACE_ORDER, accountId=ACCOUNT, orders=orders)
    assert answer["status_code"] == 400 and refusal in answer["detail"]
    assert market.orders == []


async def test_a_used_child_cooid_refuses_the_whole_bracket() -> None:
    market = make_market()
    async with Client(build_sim_server(market)) as client:
        await place_all(client, [ticket(AAPL, "BUY", 1, "LMT", price=1.0, cOID="b1-stop")])
        answer = await place_all(client, bracket(ticket(AAPL, "BUY", 1, "LMT", price=1.0), 0.5, 2.0))
    assert answer["status_code"] == 400 and "Local order ID=b1-stop is already registered" in answer["detail"]
    assert [o.client_order_id for o in market.orders] == ["b1-stop"]


# --- BrokerClient.place_bracket ------------------------------------------------------------------------


def aapl_bracket(coid: str = "ovl-x") -> BracketTicket:
    entry = OrderTicket(account_id=ACCOUNT, symbol="AAPL", side="BUY", quantity=4, client_order_id=coid)
    return BracketTicket(entry=entry, stop_price=190.0, target_price=210.0)


async def test_place_bracket_sends_one_request_and_returns_the_three_acks() -> None:
    market = make_market()
    market.set_price("AAPL", "200.00")
    async with BrokerClient(build_sim_server(market)) as broker:
        sent: list[str] = []
        real_call = broker.call

        async def spying_call(tool: str, arguments: dict[str, Any] | None = None) -> Any:
            sent.append(tool)
            return await real_call(tool, arguments)

        broker.call = spying_call  # type: ignore[method-assign]
        assert await broker.supports_brackets()
        ack = await broker.place_bracket(aapl_bracket())
    assert sent.count(tools.PLACE_ORDER) == 1 and sent.count(tools.REPLY) == 1  # o10151 for the MKT entry
    assert (ack.entry.client_order_id, ack.stop_loss.client_order_id, ack.take_profit.client_order_id) == (
        "ovl-x",
        "ovl-x-stop",
        "ovl-x-target",
    )
    assert [ack.entry.status, ack.stop_loss.status, ack.take_profit.status] == ["Filled", "Submitted", "Submitted"]
    assert ack.entry.confirmations_answered == ["o10151"]
    entry, stop, target = market.orders
    assert [str(o.order_id) for o in (entry, stop, target)] == [
        ack.entry.order_id,
        ack.stop_loss.order_id,
        ack.take_profit.order_id,
    ]
    assert (stop.order_type, stop.stop_price, stop.side, stop.parent_id) == (
        "STP",
        Decimal("190"),
        "SELL",
        entry.order_id,
    )
    assert (target.order_type, target.limit_price, target.tif) == ("LMT", Decimal("210"), "GTC")


async def test_place_bracket_refuses_a_question_off_the_allow_list_and_places_nothing() -> None:
    market = make_market(order_questions={"STP": ("o383",)})
    async with BrokerClient(build_sim_server(market)) as broker:
        with pytest.raises(OrderConfirmationRefused, match="o383"):
            await broker.place_bracket(aapl_bracket())
    assert market.orders == []


class OrderWithoutParent(BaseModel):
    """An order model that, like an IB_MCP built before brackets, does not declare parentId."""

    conid: int
    orderType: str
    side: str
    tif: str
    quantity: float
    price: float | None = None
    cOID: str | None = None


def sim_without_brackets(market: MarketSimulator, received: list[Any] | None = None) -> MCPServer:
    """The simulated IB_MCP with an order tool whose orders do not declare parentId (it would drop it)."""
    server = build_sim_server(market)
    server.remove_tool(tools.PLACE_ORDER)

    @server.tool(name=tools.PLACE_ORDER)
    async def place_order(accountId: str, orders: list[OrderWithoutParent]) -> dict[str, Any]:
        """Place Order(s): submit an order ticket."""
        tickets = [order.model_dump(exclude_none=True) for order in orders]
        if received is not None:
            received.append(tickets)
        answer = gateway.order_answer(market.submit_order(accountId, tickets))
        return answer if isinstance(answer, dict) else {"result": answer}

    return server


async def test_place_bracket_sends_nothing_to_an_order_tool_without_parent_id() -> None:
    market = make_market()
    received: list[Any] = []
    async with BrokerClient(sim_without_brackets(market, received)) as broker:
        assert not await broker.supports_brackets()
        with pytest.raises(BrokerError, match="does not take bracket orders"):
            await broker.place_bracket(aapl_bracket())
        single = await broker.place_order(aapl_bracket().entry)
    assert len(received) == 1 and single.status == "Filled"
    assert [o.client_order_id for o in market.orders] == ["ovl-x"]


def test_bracket_schema_detection() -> None:
    order = {"type": "object", "properties": {"conid": {"type": "integer"}, "parentId": {"type": "string"}}}
    without_parent = {"type": "object", "properties": {"conid": {"type": "integer"}}}
    by_ref = {
        "properties": {"orders": {"type": "array", "items": {"$ref": "#/$defs/OrderModel"}}},
        "$defs": {"OrderModel": order},
    }
    inline = {"properties": {"orders": {"type": "array", "items": order}}}
    assert tools.accepts_brackets(by_ref) and tools.accepts_brackets(inline)
    assert not tools.accepts_brackets({"properties": {"orders": {"type": "array", "items": without_parent}}})
    assert not tools.accepts_brackets({"properties": {"orders": {"type": "string"}}})
    assert not tools.accepts_brackets({"properties": {"orders": {"type": "array", "items": {"$ref": "#/$defs/Gone"}}}})
    assert not tools.accepts_brackets(None)


def test_a_bracket_ticket_puts_its_stop_on_the_losing_side() -> None:
    entry = OrderTicket(account_id=ACCOUNT, symbol="AAPL", side="BUY", quantity=1, client_order_id="e")
    with pytest.raises(ValueError, match="losing side"):
        BracketTicket(entry=entry, stop_price=210.0, target_price=190.0)
    short = BracketTicket(entry=entry.model_copy(update={"side": "SELL"}), stop_price=210.0, target_price=190.0)
    assert (short.stop_loss.side, short.stop_loss.order_type, short.stop_loss.stop_price) == ("BUY", "STP", 210.0)
    assert (short.take_profit.side, short.take_profit.limit_price) == ("BUY", 190.0)


def test_a_limit_entry_past_its_own_stop_is_refused() -> None:
    entry = OrderTicket(
        account_id=ACCOUNT,
        symbol="AAPL",
        side="BUY",
        quantity=1,
        order_type="LMT",
        limit_price=185.0,
        client_order_id="e",
    )
    with pytest.raises(ValueError, match="past its own stop"):
        BracketTicket(entry=entry, stop_price=188.0, target_price=195.0)
    assert BracketTicket(entry=entry, stop_price=180.0, target_price=195.0).take_profit.limit_price == 195.0
