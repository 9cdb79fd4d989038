"""Listed equity options for the simulator: monthly expiries (third Fridays), a strike ladder around the
underlying's opening price, and Black-Scholes prices from the simulated clock.

Contracts are listed once, when the market opens, so that strikes and conids stay fixed while the
underlying moves (as a real chain does within a day). Prices are European Black-Scholes without dividends
(broker/black_scholes.py): close enough to a US equity option for a paper workflow, exact enough to test.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from broker.sim.instruments import Instrument

NEW_YORK = ZoneInfo("America/New_York")
EXPIRY_CLOSE = time(16, 0)
SECONDS_PER_YEAR = 365 * 86_400
MONTH_CODES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
OPTION_MULTIPLIER = 100
OPTION_EXCHANGES = "SMART;AMEX;CBOE;ISE;PHLX"
# Option conids live in their own range, below the simulator's generated stock conids (900,000,000 and up).
_OPTION_CONID_BASE = 800_000_000
_OPTION_CONID_SPAN = 90_000_000


@dataclass(frozen=True)
class OptionSettings:
    """How the simulator lists and prices options. Volatility and rate are annual, in percent."""

    volatility_pct: float = 30.0
    risk_free_rate_pct: float = 4.0
    expiry_months: int = 3
    strike_range_pct: float = 30.0
    spread_usd: Decimal = Decimal("0.10")


def third_friday(year: int, month: int) -> date:
    first = date(year, month, 1)
    first_friday = first + timedelta(days=(4 - first.weekday()) % 7)
    return first_friday + timedelta(weeks=2)


def monthly_expiries(today: date, count: int) -> list[date]:
    """The next `count` monthly expiries (third Fridays) that are after `today`."""
    expiries: list[date] = []
    year, month = today.year, today.month
    while len(expiries) < count:
        expiry = third_friday(year, month)
        if expiry > today:
            expiries.append(expiry)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return expiries


def month_code(expiry: date) -> str:
    """IB's month form for the strikes and secdef-info calls: "JAN26"."""
    return f"{MONTH_CODES[expiry.month - 1]}{expiry.year % 100:02d}"


def strike_step(price: Decimal) -> Decimal:
    """Strike spacing that listed US equity options use at this price level."""
    if price < 50:
        return Decimal(1)
    if price < 200:
        return Decimal("2.5")
    if price < 500:
        return Decimal(5)
    return Decimal(10)


def strike_ladder(price: Decimal, range_pct: float) -> list[Decimal]:
    step = strike_step(price)
    low = price * Decimal(1 - range_pct / 100)
    high = price * Decimal(1 + range_pct / 100)
    strike = (low / step).to_integral_value() * step
    strikes = []
    while strike <= high:
        if strike > 0:
            strikes.append(strike)
        strike += step
    return strikes


def expiry_instant(expiry: date) -> datetime:
    """Equity options stop trading at the 16:00 New York close of their expiry day."""
    return datetime.combine(expiry, EXPIRY_CLOSE, NEW_YORK).astimezone(UTC)


def years_to_expiry(expiry: date, now_ms: int) -> float:
    remaining_s = expiry_instant(expiry).timestamp() - now_ms / 1000
    return max(remaining_s, 0.0) / SECONDS_PER_YEAR


def occ_symbol(underlying: str, expiry: date, strike: Decimal, right: str) -> str:
    """The OCC option symbol IB shows as the local symbol: "AAPL  260116C00200000"."""
    return f"{underlying:<6}{expiry:%y%m%d}{right}{int(strike * 1000):08d}"


def option_description(underlying: str, expiry: date, strike: Decimal, right: str) -> str:
    """IB's contract description: "AAPL JAN2026 200 C [AAPL  260116C00200000 100]"."""
    month = f"{MONTH_CODES[expiry.month - 1]}{expiry.year}"
    return (
        f"{underlying} {month} {strike.normalize():f} {right} "
        f"[{occ_symbol(underlying, expiry, strike, right)} {OPTION_MULTIPLIER}]"
    )


def list_chain(underlying: Instrument, spot: Decimal, today: date, settings: OptionSettings) -> list[Instrument]:
    """Calls and puts for the next monthly expiries, strikes within `strike_range_pct` of `spot`."""
    contracts = []
    for expiry in monthly_expiries(today, settings.expiry_months):
        for strike in strike_ladder(spot, settings.strike_range_pct):
            for right in ("C", "P"):
                key = occ_symbol(underlying.symbol, expiry, strike, right)
                conid = _OPTION_CONID_BASE + zlib.crc32(key.encode()) % _OPTION_CONID_SPAN
                contracts.append(
                    Instrument(
                        symbol=underlying.symbol,
                        conid=conid,
                        name=option_description(underlying.symbol, expiry, strike, right),
                        exchange="SMART",
                        listing_exchange="SMART",
                        sec_type="OPT",
                        multiplier=OPTION_MULTIPLIER,
                        underlying_conid=underlying.conid,
                        expiry=expiry,
                        strike=strike,
                        right=right,
                    )
                )
    return contracts
