"""The Client Portal gateway's JSON shapes, built from the simulator's state (see ../shared/ib_web_api.md).

Each function answers one gateway endpoint the way the real gateway does: snapshot values are strings keyed
by field code, most other numbers are JSON numbers, money is rounded to the cent.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from broker.sim.errors import GatewayError
from broker.sim.instruments import Instrument
from broker.sim.market import MarketSimulator, OrderPreview, PositionView, SimQuote
from broker.sim.options import OPTION_EXCHANGES, month_code, occ_symbol
from broker.sim.orders import Accepted, Declined, Execution, OrderOutcome, SimOrder
from broker.sim.prices import Bar

POSITIONS_PAGE_SIZE = 100
HISTORY_MAX_POINTS = 1000
SERVER_INFO = {"serverName": "SimGateway", "serverVersion": "Build 10.30.1a, simulated"}
_DURATION = re.compile(r"^\s*(\d+)\s*([A-Za-z]+)\s*$")
_UNIT_SECONDS: dict[str, int] = {
    **dict.fromkeys(("s", "sec", "secs"), 1),
    **dict.fromkeys(("min", "mins"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3_600),
    **dict.fromkeys(("d", "day", "days"), 86_400),
    **dict.fromkeys(("w", "wk", "wks", "week", "weeks"), 604_800),
    # IB's "m" is a month ("1min" is a minute); "M" is accepted as a month too.
    **dict.fromkeys(("m", "M", "mo", "month", "months"), 2_592_000),
    **dict.fromkeys(("y", "yr", "yrs", "year", "years"), 31_536_000),
}


def _money(value: Decimal) -> float:
    return float(value.quantize(Decimal("0.01")))


def _price_text(value: Decimal) -> str:
    return f"{value:.2f}"


def _quantity(value: Decimal) -> float:
    return float(value)


def _stamp(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y%m%d-%H:%M:%S")


def _compact_volume(volume: int) -> str:
    """IB's display form of a volume: 950, 45.6K, 1.23M."""
    for scale, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "K")):
        if volume >= scale:
            return f"{volume / scale:.3g}{suffix}"
    return str(volume)


# --- contracts ------------------------------------------------------------------------------------


def search_results(market: MarketSimulator, symbol: str, by_name: bool, sec_type: str | None) -> list[dict[str, Any]]:
    """GET /iserver/secdef/search: exact symbol match, or company-name substring when `by_name`."""
    if sec_type and sec_type.upper() != "STK":
        return []
    wanted = symbol.strip().upper()
    matches = [
        instrument
        for instrument in market.instruments
        if (wanted in instrument.name.upper() if by_name else instrument.symbol == wanted)
    ]
    return [
        {
            "conid": str(instrument.conid),
            "companyHeader": f"{instrument.name} - {instrument.exchange}",
            "companyName": instrument.name,
            "symbol": instrument.symbol,
            "description": instrument.exchange,
            "restricted": None,
            "fop": None,
            "opt": None,
            "war": None,
            "sections": _sections(market, instrument),
        }
        for instrument in matches
    ]


def _sections(market: MarketSimulator, instrument: Instrument) -> list[dict[str, Any]]:
    """The stock section, and an OPT section with the expiry months when the stock has listed options."""
    sections: list[dict[str, Any]] = [{"secType": instrument.sec_type}]
    months = _option_months(market, instrument)
    if months:
        sections.append({"secType": "OPT", "months": ";".join(months), "exchange": OPTION_EXCHANGES})
    return sections


def _option_months(market: MarketSimulator, instrument: Instrument) -> list[str]:
    expiries = sorted({option.expiry for option in market.option_chain(instrument.symbol) if option.expiry})
    return [month_code(expiry) for expiry in expiries]


def _underlying(market: MarketSimulator, conid: str | int) -> Instrument:
    try:
        instrument = market.instrument_by_conid(int(str(conid).strip()))
    except ValueError as exc:
        raise GatewayError(400, f"Invalid conid: {conid!r}") from exc
    if instrument is None or instrument.sec_type != "STK":
        raise GatewayError(400, f"No underlying contract found for conid {conid}")
    return instrument


