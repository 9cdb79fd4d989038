"""Option chains and option quotes through IB_MCP, the way the Client Portal gateway serves them.

The gateway has no one-call chain (IB_MCP's `get_options_chains_trsrv_secdef_chains_get` asks for
/trsrv/secdef/chains, which answers 404), so a chain is read in IBKR's documented three steps:
search (the OPT section lists the expiry months, e.g. "JAN26;FEB26") -> strikes of a month
({"call": [...], "put": [...]}) -> secdef info for one month, strike and right (the contract's conid,
maturity date and multiplier). Option quotes come from the same snapshot call as stock quotes.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, time
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from broker import ib_mcp_tools as ib
from broker.client import BrokerClient
from broker.errors import BrokerError, UnknownSymbol

OptionRight = Literal["C", "P"]
NEW_YORK = ZoneInfo("America/New_York")
# US equity options stop trading at the 16:00 New York close of their expiry day.
EXPIRY_CLOSE = time(16, 0)


def new_york_date(moment: datetime) -> date:
    """The New York calendar date of an aware `moment`: the day option expiries are counted in."""
    return moment.astimezone(NEW_YORK).date()


def option_label(underlying: str, expiry: str, strike: float, right: str) -> str:
    """One contract as a person reads it: "AAPL 20260116 200 C" (expiry YYYYMMDD)."""
    return f"{underlying.upper()} {expiry} {strike:g} {right}"


class OptionChainMonths(BaseModel):
    """The underlying's conid and its option expiry months in IB's MMMYY form, nearest first."""

    symbol: str
    conid: int
    months: list[str]


class ListedOption(BaseModel):
    """One option contract as secdef info describes it. `expiry` is YYYYMMDD."""

    underlying: str
    conid: int
    expiry: str
    strike: float
    right: OptionRight
    multiplier: int = 100

    @property
    def expiry_date(self) -> date:
        return datetime.strptime(self.expiry, "%Y%m%d").date()

    @property
    def expires_at(self) -> datetime:
        """When trading in it ends: 16:00 New York on the expiry day (aware)."""
        return datetime.combine(self.expiry_date, EXPIRY_CLOSE, NEW_YORK)

    def days_to_expiry(self, today: date) -> int:
        return (self.expiry_date - today).days


class OptionQuote(BaseModel):
    """Bid, ask and last of one option, USD per share (a contract is `multiplier` shares)."""

    conid: int
    bid: float | None = None
    ask: float | None = None
    last: float | None = None

    @property
    def mid(self) -> float | None:
        if self.bid is not None and self.ask is not None and self.bid > 0:
            return round((self.bid + self.ask) / 2, 2)
        return self.last


async def option_months(broker: BrokerClient, symbol: str) -> OptionChainMonths:
    """The stock's conid and option expiry months, from the OPT section of the contract search."""
    symbol = symbol.strip().upper()
    entries = ib.unwrap_list(await broker.call(ib.SEARCH_CONTRACT, {"symbol": symbol, "name": False}))
    for entry in entries:
        if str(entry.get("symbol", "")).upper() != symbol:
            continue
        section = next((s for s in entry.get("sections") or [] if s.get("secType") == "OPT"), None)
        if section is not None:
            months = [m for m in str(section.get("months") or "").split(";") if m]
            return OptionChainMonths(symbol=symbol, conid=int(entry["conid"]), months=months)
    if not entries:
        raise UnknownSymbol(f"IB knows no contract for symbol {symbol}; check the spelling")
    raise BrokerError(f"{symbol} has no listed options at IB (no OPT section in the contract search)")


async def option_strikes(broker: BrokerClient, conid: int, month: str) -> dict[str, list[float]]:
    """{"call": [...], "put": [...]} strikes of one expiry month (MMMYY) of the underlying `conid`."""
    payload = await broker.call(ib.OPTION_STRIKES, {"conid": conid, "secType": "OPT", "month": month})
    answer: dict[str, Any] = payload if isinstance(payload, dict) else {}
    return {side: sorted(float(s) for s in answer.get(side) or []) for side in ("call", "put")}


async def listed_options(
    broker: BrokerClient, symbol: str, conid: int, month: str, strike: float, right: OptionRight
) -> list[ListedOption]:
    """The contracts for one month, strike and right (more than one when weeklies share the month)."""
    payload = await broker.call(
        ib.SECDEF_INFO,
        {"conid": str(conid), "secType": "OPT", "month": month, "strike": strike, "right": right},
    )
    return [
        ListedOption(
            underlying=symbol.upper(),
            conid=int(row["conid"]),
            expiry=str(row["maturityDate"]),
            strike=float(row["strike"]),
            right=str(row.get("right", right))[:1].upper(),  # type: ignore[arg-type]
            multiplier=int(float(row.get("multiplier") or 100)),
        )
        for row in ib.unwrap_list(payload)
        if row.get("conid") and row.get("maturityDate")
    ]


async def option_quotes(broker: BrokerClient, conids: Iterable[int]) -> dict[int, OptionQuote]:
    """One batched snapshot for the option conids; an option without price fields yet has None prices."""
    wanted = list(dict.fromkeys(conids))
    if not wanted:
        return {}
    payload = await broker.call(ib.SNAPSHOT, {"conids": ",".join(str(c) for c in wanted), "fields": ib.SNAPSHOT_FIELDS})
    rows = {int(row["conid"]): row for row in ib.unwrap_list(payload) if "conid" in row}
    return {
        conid: OptionQuote(
            conid=conid,
            bid=ib.parse_ib_number(rows.get(conid, {}).get(ib.FIELD_BID)),
            ask=ib.parse_ib_number(rows.get(conid, {}).get(ib.FIELD_ASK)),
            last=ib.parse_ib_number(rows.get(conid, {}).get(ib.FIELD_LAST)),
        )
        for conid in wanted
    }
