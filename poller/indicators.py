"""Streaming indicators: O(1) work per price, values equal to TA-Lib's on the same series.

Each indicator's `update(price, ts, volume)` takes one observation and returns its value, or None
while it is still warming up. The arithmetic follows TA-Lib's C code step by step (same seeds, same
order of operations), so SMA/EMA/RSI equal `talib.SMA/EMA/RSI` over the full history, not just
approximately. We do not call `talib.stream` at run time: it recomputes RSI from the last n+1
prices only (lookback with unstable period 0), which differs from the full-history value, and it
needs a numpy array per call.

`IndicatorBank` holds one symbol's indicators and the tick fields in numbered slots, the current
and the previous tick's values side by side, so every indicator is computed once per tick however
many triggers read it, and `crosses_above`/`crosses_below` can compare the two ticks.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from itertools import islice
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

IndicatorKind = Literal["sma", "ema", "rsi", "vwap", "percent_change"]

MIN_PERIOD = 2
MAX_PERIOD = 10_000
NEW_YORK = ZoneInfo("America/New_York")
FIELDS: tuple[str, ...] = ("price", "bid", "ask", "last", "volume")


@dataclass(frozen=True, slots=True)
class IndicatorRef:
    """Which indicator a condition reads. `key` is its name in event payloads, e.g. "sma(20)"."""

    kind: IndicatorKind
    key: str
    period: int = 0
    window_s: float = 0.0


class StreamingIndicator(Protocol):
    needs_time: bool

    def update(self, price: float, ts: datetime | None, volume: float | None) -> float | None: ...


Update = Callable[[float, datetime | None, float | None], float | None]
TimedUpdate = Callable[[float, datetime, float, float | None], float | None]


class Sma:
    """Simple moving average; TA-Lib's running sum (add the new price, divide, drop the oldest)."""

    __slots__ = ("_period", "_total", "_window")
    needs_time = False

    def __init__(self, period: int) -> None:
        self._period = period
        self._window: deque[float] = deque(maxlen=period)
        self._total = 0.0

    def update(self, price: float, ts: datetime | None = None, volume: float | None = None) -> float | None:
        self._window.append(price)
        self._total += price
        if len(self._window) < self._period:
            return None
        value = self._total / self._period
        # The oldest price leaves the window on the next append; TA-Lib subtracts it right after dividing.
        self._total -= self._window[0]
        return value


class Ema:
    """Exponential moving average, k = 2/(n+1), seeded with the SMA of the first n prices (TA-Lib default)."""

    __slots__ = ("_count", "_k", "_period", "_seed_total", "_value")
    needs_time = False

    def __init__(self, period: int) -> None:
        self._period = period
        self._k = 2.0 / (period + 1)
        self._count = 0
        self._seed_total = 0.0
        self._value: float | None = None

    def update(self, price: float, ts: datetime | None = None, volume: float | None = None) -> float | None:
        if self._value is not None:
            self._value = (price - self._value) * self._k + self._value
            return self._value
        self._count += 1
        self._seed_total += price
        if self._count == self._period:
            self._value = self._seed_total / self._period
        return self._value


class Rsi:
    """Wilder's RSI with TA-Lib's seeding: the average gain/loss of the first n changes, unstable period 0."""

    __slots__ = ("_avg_gain", "_avg_loss", "_count", "_period", "_previous_price")
    needs_time = False

    def __init__(self, period: int) -> None:
        self._period = period
        self._count = 0
        self._previous_price: float | None = None
        self._avg_gain = 0.0
        self._avg_loss = 0.0

    def update(self, price: float, ts: datetime | None = None, volume: float | None = None) -> float | None:
        previous = self._previous_price
        self._previous_price = price
        if previous is None:
            return None
        change = price - previous
        n = self._period
        if self._count < n:
            self._count += 1
            if change < 0:
                self._avg_loss -= change
            else:
                self._avg_gain += change
            if self._count < n:
                return None
        else:
            self._avg_loss *= n - 1
            self._avg_gain *= n - 1
            if change < 0:
                self._avg_loss -= change
            else:
                self._avg_gain += change
        self._avg_loss /= n
        self._avg_gain /= n
        total = self._avg_gain + self._avg_loss
        return 100.0 * (self._avg_gain / total) if total != 0.0 else 0.0


