"""The one place that knows IB_MCP's tool names and the gateway payload shapes behind them.

IB_MCP generates tool names from its FastAPI operation ids (cut at 56 characters) and passes the
Client Portal gateway's JSON through unchanged; a top-level JSON array reaches an MCP client wrapped
as ``{"result": [...]}``. See ../shared/ib_web_api.md for every shape used here.
"""

from __future__ import annotations

from typing import Any

STOCKS_BY_SYMBOL = "get_stocks_by_symbol_trsrv_stocks_get"
SEARCH_CONTRACT = "search_contract_by_symbol_or_name_iserver_secdef_search_"
SNAPSHOT = "get_marketdata_snapshot_iserver_marketdata_snapshot_get"
HISTORY = "get_marketdata_history_iserver_marketdata_history_get"
ACCOUNTS = "get_portfolio_accounts_portfolio_accounts_get"
POSITIONS = "get_positions_portfolio"
ACCOUNT_SUMMARY = "get_account_summary_portfolio"
PLACE_ORDER = "place_order_iserver_account"
PREVIEW_ORDER = "preview_order_iserver_account"
REPLY = "place_order_reply_iserver_reply"
LIVE_ORDERS = "get_live_orders_iserver_account_orders_get"
ORDER_STATUS = "get_order_status_iserver_account_order_status"
CANCEL_ORDER = "cancel_order_iserver_account"
TRADES = "get_trades_iserver_account_trades_get"
AUTH_STATUS = "get_auth_status_iserver_auth_status_get"
TICKLE = "tickle_tickle_get"

ORDER_TOOLS = (PLACE_ORDER, REPLY, LIVE_ORDERS, CANCEL_ORDER)
MARKET_DATA_TOOLS = (SNAPSHOT, STOCKS_BY_SYMBOL)
PORTFOLIO_TOOLS = (ACCOUNTS, POSITIONS)

FIELD_LAST = "31"
FIELD_SYMBOL = "55"
FIELD_BID = "84"
FIELD_ASK_SIZE = "85"
FIELD_ASK = "86"
FIELD_VOLUME = "87"
FIELD_BID_SIZE = "88"
FIELD_OPEN = "7295"
FIELD_PRIOR_CLOSE = "7296"
FIELD_AVAILABILITY = "6509"
SNAPSHOT_FIELDS = ",".join(
    (
        FIELD_LAST,
        FIELD_SYMBOL,
        FIELD_BID,
        FIELD_ASK,
        FIELD_VOLUME,
        FIELD_OPEN,
        FIELD_PRIOR_CLOSE,
        FIELD_AVAILABILITY,
    )
)

# Message ids of IB order-confirmation questions that are routine for a small stock order and may be
# answered "confirmed" without asking the human. Anything else stops the order (see BrokerClient).
#  o163: "price exceeds the percentage constraint" (limit far from market)
#  o354: "You are submitting an order without market data"
#  o383: "size exceeds the size limit" is NOT routine and is deliberately absent.
#  o10151/o10152/o10153: market-order / precautionary-setting notices
#  o2137: "cross-side order" notice when a working order exists on the other side
DEFAULT_REPLY_ALLOW_LIST = frozenset({"o163", "o354", "o10151", "o10152", "o10153", "o2137"})


def unwrap_list(payload: Any) -> list[Any]:
    """IB_MCP wraps a top-level array as {"result": [...]}; accept both forms."""
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict) and isinstance(payload.get("result"), list):
        return payload["result"]
    return []


def gateway_error(payload: Any) -> str | None:
    """The error text of IB_MCP's error object (returned as a *successful* tool result), else None."""
    if isinstance(payload, dict) and "error" in payload and payload.get("error"):
        detail = payload.get("detail")
        status = payload.get("status_code")
        parts = [str(payload["error"])]
        if status is not None:
            parts.append(f"HTTP {status}")
        if detail:
            parts.append(str(detail))
        return " - ".join(parts)
    return None


def is_throttled(payload: Any) -> bool:
    """IB's pacing refusal: HTTP 429, or "too many requests" in the error text."""
    if not isinstance(payload, dict):
        return False
    text = f"{payload.get('error', '')} {payload.get('detail', '')}".lower()
    return payload.get("status_code") == 429 or "too many requests" in text


def parse_ib_number(value: Any) -> float | None:
    """IB's string forms: '190.12', 'C190.12' (prior close), 'H190.12' (halted), '1.2K', '3.4M', ''."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip().replace(",", "")
    while text and text[0] in "CH":
        text = text[1:]
    if not text:
        return None
    scale = 1.0
    suffix = text[-1].upper()
    if suffix in "KMB":
        scale = {"K": 1e3, "M": 1e6, "B": 1e9}[suffix]
        text = text[:-1]
    try:
        return float(text) * scale
    except ValueError:
        return None


def snapshot_flags(row: dict[str, Any]) -> tuple[bool, bool]:
    """(halted, closed) from the prefixes IB puts on the last price."""
    last = str(row.get(FIELD_LAST, ""))
    return last.startswith("H"), last.startswith("C")


def order_payload(
    conid: int,
    side: str,
    quantity: float,
    order_type: str,
    limit_price: float | None,
    tif: str,
    outside_rth: bool,
    client_order_id: str,
    *,
    stop_price: float | None = None,
    parent_client_order_id: str | None = None,
) -> dict[str, Any]:
    """One order object as POST /iserver/account/{acct}/orders expects it (inside {"orders": [...]}).
    IB's `price` is the limit of a LMT and the trigger of a STP; a bracket's children carry their parent's
    cOID as `parentId`."""
    order: dict[str, Any] = {
        "conid": conid,
        "orderType": order_type,
        "side": side,
        "tif": tif,
        "quantity": float(quantity),
        "outsideRTH": outside_rth,
        "useAdaptive": False,
        "cOID": client_order_id,
    }
    price = stop_price if order_type == "STP" else limit_price
    if price is not None:
        order["price"] = price
    if parent_client_order_id is not None:
        order["parentId"] = parent_client_order_id
    return order


def accepts_brackets(place_order_schema: dict[str, Any] | None) -> bool:
    """Whether the place-order tool's input schema takes a list of orders that declare `parentId`.

    IB_MCP validates each order against its OrderModel and forwards only the declared fields: a tool whose
    orders lack `parentId` would send a bracket's children as free-standing orders, so that is "no".
    """
    if not place_order_schema:
        return False
    orders = (place_order_schema.get("properties") or {}).get("orders") or {}
    if orders.get("type") != "array":
        return False
    item = _resolve(place_order_schema, orders.get("items") or {})
    return "parentId" in (item.get("properties") or {})


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local "$ref" ("#/$defs/Name" or "#/definitions/Name") inside `schema`."""
    ref = node.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return node
    target: Any = schema
    for part in ref[2:].split("/"):
        target = target.get(part) if isinstance(target, dict) else None
    return target if isinstance(target, dict) else {}


# Option chains (IB_MCP's "Contract" and "Options Chains" tags). The chains tool calls /trsrv/secdef/chains,
# which the Client Portal gateway does not serve (404); chains are read with search -> strikes -> secdef info.
OPTION_CHAINS = "get_options_chains_trsrv_secdef_chains_get"
OPTION_STRIKES = "get_strikes_iserver_secdef_strikes_get"
SECDEF_INFO = "get_secdef_info_iserver_secdef_info_get"