def _check_option_sec_type(sec_type: str) -> None:
    if sec_type.strip().upper() != "OPT":
        raise GatewayError(400, f"secType {sec_type!r} is not supported here (use OPT)")


def option_strikes(market: MarketSimulator, conid: str | int, sec_type: str, month: str) -> dict[str, Any]:
    """GET /iserver/secdef/strikes: {"call": [...], "put": [...]} strikes of one expiry month (e.g. JAN26)."""
    _check_option_sec_type(sec_type)
    underlying = _underlying(market, conid)
    wanted = month.strip().upper()
    in_month = [o for o in market.option_chain(underlying.symbol) if o.expiry and month_code(o.expiry) == wanted]
    return {
        "call": sorted(float(o.strike) for o in in_month if o.right == "C" and o.strike is not None),
        "put": sorted(float(o.strike) for o in in_month if o.right == "P" and o.strike is not None),
    }


def secdef_info(
    market: MarketSimulator,
    conid: str,
    sec_type: str,
    month: str | None,
    strike: float | None,
    right: str | None,
) -> list[dict[str, Any]]:
    """GET /iserver/secdef/info: the option contracts of an underlying matching month, strike and right."""
    _check_option_sec_type(sec_type)
    underlying = _underlying(market, conid)
    matches = [
        option
        for option in market.option_chain(underlying.symbol)
        if option.expiry is not None
        and option.strike is not None
        and (not month or month_code(option.expiry) == month.strip().upper())
        and (strike is None or float(option.strike) == float(strike))
        and (not right or option.right == right.strip().upper()[:1])
    ]
    matches.sort(key=lambda option: (option.expiry, option.strike, option.right))
    return [_option_info(option, underlying) for option in matches]


def _option_info(option: Instrument, underlying: Instrument) -> dict[str, Any]:
    assert option.expiry is not None and option.strike is not None and option.right is not None
    return {
        "conid": option.conid,
        "ticker": underlying.symbol,
        "secType": "OPT",
        "listingExchange": None,
        "exchange": option.exchange,
        "companyName": underlying.name,
        "currency": option.currency,
        "validExchanges": OPTION_EXCHANGES.replace(";", ","),
        "priceRendering": None,
        "maturityDate": f"{option.expiry:%Y%m%d}",
        "right": option.right,
        "strike": float(option.strike),
        "multiplier": str(option.multiplier),
        "tradingClass": underlying.symbol,
        "desc1": underlying.symbol,
        "desc2": f"{option.expiry:%b %d '%y} {option.strike.normalize():f} {'Call' if option.right == 'C' else 'Put'}",
        "localSymbol": occ_symbol(underlying.symbol, option.expiry, option.strike, option.right),
        "underlyingConid": underlying.conid,
    }


def options_chains_not_found(symbol: str) -> dict[str, Any]:
    """GET /trsrv/secdef/chains: IB_MCP lists a tool for it, but the Client Portal gateway has no such
    endpoint and answers 404; the simulator answers the same (use search -> strikes -> secdef info)."""
    raise GatewayError(404, f"Not Found: /trsrv/secdef/chains?symbol={symbol}")


def stocks_by_symbol(market: MarketSimulator, symbols: str) -> dict[str, Any]:
    """GET /trsrv/stocks: symbol -> [{name, assetClass, contracts: [{conid, exchange, isUS}]}]."""
    answer: dict[str, Any] = {}
    for raw in symbols.split(","):
        symbol = raw.strip().upper()
        if not symbol:
            continue
        instrument = market.instrument_by_symbol(symbol)
        answer[symbol] = (
            []
            if instrument is None
            else [
                {
                    "name": instrument.name,
                    "chineseName": None,
                    "assetClass": instrument.sec_type,
                    "contracts": [{"conid": instrument.conid, "exchange": instrument.exchange, "isUS": True}],
                }
            ]
        )
    return answer


