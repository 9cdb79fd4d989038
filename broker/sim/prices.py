"""Where simulated prices come from: a seeded random walk, or a replay of recorded OHLCV bars.

Both are `PriceSource`s: one bar per `advance()`, the bars seen so far (for the history tool), and the
statistics of the current trading session (open, high, low, cumulative volume, prior close) that a
market-data snapshot reports. Prices are `Decimal` cents, volumes whole shares.
"""

from __future__ import annotations

import csv
import random
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Protocol

CENT = Decimal("0.01")
MIN_PRICE_USD = CENT


def to_cents(value: Decimal | float | int | str) -> Decimal:
    """A price rounded half-up to the cent, never below one cent."""
    price = Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_UP)
    return max(price, MIN_PRICE_USD)


@dataclass(frozen=True, slots=True)
class Bar:
    ts_ms: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: int

    @property
    def utc_date(self) -> str:
        return datetime.fromtimestamp(self.ts_ms / 1000, UTC).date().isoformat()


@dataclass
class SessionStats:
    """What a snapshot reports about today: open, high, low, cumulative volume, and yesterday's close."""

    open: Decimal
    high: Decimal
    low: Decimal
    volume: int
    prior_close: Decimal

    @classmethod
    def starting_with(cls, bar: Bar, prior_close: Decimal) -> SessionStats:
        return cls(open=bar.open, high=bar.high, low=bar.low, volume=bar.volume, prior_close=prior_close)

    def add(self, bar: Bar) -> None:
        self.high = max(self.high, bar.high)
        self.low = min(self.low, bar.low)
        self.volume += bar.volume

    def touch(self, price: Decimal) -> None:
        self.high = max(self.high, price)
        self.low = min(self.low, price)


class PriceSource(Protocol):
    @property
    def bar(self) -> Bar:
        """The current (latest) bar; its close is the last trade price."""
        ...

    @property
    def session(self) -> SessionStats: ...

    def advance(self) -> None:
        """Move one bar forward."""
        ...

    def jump_to(self, price: Decimal) -> None:
        """Make `price` the last trade price now (the current bar's close)."""
        ...

    def history(self) -> list[Bar]:
        """Every bar up to and including the current one, oldest first."""
        ...


@dataclass(frozen=True)
class WalkSettings:
    """A geometric random walk: each step multiplies the price by (1 + drift + volatility * N(0, 1)).

    Each step is one bar of `bar_interval_s` of simulated time; `warmup_bars` bars of history precede the
    start, so that indicators can be seeded from the history tool. The latest `history_bars` bars are kept
    (IB serves at most 1000 points per history request), so a long-running simulator does not grow.
    """

    start_price_usd: Decimal | None = None
    volatility_pct: float = 0.1
    drift_pct: float = 0.0
    bar_interval_s: int = 60
    warmup_bars: int = 500
    history_bars: int = 1000


