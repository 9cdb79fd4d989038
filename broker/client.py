"""BrokerClient: an MCP client session to IB_MCP that returns typed objects.

The session lives in a task of its own (anyio cancel scopes must be left by the task that entered them),
so any task may call the client, and a dropped connection is re-opened by the next call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

import anyio
from mcp import Client, StdioServerParameters
from mcp.server.mcpserver import MCPServer
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from broker import ib_mcp_tools as ib
from broker.errors import (
    BrokerError,
    BrokerUnavailable,
    OrderConfirmationRefused,
    OrderToolsMissing,
    Throttled,
    UnknownSymbol,
)
from broker.models import Account, BracketAck, BracketTicket, Order, OrderAck, OrderTicket, Position, Quote
from broker.pacing import Pacer

log = logging.getLogger(__name__)

BrokerTarget = str | StdioServerParameters | MCPServer
MAX_CONFIRMATION_ROUNDS = 5
MAX_POSITION_PAGES = 20
# IB documents up to 100 positions per page (30 in older gateways); a shorter page is the last one, so
# stopping below the smaller figure never misses a page and usually saves the call for an empty one.
IB_POSITIONS_PAGE_SIZE = 30


def describe_target(target: BrokerTarget) -> str:
    if isinstance(target, str):
        return target
    if isinstance(target, MCPServer):
        return f"in-process MCP server {target.name!r}"
    return " ".join([target.command, *target.args])


class BrokerClient:
    """Typed access to IB_MCP. Use as an async context manager; calls connect lazily.

    `target` is IB_MCP's streamable HTTP URL, a stdio command, or (tests, the demo) an in-process MCPServer.
    """

    def __init__(
        self,
        target: BrokerTarget,
        *,
        reply_allow_list: Iterable[str] = ib.DEFAULT_REPLY_ALLOW_LIST,
        connect_timeout_s: float = 10.0,
        call_timeout_s: float = 30.0,
        pacer: Pacer | None = None,
        max_throttle_retries: int = 5,
    ) -> None:
        self.target = target
        self.reply_allow_list = frozenset(reply_allow_list)
        self.connect_timeout_s = connect_timeout_s
        self.call_timeout_s = call_timeout_s
        self.pacer = pacer
        self.max_throttle_retries = max_throttle_retries
        self.throttled_calls = 0
        self.last_error: str | None = None
        self._client: Client | None = None
        self._tools: frozenset[str] = frozenset()
        self._place_order_schema: dict[str, Any] | None = None
        self._drop = anyio.Event()
        self._connect_lock = anyio.Lock()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._live_orders: tuple[float, list[Order]] | None = None
        self._accounts: list[Account] | None = None
        self._conids: dict[str, int] = {}
        self._symbols: dict[int, str] = {}

    async def __aenter__(self) -> Self:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        await self._task_group.__aexit__(exc_type, exc, tb)
        self._task_group = None

    @property
    def connected(self) -> bool:
        return self._client is not None

    @property
    def tools(self) -> frozenset[str]:
        """Tool names IB_MCP listed at the last connect."""
        return self._tools

    @property
    def target_label(self) -> str:
        return describe_target(self.target)

    async def connect(self) -> frozenset[str]:
        """Open the session now (normally the first call does it). Returns IB_MCP's tool names."""
        await self._session()
        return self._tools

    async def supports_brackets(self) -> bool:
        """Whether IB_MCP's order tool takes a parent and its attached children in one call (its input schema
        lists orders that declare `parentId`)."""
        await self._session()
        return ib.accepts_brackets(self._place_order_schema)

    def missing_order_tools(self) -> list[str]:
        return [name for name in ib.ORDER_TOOLS if name not in self._tools]

    def require_order_tools(self) -> None:
        missing = self.missing_order_tools()
        if missing:
            raise OrderToolsMissing(
                f"IB_MCP at {self.target_label} does not expose its order tools (missing: {', '.join(missing)}). "
                "IB_MCP's example .env excludes the 'Orders' tag: remove 'Orders' from EXCLUDED_TAGS in "
                "IB_MCP's .env, restart IB_MCP, then try again."
            )

    async def _session(self) -> Client:
        async with self._connect_lock:
            if self._client is not None:
                return self._client
            if self._task_group is None:
                raise RuntimeError("BrokerClient must be used as an async context manager")
            ready = anyio.Event()
            failure: list[BaseException] = []
            self._drop = anyio.Event()
            self._task_group.start_soon(self._hold_session, ready, failure)
            with anyio.move_on_after(self.connect_timeout_s) as scope:
                await ready.wait()
            if scope.cancelled_caught:
                self._drop.set()
                failure.append(TimeoutError(f"no answer within {self.connect_timeout_s:g} s"))
            if self._client is None:
                reason = _first_leaf(failure[0]) if failure else "connection closed"
                self.last_error = f"cannot reach IB_MCP at {self.target_label}: {reason}"
                raise BrokerUnavailable(
                    f"{self.last_error}. Check that IB_MCP (or `python -m broker.sim`) is running and that "
                    "the URL (IB_MCP_URL) is right; IB_MCP's URL ends in /mcp/."
                )
            self.last_error = None
            return self._client

    async def _hold_session(self, ready: anyio.Event, failure: list[BaseException]) -> None:
        try:
            async with Client(self.target, mode="legacy", read_timeout_seconds=self.call_timeout_s) as client:
                listed = await client.list_tools()
                self._tools = frozenset(tool.name for tool in listed.tools)
                self._place_order_schema = next(
                    (tool.input_schema for tool in listed.tools if tool.name == ib.PLACE_ORDER), None
                )
                self._client = client
                ready.set()
                await self._drop.wait()
        except Exception as exc:  # any transport failure: reported to the caller that is waiting
            failure.append(exc)
            log.warning("IB_MCP session at %s ended: %s", self.target_label, _first_leaf(exc))
        finally:
            self._client = None
            ready.set()

    def _drop_session(self, reason: str) -> None:
        self.last_error = reason
        self._client = None
        self._drop.set()

    async def call(self, tool: str, arguments: dict[str, Any] | None = None) -> Any:
        """Call one IB_MCP tool and return its JSON payload; raise a typed error for any failure.
        Calls wait for their turn under the pacer; a 429 from the gateway is retried with backoff."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Throttled),
            wait=wait_exponential_jitter(multiplier=0.5, max=8.0, jitter=0.5),
            stop=stop_after_attempt(self.max_throttle_retries),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._call_once(tool, arguments)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _call_once(self, tool: str, arguments: dict[str, Any] | None) -> Any:
        if self.pacer is not None:
            await self.pacer.acquire(tool)
        client = await self._session()
        try:
            with anyio.fail_after(self.call_timeout_s):
                result = await client.call_tool(tool, arguments or {})
        except TimeoutError as exc:
            self._drop_session(f"{tool} timed out after {self.call_timeout_s:g} s")
            raise BrokerUnavailable(f"IB_MCP did not answer {tool} within {self.call_timeout_s:g} s") from exc
        except Exception as exc:
            self._drop_session(f"{tool}: {_first_leaf(exc)}")
            raise BrokerUnavailable(f"IB_MCP call {tool} failed: {_first_leaf(exc)}") from exc
        payload = _payload(result)
        if result.is_error:
            text = payload if isinstance(payload, str) else json.dumps(payload)
            raise BrokerError(f"IB_MCP tool {tool} failed: {text}")
        error = ib.gateway_error(payload)
        if error is not None:
            if ib.is_throttled(payload):
                self.throttled_calls += 1
                raise Throttled(f"IB gateway throttled {tool}: {error}")
            raise BrokerError(f"IB gateway refused {tool}: {error}")
        return payload

    async def resolve_conids(self, symbols: Iterable[str]) -> dict[str, int]:
        """symbol -> conid of its US stock listing; looked up once per symbol and cached."""
        wanted = [s.upper() for s in symbols]
        unknown = [s for s in dict.fromkeys(wanted) if s not in self._conids]
        if unknown:
            payload = await self.call(ib.STOCKS_BY_SYMBOL, {"symbols": ",".join(unknown)})
            for symbol in unknown:
                conid = _pick_us_stock(payload.get(symbol) if isinstance(payload, dict) else None)
                if conid is not None:
                    self._conids[symbol] = conid
                    self._symbols[conid] = symbol
        missing = [s for s in wanted if s not in self._conids]
        if missing:
            raise UnknownSymbol(f"IB knows no US stock for symbol(s) {', '.join(missing)}; check the spelling")
        return {s: self._conids[s] for s in wanted}

    async def quotes(self, symbols: Iterable[str]) -> dict[str, Quote]:
        """One batched snapshot call for all symbols. A symbol with no price fields yet has None prices."""
        conids = await self.resolve_conids(symbols)
        if not conids:
            return {}
        payload = await self.call(
            ib.SNAPSHOT,
            {"conids": ",".join(str(c) for c in conids.values()), "fields": ib.SNAPSHOT_FIELDS},
        )
        by_conid = {int(row["conid"]): row for row in ib.unwrap_list(payload) if "conid" in row}
        quotes: dict[str, Quote] = {}
        for symbol, conid in conids.items():
            row = by_conid.get(conid, {})
            halted, closed = ib.snapshot_flags(row)
            quotes[symbol] = Quote(
                symbol=symbol,
                conid=conid,
                last=ib.parse_ib_number(row.get(ib.FIELD_LAST)),
                bid=ib.parse_ib_number(row.get(ib.FIELD_BID)),
                ask=ib.parse_ib_number(row.get(ib.FIELD_ASK)),
                volume=ib.parse_ib_number(row.get(ib.FIELD_VOLUME)),
                open=ib.parse_ib_number(row.get(ib.FIELD_OPEN)),
                prior_close=ib.parse_ib_number(row.get(ib.FIELD_PRIOR_CLOSE)),
                halted=halted,
                closed=closed,
            )
        return quotes

    async def accounts(self) -> list[Account]:
        """The user's accounts; asked once per session (IB paces the call at one per 5 s, and they do not
        change while the gateway session lives)."""
        if self._accounts is None:
            payload = await self.call(ib.ACCOUNTS)
            self._accounts = [
                Account(account_id=str(row.get("accountId") or row.get("id")), currency=row.get("currency") or "USD")
                for row in ib.unwrap_list(payload)
            ]
        return list(self._accounts)

    async def account_summary(self, account_id: str) -> Account:
        payload = await self.call(ib.ACCOUNT_SUMMARY, {"accountId": account_id})
        summary = payload if isinstance(payload, dict) else {}
        return Account(
            account_id=account_id,
            net_liquidation_usd=_amount(summary, "netliquidation"),
            cash_usd=_amount(summary, "totalcashvalue"),
            buying_power_usd=_amount(summary, "buyingpower"),
            available_funds_usd=_amount(summary, "availablefunds"),
        )

    async def positions(self, account_id: str) -> list[Position]:
        positions: list[Position] = []
        for page in range(MAX_POSITION_PAGES):
            rows = ib.unwrap_list(await self.call(ib.POSITIONS, {"accountId": account_id, "pageId": page}))
            if not rows:
                break
            for row in rows:
                conid = int(row["conid"])
                symbol = str(row.get("ticker") or row.get("contractDesc") or conid).upper()
                if str(row.get("assetClass") or "STK") == "STK":
                    self._conids.setdefault(symbol, conid)
                    self._symbols.setdefault(conid, symbol)
                positions.append(
                    Position(
                        account_id=str(row.get("acctId") or account_id),
                        symbol=symbol,
                        conid=conid,
                        quantity=float(row.get("position") or 0),
                        avg_cost=float(row.get("avgCost") or row.get("avgPrice") or 0),
                        market_price=_float_or_none(row.get("mktPrice")),
                        market_value=_float_or_none(row.get("mktValue")),
                        unrealized_pnl=_float_or_none(row.get("unrealizedPnl")),
                        realized_pnl=_float_or_none(row.get("realizedPnl")),
                        asset_class=str(row.get("assetClass") or "STK"),
                    )
                )
            if len(rows) < IB_POSITIONS_PAGE_SIZE:
                break
        return positions

    async def position(self, account_id: str, symbol: str) -> Position | None:
        """The stock position in `symbol` (option positions on it carry the same ticker; they are skipped)."""
        symbol = symbol.upper()
        return next(
            (p for p in await self.positions(account_id) if p.symbol == symbol and p.asset_class == "STK"), None
        )

    async def live_orders(self, *, max_age_s: float = 0.0) -> list[Order]:
        """Today's orders at the broker. IB allows one such call per 5 s: callers that can live with a
        slightly old list (risk checks) pass `max_age_s` and share the last answer."""
        now = time.monotonic()
        if self._live_orders is not None and now - self._live_orders[0] <= max_age_s:
            return self._live_orders[1]
        payload = await self.call(ib.LIVE_ORDERS, {})
        rows = payload.get("orders", []) if isinstance(payload, dict) else ib.unwrap_list(payload)
        orders = [self._order_from_row(row) for row in rows or []]
        self._live_orders = (time.monotonic(), orders)
        return orders

    async def find_order(self, client_order_id: str) -> Order | None:
        """The broker's order carrying this cOID, if IB has one (live orders include today's filled ones)."""
        return next((o for o in await self.live_orders() if o.client_order_id == client_order_id), None)

    async def order_status(self, order_id: str) -> Order:
        row = await self.call(ib.ORDER_STATUS, {"orderId": str(order_id)})
        side = str(row.get("side", "B"))
        return Order(
            order_id=str(row.get("order_id", order_id)),
            account_id=str(row.get("account", "")),
            symbol=str(row.get("symbol", "")),
            conid=int(row.get("conid") or 0),
            side="BUY" if side.upper().startswith("B") else "SELL",
            quantity=_float_or_none(row.get("total_size")) or 0.0,
            filled_quantity=_float_or_none(row.get("cum_fill")) or 0.0,
            order_type=str(row.get("order_type", "MKT")),
            limit_price=_float_or_none(row.get("limit_price")),
            avg_fill_price=_float_or_none(row.get("avg_price")),
            status=str(row.get("order_status", "Unknown")),
            client_order_id=row.get("order_ref") or row.get("cOID"),
        )

    async def cancel_order(self, account_id: str, order_id: str) -> None:
        self.require_order_tools()
        await self.call(ib.CANCEL_ORDER, {"accountId": account_id, "orderId": str(order_id)})

    async def place_order(self, ticket: OrderTicket) -> OrderAck:
        """Submit one order. Confirmation questions are answered only for message ids on the allow-list;
        any other question is declined and raised as OrderConfirmationRefused for the human to decide."""
        await self._session()
        self.require_order_tools()
        conid = await self._conid(ticket)
        placed, answered = await self._submit(ticket.account_id, [_order_payload(ticket, conid)])
        return _ack(placed[0], ticket, answered)

    async def place_bracket(self, bracket: BracketTicket) -> BracketAck:
        """Submit an entry with its stop-loss and take-profit as ONE request (IB's bracket: the children's
        parentId is the entry's cOID; they wait for the entry's fill and cancel each other). Confirmation
        questions are handled as in place_order. Raises BrokerError, sending nothing, when IB_MCP's order tool
        does not declare parentId (it would forward the children as free-standing orders)."""
        await self._session()
        self.require_order_tools()
        if not ib.accepts_brackets(self._place_order_schema):
            raise BrokerError(
                f"IB_MCP at {self.target_label} does not take bracket orders (its {ib.PLACE_ORDER} tool declares "
                "no list of orders with parentId); nothing was sent"
            )
        entry, stop_loss, take_profit = bracket.tickets
        conid = await self._conid(entry)
        orders = [
            _order_payload(entry, conid),
            _order_payload(stop_loss, conid, parent=entry.client_order_id),
            _order_payload(take_profit, conid, parent=entry.client_order_id),
        ]
        placed, answered = await self._submit(entry.account_id, orders)
        if len(placed) != len(orders):
            raise BrokerError(
                f"IB answered the bracket {entry.client_order_id} with {len(placed)} order id(s) for "
                f"{len(orders)} orders: {json.dumps(placed)[:300]}"
            )
        return BracketAck(
            entry=_ack(placed[0], entry, answered),
            stop_loss=_ack(placed[1], stop_loss, answered),
            take_profit=_ack(placed[2], take_profit, answered),
        )

    async def _conid(self, ticket: OrderTicket) -> int:
        return ticket.conid or (await self.resolve_conids([ticket.symbol]))[ticket.symbol.upper()]

    async def _submit(self, account_id: str, orders: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
        """POST the orders, then answer IB's confirmation questions (allow-list only) until it places them.
        Returns IB's rows with an order_id, in the order sent, and the message ids answered."""
        payload = await self.call(ib.PLACE_ORDER, {"accountId": account_id, "orders": orders})
        answered: list[str] = []
        for _ in range(MAX_CONFIRMATION_ROUNDS):
            rows = ib.unwrap_list(payload)
            placed = [r for r in rows if isinstance(r, dict) and "order_id" in r]
            if placed:
                return placed, answered
            question = next((r for r in rows if "id" in r and "message" in r), None)
            if question is None:
                raise BrokerError(f"IB answered the order with an unexpected payload: {json.dumps(payload)[:300]}")
            message_ids = [str(m) for m in question.get("messageIds") or []]
            text = " ".join(str(m) for m in question.get("message") or [])
            if not message_ids or not set(message_ids) <= self.reply_allow_list:
                with contextlib.suppress(BrokerError):  # declining is answered with an error object
                    await self.call(ib.REPLY, {"replyId": str(question["id"]), "confirmed": False})
                raise OrderConfirmationRefused(message_ids, text)
            answered.extend(message_ids)
            payload = await self.call(ib.REPLY, {"replyId": str(question["id"]), "confirmed": True})
        raise BrokerError(f"IB kept asking for confirmation after {MAX_CONFIRMATION_ROUNDS} answers: {answered}")

    def _order_from_row(self, row: dict[str, Any]) -> Order:
        conid = int(row.get("conid") or 0)
        side = str(row.get("side", "BUY")).upper()
        return Order(
            order_id=str(row.get("orderId")),
            account_id=str(row.get("acct", "")),
            symbol=str(row.get("ticker") or self._symbols.get(conid, conid)),
            conid=conid,
            side="BUY" if side.startswith("B") else "SELL",
            quantity=float(row.get("totalSize") or 0),
            filled_quantity=float(row.get("filledQuantity") or 0),
            order_type=str(row.get("orderType", "MKT")),
            limit_price=_float_or_none(row.get("price")),
            avg_fill_price=_float_or_none(row.get("avgPrice")),
            status=str(row.get("status", "Unknown")),
            client_order_id=row.get("order_ref") or row.get("cOID"),
        )


