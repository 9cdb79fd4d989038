"""The simulated IB_MCP: an MCP server with IB_MCP's tool names, argument names and result shapes.

IB_MCP (FastMCP over FastAPI routers) returns the gateway's JSON unchanged: an object as is, a top-level array
as structured content `{"result": [...]}`, with the JSON of the whole payload as the one text block. A failed
gateway call is a *successful* result `{"error": ..., "status_code": ..., "detail": ...}`, except for the
snapshot tool, whose declared list output makes the same failure a tool error. Arguments are validated by
the same models upstream uses, so a call that IB_MCP would reject is rejected here too.

    market = MarketSimulator(["AAPL", "TSLA"], seed=1)
    async with Client(build_sim_server(market)) as client: ...                 # in process
    async with serve_sim_http(market, port=0) as url: ...                     # streamable HTTP, /mcp/ and /mcp
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.routing import Route

from broker import ib_mcp_tools as tools
from broker.sim import gateway
from broker.sim.errors import GatewayError, not_authenticated
from broker.sim.market import MarketSimulator
from broker.sim.orders import Accepted

# IB_MCP also lists the ledger (cash per currency); the overlay may use it, so the simulator serves it too.
LEDGER = "get_account_ledger_portfolio"
MCP_PATH = "/mcp"
SESSION_TOOLS = (tools.AUTH_STATUS, tools.TICKLE)
GRACEFUL_SHUTDOWN_S = 2


class GatewayOrder(BaseModel):
    """One order ticket, with the fields and types of IB_MCP's OrderModel."""

    acctId: str | None = Field(None, description="Account ID for the order. Should match the accountId in the path.")
    conid: int | None = Field(None, description="Contract ID for the security. Use either conid or conidex.")
    conidex: str | None = Field(None, description="Contract ID with exchange, e.g., '265598@SMART'.")
    secType: str | None = Field(None, description="Security type, e.g., '265598:STK'.")
    cOID: str | None = Field(None, description="Customer-specific order ID. Must be unique for 24 hours.")
    parentId: str | None = Field(None, description="Parent order ID for child orders in bracket or OCA groups.")
    orderType: str = Field(..., description="The type of order, e.g., LMT, MKT, STP.")
    listingExchange: str | None = Field(None, description="Primary routing exchange. Defaults to SMART.")
    outsideRTH: bool | None = Field(False, description="Set to true to allow execution outside regular trading hours.")
    price: float | None = Field(None, description="The limit price for LMT orders, or the stop price for STP orders.")
    auxPrice: float | None = Field(None, description="The auxiliary price, used for STOP_LIMIT and TRAILLMT orders.")
    side: str = Field(..., description="The side of the order: BUY or SELL.")
    ticker: str | None = Field(None, description="The ticker symbol for the contract.")
    tif: str = Field(..., description="The time in force for the order, e.g., GTC, DAY, IOC.")
    quantity: float = Field(..., description="The number of shares or contracts to trade.")
    useAdaptive: bool | None = Field(False, description="Set to true to use the Price Management Algo.")
    strategy: str | None = Field(None, description="The IB Algo strategy to use.")
    strategyParameters: dict[str, Any] | None = Field(None, description="Parameters for the IB Algo strategy.")
    manualIndicator: bool | None = Field(None, description="Futures only: manual (true) or automated submission.")
    extOperator: str | None = Field(None, description="Futures only: identifier of the external operator.")


def _result(payload: Any) -> CallToolResult:
    structured = payload if isinstance(payload, dict) else {"result": payload}
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(payload))], structured_content=structured)


def _gateway_call(market: MarketSimulator, tool: str, answer: Callable[[], Any]) -> CallToolResult:
    """Run one gateway call with the injected faults and the session check; errors become IB_MCP's object."""
    try:
        failure = market.faults.take_failure(tool)
        if failure is not None:
            raise failure
        if tool not in SESSION_TOOLS and not market.faults.authenticated:
            raise not_authenticated()
        return _result(answer())
    except GatewayError as error:
        return _result(error.payload())