# --- market data ----------------------------------------------------------------------------------


def _field_values(quote: SimQuote, instrument: Instrument, availability: str) -> dict[str, str]:
    prefix = "H" if quote.halted else "C" if quote.closed else ""
    change = quote.last - quote.prior_close
    change_pct = change / quote.prior_close * 100 if quote.prior_close else Decimal(0)
    return {
        "31": f"{prefix}{_price_text(quote.last)}",
        "55": instrument.symbol,
        "70": _price_text(quote.high),
        "71": _price_text(quote.low),
        "82": f"{change:+.2f}",
        "83": f"{change_pct:+.2f}%",
        "84": _price_text(quote.bid),
        "85": str(quote.ask_size),
        "86": _price_text(quote.ask),
        "87": _compact_volume(quote.volume),
        "88": str(quote.bid_size),
        "6070": instrument.sec_type,
        "6509": availability,
        "7051": instrument.name,
        "7295": _price_text(quote.open),
        "7296": _price_text(quote.prior_close),
        "7741": _price_text(quote.prior_close),
    }


def snapshot_rows(market: MarketSimulator, conids: str, fields: str) -> list[dict[str, Any]]:
    """GET /iserver/marketdata/snapshot: one row per conid, requested fields as strings keyed by code."""
    try:
        ids = [int(part.split("@", 1)[0]) for part in conids.split(",") if part.strip()]
    except ValueError as exc:
        raise GatewayError(400, f"Invalid conids: {conids!r}") from exc
    if not ids:
        raise GatewayError(400, "conids is required")
    wanted = [code.strip() for code in fields.split(",") if code.strip()]
    if market.advance_on_snapshot:
        market.step()
    now_ms = market.now_ms()
    rows = []
    for conid in ids:
        first_request = market.subscribe_snapshot(conid)
        row: dict[str, Any] = {"conid": conid, "conidEx": str(conid), "_updated": now_ms, "server_id": "q0"}
        instrument = market.instrument_by_conid(conid)
        if instrument is not None and not (first_request and market.empty_first_snapshot):
            quote = market.quote_instrument(instrument)
            values = _field_values(quote, instrument, market.availability)
            row.update({code: values[code] for code in wanted if code in values})
            if "87" in wanted:
                row["87_raw"] = float(quote.volume)
            row["6119"] = "q0"
        rows.append(row)
    return rows


def _seconds(text: str, what: str) -> int:
    match = _DURATION.match(text)
    if match is not None:
        count, unit = int(match.group(1)), match.group(2)
        unit_seconds = _UNIT_SECONDS.get(unit, _UNIT_SECONDS.get(unit.lower()))
        if unit_seconds is not None and count > 0:
            return count * unit_seconds
    raise GatewayError(400, f"Invalid {what} {text!r} (examples: 30min, 1h, 1d, 1w, 1m for a month, 1y)")