def _order_payload(ticket: OrderTicket, conid: int, parent: str | None = None) -> dict[str, Any]:
    return ib.order_payload(
        conid,
        ticket.side,
        ticket.quantity,
        ticket.order_type,
        ticket.limit_price,
        ticket.tif,
        ticket.outside_rth,
        ticket.client_order_id,
        stop_price=ticket.stop_price,
        parent_client_order_id=parent,
    )


def _ack(row: dict[str, Any], ticket: OrderTicket, answered: list[str]) -> OrderAck:
    return OrderAck(
        order_id=str(row["order_id"]),
        status=str(row.get("order_status", "Submitted")),
        client_order_id=ticket.client_order_id,
        confirmations_answered=list(answered),
    )


def _payload(result: Any) -> Any:
    if result.structured_content is not None:
        return result.structured_content
    texts = [block.text for block in result.content if getattr(block, "type", None) == "text"]
    text = "".join(texts)
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pick_us_stock(entries: Any) -> int | None:
    for entry in entries or []:
        if entry.get("assetClass", "STK") != "STK":
            continue
        contracts = entry.get("contracts") or []
        us = [c for c in contracts if c.get("isUS")] or contracts
        if us:
            return int(us[0]["conid"])
    return None


def _amount(summary: dict[str, Any], key: str) -> float | None:
    entry = summary.get(key)
    if isinstance(entry, dict):
        return _float_or_none(entry.get("amount"))
    return _float_or_none(entry)


def _float_or_none(value: Any) -> float | None:
    return ib.parse_ib_number(value) if value not in (None, "") else None


def _first_leaf(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
