"""Market data beyond the snapshot: OHLCV history bars from IB_MCP's history tool, typed.

Functions over a BrokerClient (its `call()` and conid cache), so the client stays one class of session
concerns. The gateway's history payload: `{"symbol", "barLength" (s), "data": [{"o","h","l","c","v","t" (ms)}]}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import BaseModel

from broker import ib_mcp_tools as ib
from broker.client import BrokerClient


class HistoryBar(BaseModel):
    """One OHLCV bar; `ts` is the bar's start (UTC). Prices in USD, volume in shares."""

    ts: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float

    @property
    def ts_ms(self) -> int:
        return int(self.ts.timestamp() * 1000)

    @property
    def typical_price(self) -> float:
        return (self.high + self.low + self.close) / 3


async def history_bars(
    broker: BrokerClient, symbol: str, *, period: str, bar: str, outside_rth: bool = False
) -> list[HistoryBar]:
    """Bars of `symbol` over `period` (IB's forms: '30min', '2d', '1w', '1m' = a month) of size `bar`
    ('1min', '1h', '1d'), oldest first. A gateway answer without data gives an empty list."""
    conid = (await broker.resolve_conids([symbol]))[symbol.upper()]
    payload = await broker.call(
        ib.HISTORY,
        {"conid": str(conid), "period": period, "bar": bar, "outsideRth": outside_rth, "barType": "trades"},
    )
    rows = payload.get("data") if isinstance(payload, dict) else None
    volume_factor = float(payload.get("volumeFactor") or 1) if isinstance(payload, dict) else 1.0
    bars = [
        HistoryBar(
            ts=datetime.fromtimestamp(int(row["t"]) / 1000, UTC),
            open=float(row["o"]),
            high=float(row["h"]),
            low=float(row["l"]),
            close=float(row["c"]),
            volume=float(row.get("v") or 0) * volume_factor,
        )
        for row in rows or []
        if "t" in row and "c" in row
    ]
    return sorted(bars, key=lambda b: b.ts)


def vwap(bars: Sequence[HistoryBar]) -> float | None:
    """Volume-weighted average of the bars' typical prices; None without volume."""
    volume = sum(b.volume for b in bars)
    if volume <= 0:
        return None
    return sum(b.typical_price * b.volume for b in bars) / volume
