"""The simulated IB_MCP, driven through real MCP client sessions (in process, streamable HTTP, stdio)."""

from __future__ import annotations

import json
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp_types import CallToolResult

from broker import ib_mcp_tools as tools
from broker.sim import (
    Bar,
    CommissionSchedule,
    MarketSimulator,
    StartingPosition,
    WalkSettings,
    build_sim_server,
    load_bars_csv,
    serve_sim_http,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
BARS_CSV = Path(__file__).parent / "data" / "aapl_synthetic_daily.csv"
ACCOUNT = "DU1234567"
AAPL, MSFT, TSLA = 265598, 272093, 76792991
FIXED_CLOCK_S = 1_700_000_000.0
ALL_TOOLS = (
    tools.STOCKS_BY_SYMBOL,
    tools.SEARCH_CONTRACT,
    tools.SNAPSHOT,
    tools.HISTORY,
    tools.ACCOUNTS,
    tools.POSITIONS,
    tools.ACCOUNT_SUMMARY,
    tools.PLACE_ORDER,
    tools.PREVIEW_ORDER,
    tools.REPLY,
    tools.LIVE_ORDERS,
    tools.ORDER_STATUS,
    tools.CANCEL_ORDER,
    tools.TRADES,
    tools.AUTH_STATUS,
    tools.TICKLE,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_market(**options: Any) -> MarketSimulator:
    options.setdefault("seed", 3)
    options.setdefault("clock", lambda: FIXED_CLOCK_S)
    symbols = options.pop("symbols", ["AAPL", "MSFT", "TSLA"])
    return MarketSimulator(symbols, **options)


def payload(result: CallToolResult) -> Any:
    """The gateway JSON a client sees; checks that the text block is the JSON of the whole payload."""
    assert not result.is_error, result.content
    text = json.loads(result.content[0].text)
    assert len(result.content) == 1
    structured = result.structured_content
    assert structured == (text if isinstance(text, dict) else {"result": text})
    return text


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    return payload(await client.call_tool(tool, arguments))


def ticket(conid: int, side: str, quantity: float, order_type: str = "MKT", **extra: Any) -> dict[str, Any]:
    return {"conid": conid, "side": side, "quantity": quantity, "orderType": order_type, "tif": "DAY", **extra}


async def place(client: Client, order: dict[str, Any]) -> Any:
    return await call(client, tools.PLACE_ORDER, accountId=ACCOUNT, orders=[order])


async def place_confirmed(client: Client, order: dict[str, Any]) -> dict[str, Any]:
    """Place an order and answer every question with confirmed=true, as the overlay's BrokerClient does."""
    answer = await place(client, order)
    while "id" in answer[0]:
        answer = await call(client, tools.REPLY, replyId=answer[0]["id"], confirmed=True)
    return answer[0]


@pytest.mark.anyio
async def test_lists_every_ib_mcp_tool_with_upstream_argument_names() -> None:
    async with Client(build_sim_server(make_market())) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(ALL_TOOLS) <= set(listed)
    assert set(listed[tools.SNAPSHOT].input_schema["required"]) == {"conids", "fields"}
    assert listed[tools.SNAPSHOT].input_schema["properties"]["conids"]["type"] == "string"
    assert set(listed[tools.PLACE_ORDER].input_schema["required"]) == {"accountId", "orders"}
    assert listed[tools.PLACE_ORDER].input_schema["properties"]["orders"]["type"] == "array"
    assert set(listed[tools.REPLY].input_schema["required"]) == {"replyId", "confirmed"}
    assert set(listed[tools.POSITIONS].input_schema["required"]) == {"accountId", "pageId"}


@pytest.mark.anyio
async def test_symbol_search_and_stocks_by_symbol() -> None:
    async with Client(build_sim_server(make_market())) as client:
        found = await call(client, tools.SEARCH_CONTRACT, symbol="AAPL", name=False)
        by_name = await call(client, tools.SEARCH_CONTRACT, symbol="micro", name=True)
        unknown = await call(client, tools.SEARCH_CONTRACT, symbol="ZZZZ")
        stocks = await call(client, tools.STOCKS_BY_SYMBOL, symbols="TSLA,MSFT")
    assert found[0]["conid"] == str(AAPL)
    assert found[0]["companyName"] == "APPLE INC"
    assert found[0]["sections"] == [{"secType": "STK"}]
    assert [row["symbol"] for row in by_name] == ["MSFT"]
    assert unknown == []
    assert stocks["TSLA"][0]["contracts"][0] == {"conid": TSLA, "exchange": "NASDAQ", "isUS": True}
    assert stocks["MSFT"][0]["contracts"][0]["conid"] == MSFT


@pytest.mark.anyio
async def test_batched_snapshot_returns_string_fields_for_three_conids_in_one_call() -> None:
    market = make_market()
    market.set_price("AAPL", "190.50")
    async with Client(build_sim_server(market)) as client:
        rows = await call(client, tools.SNAPSHOT, conids=f"{AAPL},{MSFT},{TSLA}", fields=tools.SNAPSHOT_FIELDS)
    assert [row["conid"] for row in rows] == [AAPL, MSFT, TSLA]
    aapl = rows[0]
    assert (aapl["31"], aapl["84"], aapl["86"], aapl["55"], aapl["6509"]) == (
        "190.50",
        "190.49",
        "190.51",
        "AAPL",
        "RpB",
    )
    for row in rows:
        for code in tools.SNAPSHOT_FIELDS.split(","):
            assert isinstance(row[code], str), (code, row)
        assert tools.parse_ib_number(row["87"]) == pytest.approx(row["87_raw"], rel=0.01)


@pytest.mark.anyio
async def test_snapshot_emulates_the_empty_first_answer_and_halted_or_closed_prefixes() -> None:
    market = make_market(empty_first_snapshot=True)
    async with Client(build_sim_server(market)) as client:
        first = await call(client, tools.SNAPSHOT, conids=str(AAPL), fields="31,84")
        second = await call(client, tools.SNAPSHOT, conids=str(AAPL), fields="31,84")
        market.halted_symbols.add("AAPL")
        halted = await call(client, tools.SNAPSHOT, conids=str(AAPL), fields="31")
        market.halted_symbols.clear()
        market.market_closed = True
        closed = await call(client, tools.SNAPSHOT, conids=str(AAPL), fields="31")
    assert "31" not in first[0] and first[0]["conid"] == AAPL
    assert second[0]["31"] == "190.00"
    assert halted[0]["31"] == "H190.00"
    assert closed[0]["31"] == "C190.00"
    assert tools.snapshot_flags(closed[0]) == (False, True)


@pytest.mark.anyio
async def test_snapshot_can_advance_the_market_once_per_call() -> None:
    market = make_market(advance_on_snapshot=True)
    async with Client(build_sim_server(market)) as client:
        lasts = [(await call(client, tools.SNAPSHOT, conids=str(TSLA), fields="31"))[0]["31"] for _ in range(3)]
    assert market.steps == 3
    assert lasts[-1] == f"{market.quote('TSLA').last:.2f}"
    assert len(set(lasts)) > 1


@pytest.mark.anyio
async def test_market_order_asks_a_question_then_fills_with_exact_cash_and_position() -> None:
    market = make_market()
    market.set_price("AAPL", "200.00")
    async with Client(build_sim_server(market)) as client:
        question = await place(client, ticket(AAPL, "BUY", 100, cOID="buy-1"))
        assert question[0]["messageIds"] == ["o10151"]
        assert question[0]["isSuppressed"] is False
        assert market.orders == []
        accepted = await call(client, tools.REPLY, replyId=question[0]["id"], confirmed=True)
        # 100 x ask 200.01 = 20,001.00 plus commission max(100 x 0.005, 1.00) = 1.00
        assert accepted[0]["order_status"] == "Filled"
        assert market.cash() == Decimal("79998.00")
        [position] = await call(client, tools.POSITIONS, accountId=ACCOUNT, pageId=0)
        assert (position["position"], position["avgCost"]) == (100.0, 200.02)

        market.set_price("AAPL", "210.00")
        await place_confirmed(client, ticket(AAPL, "SELL", 40, cOID="sell-1"))
        # 40 x bid 209.99 = 8,399.60 less 1.00; realised 40 x (209.99 - 200.02) - 1.00 = 397.80
        [position] = await call(client, tools.POSITIONS, accountId=ACCOUNT, pageId=0)
        ledger = await call(client, "get_account_ledger_portfolio", accountId=ACCOUNT)
        trades = await call(client, tools.TRADES)
        status = await call(client, tools.ORDER_STATUS, orderId=accepted[0]["order_id"])
    assert market.cash() == Decimal("88396.60")
    assert position["position"] == 60.0
    assert position["realizedPnl"] == 397.80
    assert position["unrealizedPnl"] == 598.80  # 60 x (210.00 - 200.02)
    assert ledger["USD"]["cashbalance"] == 88396.60
    assert [(trade["side"], trade["price"], trade["commission"], trade["order_ref"]) for trade in trades] == [
        ("B", "200.01", "1.00", "buy-1"),
        ("S", "209.99", "1.00", "sell-1"),
    ]
    assert (status["order_status"], status["avg_price"], status["cum_fill"]) == ("Filled", "200.01", "100.0")


@pytest.mark.anyio
async def test_limit_order_fills_only_when_a_later_bar_crosses_the_limit() -> None:
    bars = [
        Bar(1_700_000_000_000 + i * 60_000, Decimal(p), Decimal(p), Decimal(p), Decimal(p), 100)
        for i, p in enumerate(("100.00", "99.00", "98.00", "97.00"))
    ]
    market = make_market(symbols=[], bars={"AAPL": bars})
    async with Client(build_sim_server(market)) as client:
        placed = await place(client, ticket(AAPL, "BUY", 10, "LMT", price=98.0, cOID="lmt-1"))
        order_id = placed[0]["order_id"]
        market.step(2)  # asks 99.01, then 98.01: the last (98.00) touches the limit, the ask does not
        working = await call(client, tools.ORDER_STATUS, orderId=order_id)
        market.step()  # ask 97.01
        filled = await call(client, tools.ORDER_STATUS, orderId=order_id)
        live = await call(client, tools.LIVE_ORDERS, filters="Filled")
    assert placed[0]["order_status"] == "Submitted"
    assert (working["order_status"], working["cum_fill"]) == ("Submitted", "0.0")
    assert (filled["order_status"], filled["avg_price"]) == ("Filled", "97.01")
    assert [(order["orderId"], order["order_ref"]) for order in live["orders"]] == [(int(order_id), "lmt-1")]


@pytest.mark.anyio
async def test_marketable_limit_fills_at_once_at_the_touch() -> None:
    market = make_market()
    market.set_price("MSFT", "400.00")
    async with Client(build_sim_server(market)) as client:
        answer = await place(client, ticket(MSFT, "BUY", 5, "LMT", price=401.0))
    assert answer[0]["order_status"] == "Filled"
    assert market.orders[0].avg_fill_price == Decimal("400.01")


@pytest.mark.anyio
async def test_duplicate_client_order_id_is_refused_with_ib_error_text() -> None:
    market = make_market()
    refusal = "Order couldn't be submitted: Local order ID=dup-1 is already registered."
    async with Client(build_sim_server(market)) as client:
        await place(client, ticket(AAPL, "BUY", 1, "LMT", price=1.0, cOID="dup-1"))
        again = await place(client, ticket(AAPL, "BUY", 1, "LMT", price=1.0, cOID="dup-1"))
        pending = await place(client, ticket(AAPL, "BUY", 1, cOID="dup-2"))
        await place(client, ticket(AAPL, "BUY", 1, "LMT", price=1.0, cOID="dup-2"))
        late = await call(client, tools.REPLY, replyId=pending[0]["id"], confirmed=True)
    assert again["status_code"] == 400
    assert refusal in again["detail"]
    assert tools.gateway_error(again) is not None
    assert late["status_code"] == 400 and "Local order ID=dup-2 is already registered" in late["detail"]
    assert [order.client_order_id for order in market.orders] == ["dup-1", "dup-2"]


@pytest.mark.anyio
async def test_cancel_a_working_order() -> None:
    market = make_market()
    async with Client(build_sim_server(market)) as client:
        placed = await place(client, ticket(TSLA, "SELL", 3, "LMT", price=999.0, tif="GTC"))
        order_id = placed[0]["order_id"]
        cancelled = await call(client, tools.CANCEL_ORDER, accountId=ACCOUNT, orderId=order_id)
        status = await call(client, tools.ORDER_STATUS, orderId=order_id)
        again = await call(client, tools.CANCEL_ORDER, accountId=ACCOUNT, orderId=order_id)
        unknown = await call(client, tools.ORDER_STATUS, orderId="42")
    assert cancelled == {"msg": "Request was submitted", "order_id": int(order_id), "conid": -1, "account": None}
    assert status["order_status"] == "Cancelled"
    assert again["status_code"] == 400
    assert unknown["status_code"] == 400
    market.set_price("TSLA", "1500")
    assert market.orders[0].status == "Cancelled"
    assert market.position("TSLA") == 0


@pytest.mark.anyio
async def test_questions_are_configurable_declining_abandons_and_unknown_reply_fails() -> None:
    market = make_market(order_questions={"LMT": ("o163", "o383")})
    async with Client(build_sim_server(market)) as client:
        first = await place(client, ticket(AAPL, "BUY", 600, "LMT", price=150.0))
        second = await call(client, tools.REPLY, replyId=first[0]["id"], confirmed=True)
        declined = await call(client, tools.REPLY, replyId=second[0]["id"], confirmed=False)
        unknown = await call(client, tools.REPLY, replyId=second[0]["id"], confirmed=True)
        market_order = await place(client, ticket(AAPL, "BUY", 1))
    assert first[0]["messageIds"] == ["o163"]
    assert second[0]["messageIds"] == ["o383"]
    assert "size exceeds the Size Limit" in second[0]["message"][0]
    assert "error" in declined
    assert unknown["status_code"] == 400
    assert market_order[0]["order_status"] == "Filled"
    assert len(market.orders) == 1


@pytest.mark.anyio
async def test_fault_injection_failures_lost_answers_and_expired_session() -> None:
    market = make_market()
    async with Client(build_sim_server(market)) as client:
        market.faults.fail_next(tools.POSITIONS, times=2)
        failures = [await call(client, tools.POSITIONS, accountId=ACCOUNT, pageId=0) for _ in range(3)]

        market.faults.lose_next_order_answer()
        question = await place(client, ticket(AAPL, "BUY", 2, cOID="lost-1"))
        lost = await call(client, tools.REPLY, replyId=question[0]["id"], confirmed=True)
        retry = await place(client, ticket(AAPL, "BUY", 2, cOID="lost-1"))
        live = await call(client, tools.LIVE_ORDERS)

        market.faults.fail_next(tools.SNAPSHOT)
        snapshot_failure = await client.call_tool(tools.SNAPSHOT, {"conids": str(AAPL), "fields": "31"})

        market.faults.authenticated = False
        auth = await call(client, tools.AUTH_STATUS)
        expired = await call(client, tools.ACCOUNTS)
    assert [failure["status_code"] for failure in failures[:2]] == [503, 503]
    assert failures[2] == []
    assert lost["error"] == "Request Error" and "status_code" not in lost
    assert "already registered" in retry["detail"]
    assert [order["order_ref"] for order in live["orders"]] == ["lost-1"]
    assert market.position("AAPL") == 2
    assert snapshot_failure.is_error
    assert auth["authenticated"] is False
    assert expired["status_code"] == 401


@pytest.mark.anyio
async def test_csv_replay_reproduces_the_recorded_closes() -> None:
    recorded = load_bars_csv(BARS_CSV)["AAPL"]
    market = make_market(symbols=[], bars=load_bars_csv(BARS_CSV))
    seen = []
    async with Client(build_sim_server(market)) as client:
        for _ in recorded:
            rows = await call(client, tools.SNAPSHOT, conids=str(AAPL), fields="31,7295,7296")
            seen.append(rows[0]["31"])
            market.step()
        history = await call(client, tools.HISTORY, conid=str(AAPL), period="1y", bar="1d")
    assert len(recorded) == 60
    assert seen == [f"{bar.close:.2f}" for bar in recorded]
    assert [point["c"] for point in history["data"]] == [float(bar.close) for bar in recorded]
    assert rows[0]["7296"] == f"{recorded[-2].close:.2f}"
    assert rows[0]["7295"] == f"{recorded[-1].open:.2f}"


def test_random_walk_is_deterministic_given_a_seed_and_drifts_exactly() -> None:
    def path(seed: int) -> list[Decimal]:
        market = MarketSimulator(["AAPL", "ZZZZ"], seed=seed)
        prices = []
        for _ in range(50):
            market.step()
            prices.append(market.quote("ZZZZ").last)
        return prices

    assert path(11) == path(11)
    assert path(11) != path(12)
    steady = MarketSimulator(
        ["XYZ"], walks={"XYZ": WalkSettings(start_price_usd=Decimal("100"), volatility_pct=0, drift_pct=1.0)}
    )
    steady.step(3)
    quote = steady.quote("XYZ")
    assert (quote.last, quote.open, quote.prior_close) == (Decimal("103.03"), Decimal("100.00"), Decimal("100.00"))
    assert len(steady.history("XYZ")) == WalkSettings().warmup_bars + 4


def test_commission_schedule_and_short_round_trip_are_exact() -> None:
    fees = CommissionSchedule()
    assert fees.commission(Decimal(1000), Decimal("50")) == Decimal("5.00")
    assert fees.commission(Decimal(100), Decimal("200")) == Decimal("1.00")
    assert fees.commission(Decimal(10), Decimal("5")) == Decimal("0.50")  # 1 % of 50.00 caps the 1.00 minimum
    market = make_market(spread_usd=0, positions=[StartingPosition("MSFT", Decimal(10), Decimal("300"))])
    market.set_price("AAPL", "100.00")
    market.submit_order(ACCOUNT, [ticket(AAPL, "SELL", 10, "LMT", price=100.0)])
    market.set_price("AAPL", "90.00")
    market.submit_order(ACCOUNT, [ticket(AAPL, "BUY", 10, "LMT", price=90.0)])
    assert market.cash() == Decimal("100098.00")  # +1,000 - 1 - 900 - 1
    assert market.realized_pnl() == Decimal("98.00")  # 10 x (99.90 - 90.00) - 1.00
    assert [(view.symbol, view.quantity) for view in market.positions()] == [("MSFT", Decimal(10))]


def test_orders_wait_while_halted_and_day_orders_expire() -> None:
    market = make_market(order_questions={})
    market.halted_symbols.add("AAPL")
    market.submit_order(ACCOUNT, [ticket(AAPL, "BUY", 1)])
    market.submit_order(ACCOUNT, [ticket(AAPL, "BUY", 1, "LMT", price=1.0)])
    market.submit_order(ACCOUNT, [ticket(AAPL, "BUY", 1, "LMT", price=1.0, tif="IOC")])
    assert [order.status for order in market.orders] == ["Submitted", "Submitted", "Cancelled"]
    market.halted_symbols.clear()
    market.step()
    market.end_session()
    assert [order.status for order in market.orders] == ["Filled", "Cancelled", "Cancelled"]


@pytest.mark.anyio
async def test_over_streamable_http_at_both_paths() -> None:
    market = make_market()
    async with serve_sim_http(market, "127.0.0.1", port=0) as url:
        assert url.endswith("/mcp/")
        for target in (url, url.rstrip("/")):
            async with Client(target, mode="legacy") as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
                rows = await call(client, tools.SNAPSHOT, conids=f"{AAPL},{TSLA}", fields="31")
                accounts = await call(client, tools.ACCOUNTS)
            assert set(ALL_TOOLS) <= names
            assert [row["31"] for row in rows] == ["190.00", "240.00"]
            assert accounts[0]["id"] == ACCOUNT


@pytest.mark.anyio
async def test_http_server_steps_the_market_on_a_wall_clock_interval() -> None:
    market = make_market()
    async with serve_sim_http(market, port=0, tick_interval_s=0.01) as url:
        for _ in range(1000):
            if market.steps >= 3:
                break
            await anyio.sleep(0.01)
        assert market.steps >= 3
        async with Client(url, mode="legacy") as client:
            rows = await call(client, tools.SNAPSHOT, conids=str(AAPL), fields="31")
    stepped = market.steps
    await anyio.sleep(0.05)
    assert market.steps == stepped
    assert rows[0]["31"] != "" and tools.parse_ib_number(rows[0]["31"]) is not None


@pytest.mark.anyio
async def test_over_stdio_with_the_command_line() -> None:
    command = StdioServerParameters(
        command=sys.executable,
        args=["-m", "broker.sim", "--stdio", "--symbols", "AAPL", "--tick-interval", "0", "--position", "AAPL=10@150"],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        cwd=str(REPO_ROOT),
    )
    async with Client(command) as client:
        [position] = await call(client, tools.POSITIONS, accountId=ACCOUNT, pageId=0)
        summary = await call(client, tools.ACCOUNT_SUMMARY, accountId=ACCOUNT)
    assert (position["ticker"], position["position"], position["avgCost"]) == ("AAPL", 10.0, 150.0)
    assert position["unrealizedPnl"] == 400.0
    assert summary["totalcashvalue"]["amount"] == 100000.0
    assert summary["netliquidation"]["amount"] == 101900.0
