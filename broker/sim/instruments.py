"""Instruments the simulator knows: symbol, IB contract id (conid), company name, listing exchange.

Well-known US stocks keep their real conids so that ids copied from a real account mean the same thing here;
any other symbol gets a stable generated conid (the same on every run and every machine).
Options (see options.py) are instruments too: `sec_type` "OPT", their own conid, the underlying's symbol,
and the contract terms (expiry, strike, right, multiplier).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import date
from decimal import Decimal


@dataclass(frozen=True)
class Instrument:
    symbol: str
    conid: int
    name: str
    exchange: str
    listing_exchange: str
    sec_type: str = "STK"
    currency: str = "USD"
    multiplier: int = 1
    underlying_conid: int | None = None
    expiry: date | None = None
    strike: Decimal | None = None
    right: str | None = None


@dataclass(frozen=True)
class _KnownStock:
    conid: int
    name: str
    exchange: str
    listing_exchange: str
    start_price_usd: Decimal


_KNOWN_STOCKS: dict[str, _KnownStock] = {
    "AAPL": _KnownStock(265598, "APPLE INC", "NASDAQ", "NASDAQ.NMS", Decimal("190.00")),
    "MSFT": _KnownStock(272093, "MICROSOFT CORP", "NASDAQ", "NASDAQ.NMS", Decimal("410.00")),
    "TSLA": _KnownStock(76792991, "TESLA INC", "NASDAQ", "NASDAQ.NMS", Decimal("240.00")),
    "SPY": _KnownStock(756733, "SPDR S&P 500 ETF TRUST", "ARCA", "ARCA", Decimal("470.00")),
    "NVDA": _KnownStock(4815747, "NVIDIA CORP", "NASDAQ", "NASDAQ.NMS", Decimal("480.00")),
    "QQQ": _KnownStock(320227571, "INVESCO QQQ TRUST SERIES 1", "NASDAQ", "NASDAQ.NMS", Decimal("400.00")),
}

DEFAULT_SYMBOLS = tuple(_KNOWN_STOCKS)
DEFAULT_START_PRICE_USD = Decimal("100.00")

# Generated conids live far above the real ones used here, so the two ranges never collide.
_GENERATED_CONID_BASE = 900_000_000
_GENERATED_CONID_SPAN = 90_000_000


def instrument_for(symbol: str) -> Instrument:
    """The instrument for a symbol: the real contract for well-known stocks, a stable made-up one otherwise."""
    symbol = symbol.strip().upper()
    known = _KNOWN_STOCKS.get(symbol)
    if known is not None:
        return Instrument(symbol, known.conid, known.name, known.exchange, known.listing_exchange)
    conid = _GENERATED_CONID_BASE + zlib.crc32(symbol.encode()) % _GENERATED_CONID_SPAN
    return Instrument(symbol, conid, f"{symbol} SIMULATED CORP", "NYSE", "NYSE")


def default_start_price(symbol: str) -> Decimal:
    """A plausible opening price: near the real one for well-known stocks, 100.00 otherwise."""
    known = _KNOWN_STOCKS.get(symbol.strip().upper())
    return known.start_price_usd if known is not None else DEFAULT_START_PRICE_USD