def _order_call(market: MarketSimulator, tool: str, submit: Callable[[], Any]) -> CallToolResult:
    """A call that may create an order: an injected lost answer leaves the order live and reports an error."""

    def answer() -> Any:
        outcome = submit()
        if isinstance(outcome, Accepted):
            lost = market.faults.take_lost_order_answer()
            if lost is not None:
                raise lost
        return gateway.order_answer(outcome)

    return _gateway_call(market, tool, answer)


def build_sim_server(market: MarketSimulator) -> MCPServer:
    """An MCP server that answers IB_MCP's tools from `market`."""
    server = MCPServer(
        name="IB_MCP (simulated)",
        instructions="A simulated Interactive Brokers Web API (paper account, simulated market data).",
    )

    @server.tool(name=tools.STOCKS_BY_SYMBOL)
    async def get_stocks_by_symbol(symbols: str) -> CallToolResult:
        """Stocks by Symbol: stock contracts (conid, exchange) for a comma-separated list of symbols."""
        return _gateway_call(market, tools.STOCKS_BY_SYMBOL, lambda: gateway.stocks_by_symbol(market, symbols))

    @server.tool(name=tools.SEARCH_CONTRACT)
    async def search_contract_by_symbol_or_name(
        symbol: str, name: bool | None = False, secType: str | None = None
    ) -> CallToolResult:
        """Search by Symbol or Name: matching contracts with their conid. Set name=true to search company names."""
        return _gateway_call(
            market, tools.SEARCH_CONTRACT, lambda: gateway.search_results(market, symbol, bool(name), secType)
        )

    @server.tool(name=tools.OPTION_STRIKES)
    async def get_strikes(conid: int, secType: str, month: str, exchange: str | None = None) -> CallToolResult:
        """Option Strikes: {"call": [...], "put": [...]} strikes of an underlying conid for one expiry month
        in MMMYY form (e.g. JAN26); the months are in the OPT section of the search result."""
        return _gateway_call(
            market, tools.OPTION_STRIKES, lambda: gateway.option_strikes(market, conid, secType, month)
        )

    @server.tool(name=tools.SECDEF_INFO)
    async def get_secdef_info(
        conid: str,
        secType: str,
        month: str | None = None,
        exchange: str | None = None,
        strike: float | None = None,
        right: str | None = None,
    ) -> CallToolResult:
        """Secdef Info: the option contracts (conid, maturityDate, strike, right, multiplier) of an underlying
        conid for a month, strike and right (C or P)."""
        return _gateway_call(
            market, tools.SECDEF_INFO, lambda: gateway.secdef_info(market, conid, secType, month, strike, right)
        )

    @server.tool(name=tools.OPTION_CHAINS)
    async def get_options_chains(
        symbol: str,
        expire: str | None = None,
        strike: float | None = None,
        right: str | None = None,
        exchange: str | None = None,
        chainType: str | None = None,
    ) -> CallToolResult:
        """Get Options Chains: the option chain for an underlying symbol."""
        return _gateway_call(market, tools.OPTION_CHAINS, lambda: gateway.options_chains_not_found(symbol))

    @server.tool(name=tools.SNAPSHOT)
    async def get_marketdata_snapshot(conids: str, fields: str) -> CallToolResult:
        """Live Market Data Snapshot for a comma-separated list of conids and field codes (e.g. '31,84,86').

        Returns one row per conid; values are strings keyed by field code (31 last, 84 bid, 86 ask, 87 volume,
        7295 open, 7296 prior close, 6509 availability). A last price prefixed C is a close, H a halt.
        """
        try:
            failure = market.faults.take_failure(tools.SNAPSHOT)
            if failure is not None:
                raise failure
            if not market.faults.authenticated:
                raise not_authenticated()
            return _result(gateway.snapshot_rows(market, conids, fields))
        except GatewayError as error:
            raise ToolError(json.dumps(error.payload())) from error

    @server.tool(name=tools.HISTORY)
    async def get_marketdata_history(
        conid: str,
        period: str,
        bar: str | None = None,
        exchange: str | None = None,
        outsideRth: bool | None = False,
        barType: str | None = "trades",
    ) -> CallToolResult:
        """Market Data History: OHLCV bars for one conid over `period` (e.g. '1d', '2w', '6m'), `bar` size
        (e.g. '1min', '1h', '1d'; 'm' alone means month)."""
        return _gateway_call(
            market, tools.HISTORY, lambda: gateway.history(market, conid, period, bar, bool(outsideRth))
        )

    @server.tool(name=tools.ACCOUNTS)
    async def get_portfolio_accounts() -> CallToolResult:
        """Portfolio Accounts: the accounts whose positions and balances can be read."""
        return _gateway_call(market, tools.ACCOUNTS, lambda: gateway.accounts(market))

    @server.tool(name=tools.POSITIONS)
    async def get_positions(
        accountId: str,
        pageId: int,
        model: str | None = None,
        sort: str | None = None,
        direction: str | None = None,
        period: str | None = None,
    ) -> CallToolResult:
        """Positions of an account, paginated by pageId (starts at 0; an empty list past the end)."""
        return _gateway_call(market, tools.POSITIONS, lambda: gateway.positions_page(market, accountId, pageId))

    @server.tool(name=tools.ACCOUNT_SUMMARY)
    async def get_account_summary(accountId: str) -> CallToolResult:
        """Portfolio Summary: net liquidation, cash, available funds, buying power (lower-case keys)."""
        return _gateway_call(market, tools.ACCOUNT_SUMMARY, lambda: gateway.account_summary(market, accountId))

    @server.tool(name=LEDGER)
    async def get_account_ledger(accountId: str) -> CallToolResult:
        """Portfolio Ledger: cash balance, market value and P&L per currency."""
        return _gateway_call(market, LEDGER, lambda: gateway.ledger(market, accountId))

    @server.tool(name=tools.PLACE_ORDER)
    async def place_order(accountId: str, orders: list[GatewayOrder]) -> CallToolResult:
        """Place Order(s): submit one order, or a bracket: the parent (with a cOID) first, then its children
        with parentId = the parent's cOID (they wait for the parent's fill; one filling cancels the others).
        The answer is the order id and status of each order, or a question
        ([{"id": replyId, "message": [...], "messageIds": [...]}]) to confirm with the reply tool."""
        tickets = [order.model_dump(exclude_none=True) for order in orders]
        return _order_call(market, tools.PLACE_ORDER, lambda: market.submit_order(accountId, tickets))

    @server.tool(name=tools.PREVIEW_ORDER)
    async def preview_order(accountId: str, orders: list[GatewayOrder]) -> CallToolResult:
        """Preview Order / What-If: commission and equity impact of an order, without submitting it."""
        tickets = [order.model_dump(exclude_none=True) for order in orders]
        return _gateway_call(market, tools.PREVIEW_ORDER, lambda: gateway.preview(market.preview(accountId, tickets)))

    @server.tool(name=tools.REPLY)
    async def place_order_reply(replyId: str, confirmed: bool) -> CallToolResult:
        """Place Order Reply: answer a confirmation question (confirmed=true submits, false abandons)."""
        return _order_call(market, tools.REPLY, lambda: market.reply(replyId, confirmed))

    @server.tool(name=tools.LIVE_ORDERS)
    async def get_live_orders(filters: str | None = None, force: bool | None = False) -> CallToolResult:
        """Live Orders of this session (submitted, filled, cancelled); filters: comma-separated statuses."""
        return _gateway_call(market, tools.LIVE_ORDERS, lambda: gateway.live_orders(market, filters))

    @server.tool(name=tools.ORDER_STATUS)
    async def get_order_status(orderId: str) -> CallToolResult:
        """Order Status of a single order."""
        return _gateway_call(market, tools.ORDER_STATUS, lambda: gateway.order_status(market.order(orderId)))

    @server.tool(name=tools.CANCEL_ORDER)
    async def cancel_order(accountId: str, orderId: str) -> CallToolResult:
        """Cancel Order: cancel a working order."""
        return _gateway_call(
            market, tools.CANCEL_ORDER, lambda: gateway.cancel_answer(market.cancel_order(accountId, orderId))
        )

    @server.tool(name=tools.TRADES)
    async def get_trades(days: str | None = None) -> CallToolResult:
        """List of Trades (executions) of the current day, or of the last `days` days (up to 7)."""
        return _gateway_call(market, tools.TRADES, lambda: gateway.trades(market, days))

    @server.tool(name=tools.AUTH_STATUS)
    async def get_auth_status() -> CallToolResult:
        """Authentication Status of the gateway's brokerage session."""
        return _gateway_call(market, tools.AUTH_STATUS, lambda: gateway.auth_status(market.faults.authenticated))

    @server.tool(name=tools.TICKLE)
    async def tickle() -> CallToolResult:
        """Tickle: keep the gateway session alive; reports the session's authentication status."""
        return _gateway_call(market, tools.TICKLE, lambda: gateway.tickle(market.faults.authenticated))

    return server