class RandomWalk:
    """A seeded random walk. The warm-up bars (history before the session) end exactly at the start price."""

    def __init__(self, start_price_usd: Decimal, settings: WalkSettings, rng: random.Random, start_ms: int) -> None:
        self._settings = settings
        self._rng = rng
        self._interval_ms = settings.bar_interval_s * 1000
        start = to_cents(start_price_usd)
        self._bars: deque[Bar] = deque(
            self._warmup(start, start_ms), maxlen=max(settings.warmup_bars, settings.history_bars) + 1
        )
        opening = Bar(start_ms, start, start, start, start, self._step_volume())
        self._bars.append(opening)
        self._session = SessionStats.starting_with(opening, prior_close=start)

    def _return(self) -> float:
        return (self._settings.drift_pct + self._settings.volatility_pct * self._rng.gauss(0.0, 1.0)) / 100

    def _step_volume(self) -> int:
        return self._rng.randint(1, 50) * 100

    def _warmup(self, end_price: Decimal, start_ms: int) -> list[Bar]:
        count = self._settings.warmup_bars
        returns = [self._return() for _ in range(count)]
        closes = [end_price]
        for step_return in reversed(returns):
            closes.append(to_cents(float(closes[-1]) / (1 + step_return)))
        closes.reverse()
        first_ms = start_ms - count * self._interval_ms
        bars = []
        for index in range(count):
            open_, close = closes[index], closes[index + 1]
            ts_ms = first_ms + index * self._interval_ms
            bars.append(Bar(ts_ms, open_, max(open_, close), min(open_, close), close, self._step_volume()))
        return bars

    @property
    def bar(self) -> Bar:
        return self._bars[-1]

    @property
    def session(self) -> SessionStats:
        return self._session

    def advance(self) -> None:
        previous = self._bars[-1]
        close = to_cents(float(previous.close) * (1 + self._return()))
        bar = Bar(
            previous.ts_ms + self._interval_ms,
            previous.close,
            max(previous.close, close),
            min(previous.close, close),
            close,
            self._step_volume(),
        )
        self._bars.append(bar)
        self._session.add(bar)

    def jump_to(self, price: Decimal) -> None:
        current = self._bars[-1]
        self._bars[-1] = replace(current, close=price, high=max(current.high, price), low=min(current.low, price))
        self._session.touch(price)

    def history(self) -> list[Bar]:
        return list(self._bars)


class BarReplay:
    """Replays recorded bars one per step; a new UTC date starts a new session. Holds the last bar at the end."""

    def __init__(self, bars: list[Bar]) -> None:
        if not bars:
            raise ValueError("a replay needs at least one bar")
        self._bars = sorted(bars, key=lambda bar: bar.ts_ms)
        self._index = 0
        first = self._bars[0]
        self._session = SessionStats.starting_with(first, prior_close=first.open)

    @property
    def bar(self) -> Bar:
        return self._bars[self._index]

    @property
    def session(self) -> SessionStats:
        return self._session

    @property
    def exhausted(self) -> bool:
        return self._index == len(self._bars) - 1

    def advance(self) -> None:
        if self.exhausted:
            return
        previous = self._bars[self._index]
        self._index += 1
        bar = self._bars[self._index]
        if bar.utc_date != previous.utc_date:
            self._session = SessionStats.starting_with(bar, prior_close=previous.close)
        else:
            self._session.add(bar)

    def jump_to(self, price: Decimal) -> None:
        current = self._bars[self._index]
        self._bars[self._index] = replace(
            current, close=price, high=max(current.high, price), low=min(current.low, price)
        )
        self._session.touch(price)

    def history(self) -> list[Bar]:
        return self._bars[: self._index + 1]


def _parse_timestamp_ms(text: str) -> int:
    stamp = datetime.fromisoformat(text.strip())
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1000)


def load_bars_csv(path: str | Path, symbol: str | None = None) -> dict[str, list[Bar]]:
    """Bars per symbol from a CSV with columns date, open, high, low, close, volume (and optionally symbol).

    Without a `symbol` column every row belongs to `symbol`, or to the file name's stem (AAPL.csv -> AAPL).
    Dates are ISO 8601 (`2024-01-02` or `2024-01-02T14:30:00`); a date without a zone is UTC.
    """
    path = Path(path)
    default_symbol = (symbol or path.stem).upper()
    bars: dict[str, list[Bar]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            fields = {key.strip().lower(): value for key, value in row.items() if key is not None}
            row_symbol = (fields.get("symbol") or default_symbol).strip().upper()
            bar = Bar(
                ts_ms=_parse_timestamp_ms(fields["date"]),
                open=to_cents(fields["open"]),
                high=to_cents(fields["high"]),
                low=to_cents(fields["low"]),
                close=to_cents(fields["close"]),
                volume=int(float(fields["volume"])),
            )
            bars.setdefault(row_symbol, []).append(bar)
    return bars