def _aggregate(bars: list[Bar], bar_ms: int | None) -> list[Bar]:
    if bar_ms is None:
        return bars
    buckets: dict[int, list[Bar]] = {}
    for bar in bars:
        buckets.setdefault(bar.ts_ms // bar_ms, []).append(bar)
    return [
        Bar(
            ts_ms=group[0].ts_ms,
            open=group[0].open,
            high=max(bar.high for bar in group),
            low=min(bar.low for bar in group),
            close=group[-1].close,
            volume=sum(bar.volume for bar in group),
        )
        for group in buckets.values()
    ]


def history(market: MarketSimulator, conid: str, period: str, bar: str | None, outside_rth: bool) -> dict[str, Any]:
    """GET /iserver/marketdata/history: OHLCV bars up to now over `period`, aggregated to `bar` size."""
    try:
        instrument = market.instrument_by_conid(int(conid))
    except ValueError as exc:
        raise GatewayError(400, f"Invalid conid {conid!r}") from exc
    if instrument is None:
        raise GatewayError(400, f"No market data history for conid {conid}")
    period_ms = _seconds(period, "period") * 1000
    bar_ms = _seconds(bar, "bar") * 1000 if bar else None
    bars = market.history(instrument.symbol)
    cutoff_ms = bars[-1].ts_ms - period_ms
    recent = [candle for candle in bars if candle.ts_ms > cutoff_ms]
    data = _aggregate(recent, bar_ms)[-HISTORY_MAX_POINTS:]
    bar_length_s = bar_ms // 1000 if bar_ms else (data[1].ts_ms - data[0].ts_ms) // 1000 if len(data) > 1 else 0
    return {
        "serverId": "sim",
        "symbol": instrument.symbol,
        "text": instrument.name,
        "priceFactor": 100,
        "startTime": _stamp(data[0].ts_ms),
        "timePeriod": period,
        "barLength": bar_length_s,
        "mdAvailability": "S",
        "mktDataDelay": 0,
        "outsideRth": outside_rth,
        "volumeFactor": 1,
        "data": [
            {
                "o": float(candle.open),
                "c": float(candle.close),
                "h": float(candle.high),
                "l": float(candle.low),
                "v": float(candle.volume),
                "t": candle.ts_ms,
            }
            for candle in data
        ],
        "points": len(data),
    }


# --- portfolio ------------------------------------------------------------------------------------


def accounts(market: MarketSimulator) -> list[dict[str, Any]]:
    """GET /portfolio/accounts."""
    account_id = market.account_id
    return [
        {
            "id": account_id,
            "accountId": account_id,
            "accountVan": account_id,
            "accountTitle": "Simulated Paper Account",
            "displayName": account_id,
            "accountAlias": None,
            "accountStatus": market.now_ms(),
            "currency": "USD",
            "type": "DEMO",
            "tradingType": "STKNOPT",
            "faclient": False,
            "clearingStatus": "O",
            "covestor": False,
            "parent": {"mmc": [], "accountId": "", "isMParent": False, "isMChild": False, "isMultiplex": False},
            "desc": account_id,
        }
    ]


def positions_page(market: MarketSimulator, account_id: str, page_id: int) -> list[dict[str, Any]]:
    """GET /portfolio/{acct}/positions/{pageId}: pages of 100, [] past the end."""
    views = market.positions(account_id)
    page = views[page_id * POSITIONS_PAGE_SIZE : (page_id + 1) * POSITIONS_PAGE_SIZE] if page_id >= 0 else []
    return [_position_row(view) for view in page]


def _position_row(view: PositionView) -> dict[str, Any]:
    """One position. For an option, as IB shows it: ticker is the underlying, contractDesc the contract,
    avgCost per contract (x multiplier), avgPrice and mktPrice per share."""
    instrument = view.instrument
    row = {
        "acctId": view.account_id,
        "conid": view.instrument.conid,
        "contractDesc": instrument.name if instrument.sec_type == "OPT" else view.symbol,
        "position": _quantity(view.quantity),
        "mktPrice": float(view.market_price),
        "mktValue": _money(view.market_value),
        "currency": view.instrument.currency,
        "avgCost": float(view.avg_cost * instrument.multiplier),
        "avgPrice": float(view.avg_cost),
        "realizedPnl": _money(view.realized_pnl),
        "unrealizedPnl": _money(view.unrealized_pnl),
        "assetClass": view.instrument.sec_type,
        "ticker": view.symbol,
        "name": view.instrument.name,
        "listingExchange": view.instrument.exchange,
        "countryCode": "US",
        "isUS": True,
    }
    if instrument.sec_type == "OPT":
        assert instrument.expiry is not None and instrument.strike is not None
        row |= {
            "undConid": instrument.underlying_conid,
            "putOrCall": instrument.right,
            "strike": f"{instrument.strike.normalize():f}",
            "expiry": f"{instrument.expiry:%Y%m%d}",
            "multiplier": float(instrument.multiplier),
            "name": instrument.symbol,
        }
    return row


def _summary_value(amount: Decimal, timestamp_ms: int) -> dict[str, Any]:
    return {
        "amount": _money(amount),
        "currency": "USD",
        "isNull": False,
        "timestamp": timestamp_ms,
        "value": None,
        "severity": 0,
    }


def account_summary(market: MarketSimulator, account_id: str) -> dict[str, Any]:
    """GET /portfolio/{acct}/summary. A cash account: available funds and buying power are the cash."""
    cash = market.cash(account_id)
    gross = sum((abs(view.market_value) for view in market.positions(account_id)), Decimal(0))
    net = market.net_liquidation(account_id)
    available = max(cash, Decimal(0))
    now_ms = market.now_ms()
    amounts = {
        "netliquidation": net,
        "equitywithloanvalue": net,
        "totalcashvalue": cash,
        "settledcash": cash,
        "availablefunds": available,
        "excessliquidity": available,
        "buyingpower": available,
        "grosspositionvalue": gross,
        "initmarginreq": Decimal(0),
        "maintmarginreq": Decimal(0),
    }
    summary = {key: _summary_value(amount, now_ms) for key, amount in amounts.items()}
    summary["accountcode"] = {**_summary_value(Decimal(0), now_ms), "currency": None, "value": account_id}
    summary["accounttype"] = {**_summary_value(Decimal(0), now_ms), "currency": None, "value": "INDIVIDUAL"}
    return summary


def ledger(market: MarketSimulator, account_id: str) -> dict[str, Any]:
    """GET /portfolio/{acct}/ledger: the USD ledger, and BASE (the same, USD being the base currency)."""
    views = market.positions(account_id)
    entry = {
        "currency": "USD",
        "secondkey": "USD",
        "acctcode": account_id,
        "cashbalance": _money(market.cash(account_id)),
        "settledcash": _money(market.cash(account_id)),
        "netliquidationvalue": _money(market.net_liquidation(account_id)),
        "stockmarketvalue": _money(sum((view.market_value for view in views), Decimal(0))),
        "unrealizedpnl": _money(sum((view.unrealized_pnl for view in views), Decimal(0))),
        "realizedpnl": _money(market.realized_pnl(account_id)),
        "exchangerate": 1,
        "interest": 0.0,
        "dividends": 0.0,
        "key": "LedgerList",
        "timestamp": market.now_ms() // 1000,
        "severity": 0,
    }
    return {"USD": entry, "BASE": {**entry, "currency": "BASE", "secondkey": "BASE"}}


# --- orders ---------------------------------------------------------------------------------------


def order_answer(outcome: OrderOutcome) -> list[dict[str, Any]] | dict[str, Any]:
    """The answer to place-order and reply: a question, the accepted order, or the decline."""
    if isinstance(outcome, Accepted):
        return [
            {"order_id": str(order.order_id), "order_status": order.status, "encrypt_message": "1"}
            for order in outcome.orders
        ]
    if isinstance(outcome, Declined):
        return {"error": f"Reply {outcome.reply_id} was not confirmed: the order was not submitted."}
    return [
        {
            "id": outcome.reply_id,
            "message": [outcome.message],
            "isSuppressed": False,
            "messageIds": [outcome.message_id],
        }
    ]


def _amount_text(value: Decimal) -> str:
    return f"{value:,.2f} USD"


def preview(result: OrderPreview) -> dict[str, Any]:
    """POST /iserver/account/{acct}/orders/whatif."""
    request = result.request
    signed = request.quantity if request.side == "BUY" else -request.quantity
    equity_change = -result.commission
    position_after = result.position_before + signed
    return {
        "amount": {
            "amount": _amount_text(result.amount),
            "commission": _amount_text(result.commission),
            "total": _amount_text(
                result.amount + result.commission if signed > 0 else result.amount - result.commission
            ),
        },
        "equity": {
            "current": f"{result.equity_before:,.2f}",
            "change": f"{equity_change:,.2f}",
            "after": f"{result.equity_before + equity_change:,.2f}",
        },
        "initial": {"current": "0.00", "change": "0.00", "after": "0.00"},
        "maintenance": {"current": "0.00", "change": "0.00", "after": "0.00"},
        "position": {
            "current": f"{result.position_before.normalize():f}",
            "change": f"{signed.normalize():f}",
            "after": f"{position_after.normalize():f}",
        },
        "warn": None,
        "error": None,
    }


_ORDER_TYPE_NAMES = {"MKT": ("Market", "MARKET"), "LMT": ("Limit", "LIMIT"), "STP": ("Stop", "STOP")}


def _order_description(order: SimOrder) -> str:
    verb = "Buy" if order.side == "BUY" else "Sell"
    if order.stop_price is not None:
        kind = f"Stop {order.stop_price:.2f}"
    else:
        kind = "Market" if order.limit_price is None else f"Limit {order.limit_price:.2f}"
    tif = {"DAY": "Day", "GTC": "GTC", "IOC": "IOC"}[order.tif]
    return f"{verb} {order.quantity.normalize():f} {kind}, {tif}"


def _live_order(order: SimOrder) -> dict[str, Any]:
    return {
        "acct": order.account_id,
        "conidex": str(order.instrument.conid),
        "conid": order.instrument.conid,
        "account": order.account_id,
        "orderId": order.order_id,
        "cashCcy": order.instrument.currency,
        "sizeAndFills": f"{order.filled_quantity.normalize():f}/{order.quantity.normalize():f}",
        "orderDesc": _order_description(order),
        "description1": order.symbol,
        "ticker": order.symbol,
        "secType": order.instrument.sec_type,
        "listingExchange": order.instrument.listing_exchange,
        "companyName": order.instrument.name,
        "side": order.side,
        "orderType": _ORDER_TYPE_NAMES[order.order_type][0],
        "origOrderType": _ORDER_TYPE_NAMES[order.order_type][1],
        "totalSize": _quantity(order.quantity),
        "filledQuantity": _quantity(order.filled_quantity),
        "remainingQuantity": _quantity(order.remaining_quantity),
        "price": float(order.limit_price) if order.limit_price is not None else None,
        "auxPrice": float(order.stop_price) if order.stop_price is not None else None,
        "avgPrice": float(order.avg_fill_price) if order.avg_fill_price is not None else None,
        "status": order.status,
        "order_ccp_status": order.status,
        "timeInForce": order.tif,
        "outsideRTH": order.outside_rth,
        "lastExecutionTime": _stamp(order.last_update_ms)[2:].replace("-", "").replace(":", ""),
        "lastExecutionTime_r": order.last_update_ms,
        "order_ref": order.client_order_id,
    }


def live_orders(market: MarketSimulator, filters: str | None) -> dict[str, Any]:
    """GET /iserver/account/orders: this session's orders, optionally filtered by status / sorted by time."""
    wanted = {part.strip().lower() for part in (filters or "").split(",") if part.strip()}
    sort_by_time = "sortbytime" in wanted
    statuses = wanted - {"sortbytime"}
    orders = [order for order in market.orders if not statuses or order.status.lower() in statuses]
    if sort_by_time:
        orders.sort(key=lambda order: order.last_update_ms, reverse=True)
    return {"orders": [_live_order(order) for order in orders], "snapshot": True}


def order_status(order: SimOrder) -> dict[str, Any]:
    """GET /iserver/account/order/status/{orderId}."""
    return {
        "order_id": order.order_id,
        "conid": order.instrument.conid,
        "conidex": str(order.instrument.conid),
        "symbol": order.symbol,
        "side": "B" if order.side == "BUY" else "S",
        "contract_description_1": order.symbol,
        "listing_exchange": order.instrument.listing_exchange,
        "company_name": order.instrument.name,
        "account": order.account_id,
        "currency": order.instrument.currency,
        "sec_type": order.instrument.sec_type,
        "order_status": order.status,
        "order_type": order.order_type,
        "total_size": f"{order.quantity:.1f}",
        "size": f"{order.remaining_quantity:.1f}",
        "cum_fill": f"{order.filled_quantity:.1f}",
        "avg_price": f"{order.avg_fill_price:.2f}" if order.avg_fill_price is not None else "",
        "limit_price": f"{order.limit_price:.2f}" if order.limit_price is not None else "",
        "stop_price": f"{order.stop_price:.2f}" if order.stop_price is not None else "",
        "tif": order.tif,
        "outside_rth": order.outside_rth,
        "order_description": _order_description(order),
        "size_and_fills": f"{order.filled_quantity.normalize():f}/{order.quantity.normalize():f}",
        "order_ref": order.client_order_id,
        "cannot_cancel_order": not order.is_working,
    }


def cancel_answer(order: SimOrder) -> dict[str, Any]:
    """DELETE /iserver/account/{acct}/order/{orderId}."""
    return {"msg": "Request was submitted", "order_id": order.order_id, "conid": -1, "account": None}


def _trade(execution: Execution) -> dict[str, Any]:
    verb = "Bot" if execution.side == "BUY" else "Sld"
    signed_value = execution.quantity * execution.price
    net = -signed_value - execution.commission if execution.side == "BUY" else signed_value - execution.commission
    return {
        "execution_id": execution.execution_id,
        "symbol": execution.instrument.symbol,
        "side": "B" if execution.side == "BUY" else "S",
        "order_description": f"{verb} {execution.quantity.normalize():f} @ {execution.price:.2f} on ISLAND",
        "trade_time": _stamp(execution.ts_ms),
        "trade_time_r": execution.ts_ms,
        "size": _quantity(execution.quantity),
        "price": _price_text(execution.price),
        "order_ref": execution.client_order_id,
        "order_id": execution.order_id,
        "exchange": "ISLAND",
        "commission": _price_text(execution.commission),
        "net_amount": _money(net),
        "account": execution.account_id,
        "accountCode": execution.account_id,
        "company_name": execution.instrument.name,
        "contract_description_1": execution.instrument.symbol,
        "sec_type": execution.instrument.sec_type,
        "listing_exchange": execution.instrument.listing_exchange,
        "conid": execution.instrument.conid,
        "conidEx": str(execution.instrument.conid),
        "clearing_id": "IB",
        "clearing_name": "IB",
        "liquidation_trade": "0",
    }


def trades(market: MarketSimulator, days: str | None) -> list[dict[str, Any]]:
    """GET /iserver/account/trades: executions of the last `days` days (1 to 7; default today)."""
    try:
        window_days = min(max(int(days), 1), 7) if days else 1
    except ValueError as exc:
        raise GatewayError(400, f"Invalid days {days!r}: use a number from 1 to 7") from exc
    cutoff_ms = market.now_ms() - window_days * 86_400_000
    return [_trade(execution) for execution in market.executions if execution.ts_ms >= cutoff_ms]


# --- session --------------------------------------------------------------------------------------


def auth_status(authenticated: bool) -> dict[str, Any]:
    """GET /iserver/auth/status."""
    return {
        "authenticated": authenticated,
        "competing": False,
        "connected": True,
        "message": "" if authenticated else "Session expired: log in again through the gateway",
        "MAC": "02:00:00:00:00:01",
        "serverInfo": SERVER_INFO,
        "fail": "",
    }


def tickle(authenticated: bool) -> dict[str, Any]:
    """GET /tickle."""
    return {
        "session": "5f1c0ffee0ddba11c0ffee0ddba11sim",
        "ssoExpires": 540_000,
        "collission": False,
        "userId": 1,
        "iserver": {"authStatus": auth_status(authenticated)},
    }