class Vwap:
    """Session VWAP: sum(price * traded volume) / sum(traded volume), restarted each session date.

    `Tick.volume` is the session's cumulative volume (IB snapshot field 87), so the volume traded at a
    tick is its increase since the previous tick. The first tick of a session, or a cumulative volume
    that went down (a counter reset), counts its whole volume. Ticks without volume change nothing.
    """

    __slots__ = (
        "_cum_pv",
        "_cum_volume",
        "_last_volume",
        "_session",
        "_session_end_s",
        "_session_start_s",
        "_session_tz",
    )
    needs_time = True

    def __init__(self, session_tz: tzinfo = NEW_YORK) -> None:
        self._session_tz = session_tz
        self._session: date | None = None
        # The current session date's bounds in epoch seconds: a tick inside them needs no time zone work.
        self._session_start_s = math.inf
        self._session_end_s = -math.inf
        self._last_volume = 0.0
        self._cum_pv = 0.0
        self._cum_volume = 0.0

    def update(self, price: float, ts: datetime | None, volume: float | None) -> float | None:
        if ts is not None:
            return self.update_at(price, ts, ts.timestamp(), volume)
        return self._add(price, volume)

    def update_at(self, price: float, ts: datetime, ts_s: float, volume: float | None) -> float | None:
        """`update` for a tick whose epoch seconds `ts_s` the caller already has."""
        if not self._session_start_s <= ts_s < self._session_end_s:
            self._enter_session(ts)
        return self._add(price, volume)

    def _enter_session(self, ts: datetime) -> None:
        session = ts.astimezone(self._session_tz).date()
        self._session_start_s = datetime.combine(session, time(), self._session_tz).timestamp()
        self._session_end_s = datetime.combine(session + timedelta(days=1), time(), self._session_tz).timestamp()
        if session != self._session:
            self._session = session
            self._last_volume = 0.0
            self._cum_pv = 0.0
            self._cum_volume = 0.0

    def _add(self, price: float, volume: float | None) -> float | None:
        if volume is not None:
            traded = volume - self._last_volume if volume >= self._last_volume else volume
            self._last_volume = volume
            self._cum_pv += price * traded
            self._cum_volume += traded
        return self._cum_pv / self._cum_volume if self._cum_volume > 0 else None


class PercentChange:
    """Percent change of the price against the last price seen at least `window_s` seconds earlier.

    None until an observation that old exists. Older observations are evicted as time moves on,
    so the work per tick is O(1) amortised and memory is one window of ticks.
    """

    __slots__ = ("_prices", "_times", "_window_s")
    needs_time = True

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._times: deque[float] = deque()
        self._prices: deque[float] = deque()

    def update(self, price: float, ts: datetime | None, volume: float | None = None) -> float | None:
        return None if ts is None else self.update_at(price, ts, ts.timestamp(), volume)

    def update_at(self, price: float, ts: datetime, now_s: float, volume: float | None) -> float | None:
        """`update` for a tick whose epoch seconds `now_s` the caller already has."""
        cutoff_s = now_s - self._window_s
        times, prices = self._times, self._prices
        # Keep exactly one observation at or before the cutoff: the reference price.
        while len(times) > 1 and times[1] <= cutoff_s:
            times.popleft()
            prices.popleft()
        times.append(now_s)
        prices.append(price)
        if times[0] > cutoff_s:
            return None
        reference = prices[0]
        return (price - reference) / reference * 100.0 if reference != 0.0 else None


def make_indicator(ref: IndicatorRef, session_tz: tzinfo = NEW_YORK) -> StreamingIndicator:
    if ref.kind == "sma":
        return Sma(ref.period)
    if ref.kind == "ema":
        return Ema(ref.period)
    if ref.kind == "rsi":
        return Rsi(ref.period)
    if ref.kind == "vwap":
        return Vwap(session_tz)
    return PercentChange(ref.window_s)