def build_sim_http_app(server: MCPServer, host: str = "127.0.0.1") -> Starlette:
    """The streamable HTTP app, answering at /mcp and at /mcp/ (IB_MCP's URL ends with a slash)."""
    app = server.streamable_http_app(streamable_http_path=MCP_PATH, host=host)
    mcp_route = next(route for route in app.routes if isinstance(route, Route) and route.path == MCP_PATH)
    app.router.routes.append(Route(f"{MCP_PATH}/", endpoint=mcp_route.endpoint))
    return app


async def run_market_clock(market: MarketSimulator, tick_interval_s: float) -> None:
    """Advance the market one step every `tick_interval_s` seconds, until cancelled."""
    while True:
        await anyio.sleep(tick_interval_s)
        market.step()


class _EmbeddedUvicornServer(uvicorn.Server):
    """Leaves the process's signal handlers alone: the host program (test, demo, CLI) decides when to stop."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bound_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def sim_url(host: str, port: int) -> str:
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}{MCP_PATH}/"


async def _until_started(server: uvicorn.Server, stopped: anyio.Event) -> None:
    while not server.started:
        if stopped.is_set():
            raise RuntimeError("the simulated IB_MCP failed to start (see the log above)")
        await anyio.sleep(0.01)


@asynccontextmanager
async def serve_sim_http(
    market: MarketSimulator,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tick_interval_s: float | None = None,
) -> AsyncIterator[str]:
    """Serve `market` over streamable HTTP while the block runs; yields the URL (port 0 = a free port).

    With `tick_interval_s` the market also steps on that wall-clock interval.
    """
    sock = _bound_socket(host, port)
    url = sim_url(host, sock.getsockname()[1])
    app = build_sim_http_app(build_sim_server(market), host)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    http_server = _EmbeddedUvicornServer(config)
    stopped = anyio.Event()
    clock_scope = anyio.CancelScope()

    async def serve() -> None:
        try:
            await http_server.serve(sockets=[sock])
        finally:
            stopped.set()

    async def clock(interval_s: float) -> None:
        with clock_scope:
            await run_market_clock(market, interval_s)

    try:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(serve)
            if tick_interval_s:
                task_group.start_soon(clock, tick_interval_s)
            try:
                await _until_started(http_server, stopped)
                yield url
            finally:
                clock_scope.cancel()
                http_server.should_exit = True
    finally:
        sock.close()


async def run_alongside_clock(
    market: MarketSimulator, tick_interval_s: float | None, main: Callable[[], Awaitable[None]]
) -> None:
    """Run `main` with the market clock ticking beside it; the clock stops when `main` returns."""
    async with anyio.create_task_group() as task_group:
        if tick_interval_s:
            task_group.start_soon(run_market_clock, market, tick_interval_s)
        await main()
        task_group.cancel_scope.cancel()
