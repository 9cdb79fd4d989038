"""Streaming indicators against TA-Lib and against plain numpy on real recorded prices.

Data: tests/data/poller_goog_daily.csv (GOOG daily bars 2004-08-19..2013-03-01) and
tests/data/poller_eurusd_hourly.csv (EUR/USD hourly bars, April-June 2017), both taken from the
test data that ships inside the `backtesting` package (backtesting/test/GOOG.csv, EURUSD.csv).
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

import poller.indicators as indicators
from poller.indicators import NEW_YORK, Ema, IndicatorBank, IndicatorRef, PercentChange, Rsi, Sma, Vwap

DATA = Path(__file__).parent / "data"
TOLERANCE = 1e-9


def _rows(name: str) -> list[dict[str, str]]:
    with (DATA / name).open(newline="") as handle:
        return list(csv.DictReader(handle))


def goog_closes() -> np.ndarray:
    return np.array([float(row["Close"]) for row in _rows("poller_goog_daily.csv")])


def eurusd_bars() -> tuple[list[datetime], np.ndarray, np.ndarray]:
    rows = _rows("poller_eurusd_hourly.csv")
    times = [datetime.fromisoformat(row["Datetime"]).replace(tzinfo=UTC) for row in rows]
    closes = np.array([float(row["Close"]) for row in rows])
    volumes = np.array([float(row["Volume"]) for row in rows])
    return times, closes, volumes


def stream(indicator: Sma | Ema | Rsi, prices: np.ndarray) -> np.ndarray:
    values = [indicator.update(float(price)) for price in prices]
    return np.array([np.nan if value is None else value for value in values])


def assert_matches_talib(ours: np.ndarray, reference: np.ndarray) -> None:
    assert np.array_equal(np.isnan(ours), np.isnan(reference)), "warm-up length differs from TA-Lib"
    defined = ~np.isnan(reference)
    assert np.max(np.abs(ours[defined] - reference[defined]), initial=0.0) <= TOLERANCE


INDICATORS = [(Sma, talib.SMA), (Ema, talib.EMA), (Rsi, talib.RSI)]


@pytest.mark.parametrize(("cls", "reference"), INDICATORS, ids=["sma", "ema", "rsi"])
@pytest.mark.parametrize("period", [2, 5, 14, 20, 50, 200])
def test_equals_talib_on_real_daily_closes(cls: type, reference: object, period: int) -> None:
    closes = goog_closes()
    assert len(closes) > 2000
    assert_matches_talib(stream(cls(period), closes), reference(closes, period))  # type: ignore[operator]


# Prices on a quarter-dollar grid, so flat stretches (zero changes, zero gain and loss) occur often.
grid_series = st.lists(st.integers(-3, 3), min_size=1, max_size=300).map(
    lambda steps: np.maximum(0.25, 100.0 + 0.25 * np.cumsum(steps))
)
float_series = st.lists(
    st.floats(min_value=0.01, max_value=1e5, allow_nan=False, allow_infinity=False), min_size=1, max_size=300
).map(np.array)


@settings(max_examples=150, deadline=None)
@given(prices=st.one_of(grid_series, float_series), period=st.integers(2, 40))
def test_equals_talib_on_generated_series(prices: np.ndarray, period: int) -> None:
    for cls, reference in INDICATORS:
        assert_matches_talib(stream(cls(period), prices), reference(prices, period))


def test_flat_series_rsi_is_zero_like_talib() -> None:
    prices = np.full(30, 42.0)
    assert_matches_talib(stream(Rsi(14), prices), talib.RSI(prices, 14))
    assert stream(Rsi(14), prices)[-1] == 0.0


def _session_vwap(times: list[datetime], closes: np.ndarray, volumes: np.ndarray) -> np.ndarray:
    """Independent VWAP: per New York date, cumsum(price * volume) / cumsum(volume)."""
    sessions = np.array([ts.astimezone(NEW_YORK).date().toordinal() for ts in times])
    expected = np.empty(len(closes))
    for session in np.unique(sessions):
        mask = sessions == session
        expected[mask] = np.cumsum(closes[mask] * volumes[mask]) / np.cumsum(volumes[mask])
    return expected


def test_vwap_matches_numpy_per_session_on_real_hourly_bars() -> None:
    times, closes, volumes = eurusd_bars()
    expected = _session_vwap(times, closes, volumes)
    vwap = Vwap()
    cumulative = 0.0
    session = None
    ours = []
    for ts, close, volume in zip(times, closes, volumes, strict=True):
        day = ts.astimezone(NEW_YORK).date()
        if day != session:
            session, cumulative = day, 0.0
        cumulative += volume  # a snapshot's volume is the session's running total
        ours.append(vwap.update(float(close), ts, cumulative))
    assert len({ts.astimezone(NEW_YORK).date() for ts in times}) > 40
    np.testing.assert_allclose(np.array(ours, dtype=float), expected, rtol=1e-12)


def test_vwap_ignores_ticks_without_volume_and_survives_a_counter_reset() -> None:
    ts = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
    vwap = Vwap()
    assert vwap.update(10.0, ts, None) is None
    assert vwap.update(10.0, ts, 100.0) == 10.0
    assert vwap.update(99.0, ts, None) == 10.0
    assert vwap.update(20.0, ts, 300.0) == pytest.approx((10 * 100 + 20 * 200) / 300)
    # The running total went down: the counter restarted, so its whole value is new volume.
    assert vwap.update(40.0, ts, 100.0) == pytest.approx((10 * 100 + 20 * 200 + 40 * 100) / 400)


@pytest.mark.parametrize("window_s", [1800.0, 5 * 3600.0, 24 * 3600.0])
def test_percent_change_matches_a_plain_loop_on_real_hourly_bars(window_s: float) -> None:
    times, closes, _ = eurusd_bars()
    seconds = [ts.timestamp() for ts in times]
    change = PercentChange(window_s)
    checked = 0
    for i, (ts, close) in enumerate(zip(times, closes, strict=True)):
        value = change.update(float(close), ts)
        reference_index = None
        for j in range(i, -1, -1):
            if seconds[j] <= seconds[i] - window_s:
                reference_index = j
                break
        if reference_index is None:
            assert value is None
        else:
            reference = closes[reference_index]
            assert value == pytest.approx((close - reference) / reference * 100.0, rel=1e-12, abs=1e-12)
            checked += 1
    assert checked > len(times) - 30


def test_bank_computes_a_shared_indicator_once_per_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    original = Sma.update

    def counting_update(self: Sma, price: float, ts: datetime | None = None, volume: float | None = None):
        nonlocal calls
        calls += 1
        return original(self, price, ts, volume)

    monkeypatch.setattr(indicators.Sma, "update", counting_update)
    bank = IndicatorBank()
    ref = IndicatorRef("sma", "sma(3)", period=3)
    first, second = bank.acquire(ref), bank.acquire(ref)
    assert first == second
    for price in (1.0, 2.0, 3.0, 4.0):
        bank.update(price, None)
    assert calls == 4
    assert bank.values() == {"sma(3)": 3.0}
    assert bank.previous[first] == 2.0


def test_bank_seeds_a_late_indicator_from_recent_prices() -> None:
    closes = goog_closes()
    bank = IndicatorBank()
    for price in closes:
        bank.update(float(price), None)
    slot = bank.acquire(IndicatorRef("sma", "sma(20)", period=20))
    assert bank.current[slot] == pytest.approx(talib.SMA(closes, 20)[-1], abs=TOLERANCE)
    bank.release("sma(20)")
    assert bank.values() == {}