class IndicatorBank:
    """One symbol's tick fields and indicators, current and previous tick, addressed by slot number.

    Slots 0..4 hold the tick fields (`FIELDS`); each distinct indicator gets the next slot. Indicators
    are reference-counted: the last trigger that releases one stops its computation. An indicator
    acquired after prices have been seen is first fed the bank's recent prices (`seed_size` of them).

    `update` runs for every tick of every watched symbol, so its bookkeeping is kept to the minimum: the
    two value lists swap roles instead of being copied, each indicator's bound `update` is looked up once
    (when the set of indicators changes), and the recent prices are one deque of (price, ts) pairs.
    """

    def __init__(self, *, seed_size: int = 500, session_tz: tzinfo = NEW_YORK) -> None:
        self._session_tz = session_tz
        self._slots: dict[str, int] = {name: i for i, name in enumerate(FIELDS)}
        self._indicators: dict[str, StreamingIndicator] = {}
        self._refcounts: dict[str, int] = {}
        self._untimed: list[tuple[int, Update]] = []
        self._timed: list[tuple[int, TimedUpdate]] = []
        self._seed: deque[tuple[float, datetime | None]] = deque(maxlen=seed_size)
        self.current: list[float | None] = [None] * len(FIELDS)
        self.previous: list[float | None] = [None] * len(FIELDS)
        self.price = 0.0
        self.ts: datetime | None = None

    def field_slot(self, name: str) -> int:
        return self._slots[name]

    def acquire(self, ref: IndicatorRef) -> int:
        """The slot of `ref`'s values; creates (and seeds) the indicator on first use."""
        count = self._refcounts.get(ref.key, 0)
        self._refcounts[ref.key] = count + 1
        slot = self._slots.get(ref.key)
        if slot is None:
            slot = len(self.current)
            self._slots[ref.key] = slot
            self.current.append(None)
            self.previous.append(None)
        if count == 0:
            indicator = make_indicator(ref, self._session_tz)
            value: float | None = None
            for price, ts in self._seed:
                if ts is not None or not indicator.needs_time:
                    value = indicator.update(price, ts, None)
            self.current[slot] = value
            self.previous[slot] = None
            self._indicators[ref.key] = indicator
            self._rebuild_active()
        return slot

    def release(self, key: str) -> None:
        count = self._refcounts.get(key, 0) - 1
        if count > 0:
            self._refcounts[key] = count
            return
        self._refcounts.pop(key, None)
        if self._indicators.pop(key, None) is not None:
            slot = self._slots[key]
            self.current[slot] = None
            self.previous[slot] = None
            self._rebuild_active()

    def update(
        self,
        price: float,
        ts: datetime | None,
        bid: float | None = None,
        ask: float | None = None,
        last: float | None = None,
        volume: float | None = None,
        ts_s: float | None = None,
    ) -> None:
        """Move current values to previous and compute the new ones; each indicator once. A tick without a
        time leaves the time-based indicators (percent change, VWAP) at their previous value. `ts_s` is
        `ts` in epoch seconds when the caller has it already."""
        previous = self.current
        current = self.previous
        self.previous = previous
        self.current = current
        current[0] = price
        current[1] = bid
        current[2] = ask
        current[3] = last
        current[4] = volume
        for slot, update in self._untimed:
            current[slot] = update(price, ts, volume)
        if ts is not None:
            if self._timed:
                now_s = ts.timestamp() if ts_s is None else ts_s
                for slot, update_at in self._timed:
                    current[slot] = update_at(price, ts, now_s, volume)
        else:
            for slot, _ in self._timed:
                current[slot] = previous[slot]
        self._seed.append((price, ts))
        self.price = price
        self.ts = ts

    def values(self) -> dict[str, float | None]:
        """Current indicator values by name (tick fields excluded)."""
        return {key: self.current[self._slots[key]] for key in self._indicators}

    def recent_prices(self, count: int) -> list[float]:
        """The last `count` prices, oldest first (read from the newest end: no walk over older ones)."""
        newest_first = [price for price, _ in islice(reversed(self._seed), count)]
        newest_first.reverse()
        return newest_first

    def _rebuild_active(self) -> None:
        self._untimed = []
        self._timed = []
        for key, indicator in self._indicators.items():
            slot = self._slots[key]
            if isinstance(indicator, PercentChange | Vwap):
                self._timed.append((slot, indicator.update_at))
            else:
                self._untimed.append((slot, indicator.update))
