"""MarketSimulator: a deterministic, synchronous paper broker behind the simulated IB_MCP.

It owns the instruments, one price source per symbol (random walk or bar replay), one paper account, the
orders and executions, the gateway's pending confirmation questions and its snapshot subscriptions.
Nothing here knows MCP or the gateway's JSON shapes (see `gateway.py` and `server.py`).

    market = MarketSimulator(["AAPL", "TSLA"], seed=7)
    market.step()                              # every symbol moves one tick (or one replayed bar)
    market.set_price("AAPL", 150)              # jump a price; working limit and stop orders fill if crossed
    market.quote("AAPL").ask, market.cash(), market.positions(), market.orders

With `options=OptionSettings()` every stock also lists monthly calls and puts (see options.py), priced by
Black-Scholes from the underlying's last price and the clock; they trade, fill and count like stocks, times
their multiplier of 100.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from broker import black_scholes
from broker.sim.accounting import ZERO, Account, CommissionSchedule, cents
from broker.sim.errors import GatewayError
from broker.sim.faults import FaultPlan
from broker.sim.instruments import DEFAULT_SYMBOLS, Instrument, default_start_price, instrument_for
from broker.sim.options import OptionSettings, list_chain, years_to_expiry
from broker.sim.orders import (
    Accepted,
    Declined,
    Execution,
    OrderOutcome,
    OrderRequest,
    Question,
    SimOrder,
    parse_order_request,
    parse_order_ticket,
    question_text,
)
from broker.sim.prices import Bar, BarReplay, PriceSource, RandomWalk, WalkSettings, to_cents

DEFAULT_ACCOUNT_ID = "DU1234567"
DEFAULT_CASH_USD = Decimal("100000")
DEFAULT_SPREAD_USD = Decimal("0.02")
# One routine question for market orders, so that every client exercises the reply path.
DEFAULT_ORDER_QUESTIONS: dict[str, tuple[str, ...]] = {"MKT": ("o10151",)}
# Field 6509 as a paper account with live data shows it: R real time, p consolidated, B top of book.
DEFAULT_AVAILABILITY = "RpB"
FIRST_ORDER_ID = 1_000_000_001


@dataclass(frozen=True)
class StartingPosition:
    symbol: str
    quantity: Decimal
    avg_cost_usd: Decimal


@dataclass(frozen=True)
class SimQuote:
    symbol: str
    conid: int
    last: Decimal
    bid: Decimal
    ask: Decimal
    bid_size: int
    ask_size: int
    volume: int
    open: Decimal
    high: Decimal
    low: Decimal
    prior_close: Decimal
    halted: bool
    closed: bool


@dataclass(frozen=True)
class PositionView:
    account_id: str
    instrument: Instrument
    quantity: Decimal
    avg_cost: Decimal
    market_price: Decimal
    market_value: Decimal
    unrealized_pnl: Decimal
    realized_pnl: Decimal

    @property
    def symbol(self) -> str:
        return self.instrument.symbol


@dataclass(frozen=True)
class OrderPreview:
    request: OrderRequest
    price: Decimal
    amount: Decimal
    commission: Decimal
    position_before: Decimal
    equity_before: Decimal


@dataclass
class _PendingQuestion:
    account_id: str
    requests: tuple[OrderRequest, ...]
    remaining_message_ids: tuple[str, ...]


class MarketSimulator:
    def __init__(
        self,
        symbols: Iterable[str] | None = None,
        *,
        seed: int = 0,
        walks: Mapping[str, WalkSettings] | None = None,
        bars: Mapping[str, Sequence[Bar]] | None = None,
        account_id: str = DEFAULT_ACCOUNT_ID,
        cash_usd: Decimal | float | int = DEFAULT_CASH_USD,
        positions: Sequence[StartingPosition] = (),
        commission: CommissionSchedule | None = None,
        order_questions: Mapping[str, Sequence[str]] | None = None,
        spread_usd: Decimal | float = DEFAULT_SPREAD_USD,
        availability: str = DEFAULT_AVAILABILITY,
        advance_on_snapshot: bool = False,
        empty_first_snapshot: bool = False,
        clock: Callable[[], float] = time.time,
        options: OptionSettings | None = None,
    ) -> None:
        """A market for `symbols` (default: AAPL MSFT TSLA SPY NVDA QQQ, or only the replayed ones when `bars`
        is given) plus every symbol in `bars` and in the starting `positions`.

        Symbols in `bars` replay those bars; the others follow a random walk seeded by (`seed`, symbol),
        configured per symbol by `walks`. `order_questions` maps an order type (MKT, LMT) to the
        confirmation message ids asked, in turn, before an order of that type is accepted.
        `advance_on_snapshot` moves the market one step per snapshot call; `empty_first_snapshot`
        answers the first snapshot of each conid without price fields, as the real gateway does.
        `options` lists option chains on every symbol (none by default).
        """
        bars = {symbol.strip().upper(): list(recorded) for symbol, recorded in (bars or {}).items()}
        walks = {symbol.strip().upper(): settings for symbol, settings in (walks or {}).items()}
        if symbols is not None:
            wanted = [symbol.strip().upper() for symbol in symbols]
        else:
            wanted = [] if bars else list(DEFAULT_SYMBOLS)
        for extra in [*bars, *(position.symbol.strip().upper() for position in positions)]:
            if extra not in wanted:
                wanted.append(extra)
        if not wanted:
            wanted = list(DEFAULT_SYMBOLS)
        self._clock = clock
        self._instruments: dict[str, Instrument] = {}
        self._sources: dict[str, PriceSource] = {}
        for symbol in wanted:
            instrument = instrument_for(symbol)
            self._instruments[symbol] = instrument
            recorded = bars.get(symbol)
            if recorded:
                self._sources[symbol] = BarReplay(recorded)
            else:
                settings = walks.get(symbol, WalkSettings())
                start = settings.start_price_usd or default_start_price(symbol)
                interval_ms = settings.bar_interval_s * 1000
                # The walk's clock starts now, so that its history ends at the present like a real feed's.
                start_ms = self.now_ms() // interval_ms * interval_ms
                self._sources[symbol] = RandomWalk(start, settings, random.Random(f"{seed}:{symbol}"), start_ms)
        self._by_conid = {instrument.conid: instrument for instrument in self._instruments.values()}
        self.option_settings = options
        self._options: dict[int, Instrument] = {}
        if options is not None:
            today = datetime.fromtimestamp(self._clock(), UTC).date()
            for instrument in self._instruments.values():
                for contract in list_chain(instrument, self._sources[instrument.symbol].bar.close, today, options):
                    self._options.setdefault(contract.conid, contract)
        self._account = Account(account_id, cents(Decimal(str(cash_usd))))
        for position in positions:
            self._account.open_position(
                self._instrument(position.symbol), Decimal(str(position.quantity)), Decimal(str(position.avg_cost_usd))
            )
        self.commission = commission or CommissionSchedule()
        self.order_questions: dict[str, tuple[str, ...]] = {
            order_type.upper(): tuple(ids)
            for order_type, ids in (DEFAULT_ORDER_QUESTIONS if order_questions is None else order_questions).items()
        }
        self.spread_usd = Decimal(str(spread_usd))
        self.availability = availability
        self.advance_on_snapshot = advance_on_snapshot
        self.empty_first_snapshot = empty_first_snapshot
        self.halted_symbols: set[str] = set()
        self.market_closed = False
        self.faults = FaultPlan()
        self._id_rng = random.Random(f"{seed}:ids")
        self._orders: dict[int, SimOrder] = {}
        self._executions: list[Execution] = []
        self._questions: dict[str, _PendingQuestion] = {}
        self._registered_client_ids: set[str] = set()
        self._subscribed_conids: set[int] = set()
        self._next_order_id = FIRST_ORDER_ID
        self.steps = 0

    # --- instruments and prices -------------------------------------------------------------------

    @property
    def instruments(self) -> list[Instrument]:
        return list(self._instruments.values())

    @property
    def account_id(self) -> str:
        return self._account.account_id

    def instrument_by_conid(self, conid: int) -> Instrument | None:
        """A stock or a listed option."""
        return self._by_conid.get(conid) or self._options.get(conid)

    def option_chain(self, underlying: str) -> list[Instrument]:
        """Every listed option on `underlying` (empty when options are off)."""
        conid = self._instrument(underlying).conid
        return [option for option in self._options.values() if option.underlying_conid == conid]

    def instrument_by_symbol(self, symbol: str) -> Instrument | None:
        return self._instruments.get(symbol.strip().upper())

    def _instrument(self, symbol: str) -> Instrument:
        instrument = self.instrument_by_symbol(symbol)
        if instrument is None:
            raise KeyError(f"unknown symbol {symbol!r}; the simulator trades {', '.join(self._instruments)}")
        return instrument

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def quote(self, symbol: str) -> SimQuote:
        instrument = self._instrument(symbol)
        source = self._sources[instrument.symbol]
        bar, session = source.bar, source.session
        half_spread = cents(self.spread_usd / 2)
        # Displayed sizes vary with the bar's volume without consuming the price stream's random numbers.
        bid_size = 100 * (1 + bar.volume // 100 % 9)
        ask_size = 100 * (1 + bar.volume // 300 % 9)
        return SimQuote(
            symbol=instrument.symbol,
            conid=instrument.conid,
            last=bar.close,
            bid=to_cents(bar.close - half_spread),
            ask=bar.close + half_spread,
            bid_size=bid_size,
            ask_size=ask_size,
            volume=session.volume,
            open=session.open,
            high=session.high,
            low=session.low,
            prior_close=session.prior_close,
            halted=instrument.symbol in self.halted_symbols,
            closed=self.market_closed,
        )

    def quote_instrument(self, instrument: Instrument) -> SimQuote:
        """The quote of a stock, or of an option: Black-Scholes on the underlying's last price, now."""
        if instrument.sec_type != "OPT":
            return self.quote(instrument.symbol)
        assert instrument.expiry is not None and instrument.strike is not None and instrument.right is not None
        settings = self.option_settings or OptionSettings()
        underlying = self.quote(instrument.symbol)
        value = black_scholes.price(
            instrument.right,
            float(underlying.last),
            float(instrument.strike),
            years_to_expiry(instrument.expiry, self.now_ms()),
            settings.volatility_pct,
            settings.risk_free_rate_pct,
        )
        mid = to_cents(value)
        half_spread = cents(settings.spread_usd / 2)
        return SimQuote(
            symbol=instrument.symbol,
            conid=instrument.conid,
            last=mid,
            bid=to_cents(mid - half_spread),
            ask=mid + half_spread,
            bid_size=10,
            ask_size=10,
            volume=0,
            open=mid,
            high=mid,
            low=mid,
            prior_close=mid,
            halted=underlying.halted,
            closed=underlying.closed,
        )

    def history(self, symbol: str) -> list[Bar]:
        return self._sources[self._instrument(symbol).symbol].history()

    def step(self, n: int = 1) -> None:
        """Advance every symbol `n` ticks (or replayed bars), filling working orders the market crosses."""
        for _ in range(n):
            for source in self._sources.values():
                source.advance()
            self.steps += 1
            self._match_working_orders()

    def set_price(self, symbol: str, price: Decimal | float | str) -> None:
        """Jump a symbol's last price (bid/ask follow); working orders the new price crosses fill now."""
        self._sources[self._instrument(symbol).symbol].jump_to(to_cents(price))
        self._match_working_orders()

    def subscribe_snapshot(self, conid: int) -> bool:
        """Record a snapshot request; True the first time a conid is asked for (the gateway subscribes then)."""
        first = conid not in self._subscribed_conids
        self._subscribed_conids.add(conid)
        return first

    # --- account ----------------------------------------------------------------------------------

    def _check_account(self, account_id: str) -> None:
        if account_id != self._account.account_id:
            raise GatewayError(400, f"Account {account_id} is not a valid account for this session")

    def cash(self, account_id: str | None = None) -> Decimal:
        self._check_account(account_id or self.account_id)
        return self._account.cash

    def realized_pnl(self, account_id: str | None = None) -> Decimal:
        self._check_account(account_id or self.account_id)
        return self._account.realized_pnl

    def positions(self, account_id: str | None = None) -> list[PositionView]:
        """Open positions (non-zero quantity), marked to the last price."""
        self._check_account(account_id or self.account_id)
        views = []
        for holding in self._account.holdings.values():
            if holding.quantity == 0:
                continue
            price = self.quote_instrument(holding.instrument).last
            multiplier = holding.instrument.multiplier
            views.append(
                PositionView(
                    account_id=self._account.account_id,
                    instrument=holding.instrument,
                    quantity=holding.quantity,
                    avg_cost=holding.avg_cost,
                    market_price=price,
                    market_value=cents(holding.quantity * price * multiplier),
                    unrealized_pnl=cents(holding.quantity * (price - holding.avg_cost) * multiplier),
                    realized_pnl=holding.realized_pnl,
                )
            )
        return views

    def position(self, symbol: str, account_id: str | None = None) -> Decimal:
        """Shares held of `symbol` (0 when none; negative when short)."""
        conid = self._instrument(symbol).conid
        self._check_account(account_id or self.account_id)
        holding = self._account.holdings.get(conid)
        return holding.quantity if holding is not None else ZERO

    def net_liquidation(self, account_id: str | None = None) -> Decimal:
        return cents(self.cash(account_id) + sum((view.market_value for view in self.positions(account_id)), ZERO))

    # --- orders -----------------------------------------------------------------------------------

    @property
    def orders(self) -> list[SimOrder]:
        """Every order accepted this session, oldest first, with its current status."""
        return list(self._orders.values())

    @property
    def executions(self) -> list[Execution]:
        return list(self._executions)

    def order(self, order_id: int | str) -> SimOrder:
        try:
            return self._orders[int(order_id)]
        except (KeyError, ValueError) as exc:
            raise GatewayError(400, f"OrderID {order_id} doesn't exist") from exc

    def order_by_client_id(self, client_order_id: str) -> SimOrder | None:
        return next((order for order in self._orders.values() if order.client_order_id == client_order_id), None)

    def _instruments_by_conid(self) -> dict[int, Instrument]:
        return {**self._by_conid, **self._options}

    def _parse(self, account_id: str, tickets: Sequence[dict[str, object]]) -> tuple[OrderRequest, ...]:
        self._check_account(account_id)
        return parse_order_request([dict(ticket) for ticket in tickets], self._instruments_by_conid())

    def _check_client_order_ids(self, requests: Sequence[OrderRequest]) -> None:
        for request in requests:
            if request.client_order_id is not None and request.client_order_id in self._registered_client_ids:
                raise GatewayError(
                    400,
                    f"Order couldn't be submitted: Local order ID={request.client_order_id} is already registered.",
                )

    def _questions_for(self, requests: Sequence[OrderRequest]) -> tuple[str, ...]:
        """Each question the request's order types ask, once, in the order the orders come."""
        asked = (message_id for request in requests for message_id in self.order_questions.get(request.order_type, ()))
        return tuple(dict.fromkeys(asked))

    def submit_order(self, account_id: str, tickets: Sequence[dict[str, object]]) -> OrderOutcome:
        """POST /iserver/account/{acct}/orders: a confirmation question, or the accepted order(s)."""
        requests = self._parse(account_id, tickets)
        self._check_client_order_ids(requests)
        return self._ask_or_accept(account_id, requests, self._questions_for(requests))

    def reply(self, reply_id: str, confirmed: bool) -> OrderOutcome:
        """POST /iserver/reply/{reply_id}: answer a question; the next question, the order, or a decline."""
        pending = self._questions.pop(reply_id, None)
        if pending is None:
            raise GatewayError(400, f"Reply ID {reply_id} is not valid or has already been answered")
        if not confirmed:
            return Declined(reply_id)
        self._check_client_order_ids(pending.requests)
        return self._ask_or_accept(pending.account_id, pending.requests, pending.remaining_message_ids)

    def _ask_or_accept(
        self, account_id: str, requests: tuple[OrderRequest, ...], message_ids: Sequence[str]
    ) -> OrderOutcome:
        if message_ids:
            reply_id = str(uuid.UUID(int=self._id_rng.getrandbits(128), version=4))
            self._questions[reply_id] = _PendingQuestion(account_id, requests, tuple(message_ids[1:]))
            return Question(reply_id, message_ids[0], question_text(message_ids[0], requests[0]))
        parent = self._accept(account_id, requests[0], None)
        children = tuple(self._accept(account_id, request, parent) for request in requests[1:])
        return Accepted((parent, *children))

    def _accept(self, account_id: str, request: OrderRequest, parent: SimOrder | None) -> SimOrder:
        now_ms = self.now_ms()
        order = SimOrder(
            order_id=self._next_order_id,
            account_id=account_id,
            instrument=request.instrument,
            side=request.side,
            quantity=request.quantity,
            order_type=request.order_type,
            limit_price=request.limit_price,
            tif=request.tif,
            outside_rth=request.outside_rth,
            client_order_id=request.client_order_id,
            status=self._working_status(parent),
            submitted_ms=now_ms,
            last_update_ms=now_ms,
            stop_price=request.stop_price,
            parent_id=parent.order_id if parent is not None else None,
        )
        self._next_order_id += 1
        self._orders[order.order_id] = order
        if request.client_order_id is not None:
            self._registered_client_ids.add(request.client_order_id)
        if parent is not None and not parent.is_working and not parent.is_filled:
            self._set_status(order, "Cancelled")  # attached to an IOC parent that did not fill
            return order
        self._try_fill(order)
        if order.tif == "IOC" and order.is_working and not self._awaits_parent(order):
            self._cancel(order)
        return order

    def _working_status(self, parent: SimOrder | None) -> str:
        """PreSubmitted while the market is closed or the order waits for its parent's fill, else Submitted."""
        waiting = parent is not None and not parent.is_filled
        return "PreSubmitted" if self.market_closed or waiting else "Submitted"

    def _awaits_parent(self, order: SimOrder) -> bool:
        return order.parent_id is not None and not self._orders[order.parent_id].is_filled

    def _attached(self, order: SimOrder) -> list[SimOrder]:
        """The orders of `order`'s bracket other than itself: its children, or its parent's other children."""
        group = order.order_id if order.parent_id is None else order.parent_id
        return [other for other in self._orders.values() if other.parent_id == group and other is not order]

    def _cancel(self, order: SimOrder) -> None:
        """Cancel an order and, as IB does for a bracket, the working orders attached to it (a parent's
        children, or a child's siblings)."""
        self._set_status(order, "Cancelled")
        for other in self._attached(order):
            if other.is_working:
                self._set_status(other, "Cancelled")

    def cancel_order(self, account_id: str, order_id: int | str) -> SimOrder:
        """DELETE /iserver/account/{acct}/order/{id}: cancel a working order."""
        self._check_account(account_id)
        order = self.order(order_id)
        if not order.is_working:
            raise GatewayError(400, f"Order {order.order_id} is {order.status} and cannot be cancelled")
        self._cancel(order)
        return order

    def end_session(self) -> None:
        """The trading day ends: DAY orders still working expire (IB reports them Cancelled)."""
        for order in self._orders.values():
            if order.is_working and order.tif == "DAY":
                self._cancel(order)

    def preview(self, account_id: str, tickets: Sequence[dict[str, object]]) -> OrderPreview:
        """POST .../orders/whatif: what the order would cost now, without placing it."""
        self._check_account(account_id)
        if len(tickets) != 1:
            raise GatewayError(400, "Preview one order at a time (a what-if of a bracket is not simulated)")
        request = parse_order_ticket(dict(tickets[0]), self._instruments_by_conid())
        quote = self.quote_instrument(request.instrument)
        market_side = quote.ask if request.side == "BUY" else quote.bid
        price = request.limit_price or request.stop_price or market_side
        return OrderPreview(
            request=request,
            price=price,
            amount=cents(request.quantity * price * request.instrument.multiplier),
            commission=self._commission(request.instrument, request.quantity, price),
            position_before=self._held(request.instrument),
            equity_before=self.net_liquidation(account_id),
        )

    def _commission(self, instrument: Instrument, quantity: Decimal, price: Decimal) -> Decimal:
        if instrument.sec_type == "OPT":
            return self.commission.option_commission(quantity)
        return self.commission.commission(quantity, price)

    def _held(self, instrument: Instrument) -> Decimal:
        holding = self._account.holdings.get(instrument.conid)
        return holding.quantity if holding is not None else ZERO

    def _set_status(self, order: SimOrder, status: str) -> None:
        order.status = status
        order.last_update_ms = self.now_ms()

    def _fill_price(self, order: SimOrder) -> Decimal | None:
        """Where the order fills now, or None. A stop triggers when the last price reaches it, then fills as a
        market order (so a gap through the stop fills at the new price)."""
        quote = self.quote_instrument(order.instrument)
        if quote.halted or quote.closed or self._awaits_parent(order):
            return None
        buying = order.side == "BUY"
        if order.stop_price is not None:
            triggered = quote.last >= order.stop_price if buying else quote.last <= order.stop_price
            return (quote.ask if buying else quote.bid) if triggered else None
        if buying:
            crossed = order.limit_price is None or quote.ask <= order.limit_price
            return quote.ask if crossed else None
        crossed = order.limit_price is None or quote.bid >= order.limit_price
        return quote.bid if crossed else None

    def _try_fill(self, order: SimOrder) -> None:
        price = self._fill_price(order)
        if price is None:
            return
        quantity = order.remaining_quantity
        commission = self._commission(order.instrument, quantity, price)
        realized = self._account.apply_fill(order.instrument, order.side, quantity, price, commission)
        now_ms = self.now_ms()
        self._executions.append(
            Execution(
                execution_id=f"0000{len(self._executions) + 1:04x}.{order.order_id:08x}.01.01",
                order_id=order.order_id,
                account_id=order.account_id,
                instrument=order.instrument,
                side=order.side,
                quantity=quantity,
                price=price,
                commission=commission,
                realized_pnl=realized,
                ts_ms=now_ms,
                client_order_id=order.client_order_id,
            )
        )
        order.filled_quantity = order.quantity
        order.avg_fill_price = price
        self._set_status(order, "Filled")
        for other in self._attached(order):
            if not other.is_working:
                continue
            if order.parent_id is None:
                self._set_status(other, self._working_status(None))  # the parent filled: its children work
            else:
                self._set_status(other, "Cancelled")  # one-cancels-all: a sibling filled

    def _match_working_orders(self) -> None:
        for order in list(self._orders.values()):
            if order.is_working:
                self._try_fill(order)
