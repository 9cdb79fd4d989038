"""Real daily bars through the whole replay, checked against an independent computation written here.

Data: unadjusted daily OHLCV from the Quandl WIKI prices (public domain), as shipped by the PyPI package
`bokeh-sampledata` (BSD-3; a dev dependency, read from the installed wheel: no network):
- tests/data/replay_ibm_2010h1.csv: IBM, 2010-01-04 .. 2010-06-30 (124 bars), extracted from that package;
- MSFT 2012 (250 bars), read from the package at test time.

Strategy: "dip" price < LOW buys floor(0.5 x $5,000 / close) shares; "take profit" price > HIGH sells half the
shares held (at most $5,000 / close); IB fixed commissions; no slippage, so fills are at the close. Triggers fire
on the first close beyond their level and re-arm once a close is back on the other side.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from bokeh_sampledata import stocks

from broker.sim.prices import load_bars_csv
from mcp_overlay_server.settings import OverlaySettings
from poller.triggers import TriggerSpec
from replay.engine import ReplayConfig, run_replay
from replay.report import ReplayReport
from workflows.risk import RiskLimits

pytestmark = pytest.mark.anyio

CASH_USD = Decimal(100_000)
ORDER_BUDGET_USD = 5_000
CENT = Decimal("0.01")
# Wide position limits: this test is about fills and P&L, not about the exposure rules.
LIMITS = RiskLimits(
    max_order_notional_usd=ORDER_BUDGET_USD,
    max_position_shares_per_symbol=1e6,
    max_position_notional_usd_per_symbol=1e7,
    max_total_exposure_usd=1e7,
    max_buying_power_share_pct=100,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Expected:
    trades: list[tuple[str, str, int, Decimal]]
    cash_usd: Decimal
    realized_pnl_usd: Decimal
    final_equity_usd: Decimal


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def ib_commission(shares: int, price: Decimal) -> Decimal:
    return cents(min(max(shares * Decimal("0.005"), Decimal(1)), shares * price / 100))


def independent_threshold_strategy(closes: list[tuple[str, Decimal]], low: Decimal, high: Decimal) -> Expected:
    cash, held, cost_usd, realized = CASH_USD, 0, Decimal(0), Decimal(0)
    dip_armed = profit_armed = True
    trades: list[tuple[str, str, int, Decimal]] = []
    for date, close in closes:
        if close < low and dip_armed:
            dip_armed = False
            shares = math.floor(0.5 * ORDER_BUDGET_USD / float(close))
            fee = ib_commission(shares, close)
            cash -= shares * close + fee
            held, cost_usd = held + shares, cost_usd + shares * close + fee
            trades.append((date, "BUY", shares, close))
        elif close >= low:
            dip_armed = True
        if close > high and profit_armed:
            profit_armed = False
            shares = min(held // 2, math.floor(ORDER_BUDGET_USD / float(close)))
            if shares >= 1:
                fee = ib_commission(shares, close)
                average = cost_usd / held
                realized += cents(shares * (close - average) - fee)
                cash += shares * close - fee
                held, cost_usd = held - shares, cost_usd - shares * average
                trades.append((date, "SELL", shares, close))
        elif close <= high:
            profit_armed = True
    return Expected(
        trades=trades,
        cash_usd=cents(cash),
        realized_pnl_usd=realized,
        final_equity_usd=cents(cash + held * closes[-1][1]),
    )


def trade_list(report: ReplayReport) -> list[tuple[str, str, int, Decimal]]:
    return [(t.ts.date().isoformat(), t.side, int(t.quantity), t.price_usd) for t in report.trades]


async def replay(csv_path: Path, symbol: str, low: Decimal, high: Decimal) -> ReplayReport:
    config = ReplayConfig(
        bars=load_bars_csv(csv_path, symbol),
        triggers=[
            TriggerSpec(name="dip", symbol=symbol, condition=f"price < {low}"),
            TriggerSpec(name="take profit", symbol=symbol, condition=f"price > {high}"),
        ],
        risk_limits=LIMITS,
        cash_usd=CASH_USD,
    )
    return await run_replay(config, OverlaySettings(anthropic_api_key=None, max_order_notional_usd=ORDER_BUDGET_USD))


def closes_of(csv_path: Path) -> list[tuple[str, Decimal]]:
    with csv_path.open(newline="") as handle:
        return [(row["date"], cents(Decimal(row["close"]))) for row in csv.DictReader(handle)]


def check(report: ReplayReport, expected: Expected) -> None:
    assert trade_list(report) == expected.trades
    assert report.cash_usd == expected.cash_usd
    assert report.realized_pnl_usd == expected.realized_pnl_usd
    assert report.final_equity_usd == expected.final_equity_usd
    assert report.total_pnl_usd == expected.final_equity_usd - CASH_USD


async def test_ibm_2010_from_a_csv_equals_the_independent_computation() -> None:
    path = Path(__file__).parent / "data" / "replay_ibm_2010h1.csv"
    low, high = Decimal(125), Decimal(130)
    expected = independent_threshold_strategy(closes_of(path), low, high)
    assert len(expected.trades) >= 8 and {side for _, side, _, _ in expected.trades} == {"BUY", "SELL"}
    check(await replay(path, "IBM", low, high), expected)


async def test_msft_2012_shipped_in_a_pypi_package_equals_the_independent_computation(tmp_path: Path) -> None:
    msft = stocks.MSFT
    path = tmp_path / "MSFT.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["date", "open", "high", "low", "close", "volume"])
        for index, date in enumerate(msft["date"]):
            if date.startswith("2012-"):
                writer.writerow([date, *(msft[key][index] for key in ("open", "high", "low", "close", "volume"))])
    low, high = Decimal(29), Decimal(31)
    closes = closes_of(path)
    assert len(closes) == 250
    expected = independent_threshold_strategy(closes, low, high)
    assert len(expected.trades) >= 6 and {side for _, side, _, _ in expected.trades} == {"BUY", "SELL"}
    report = await replay(path, "MSFT", low, high)
    check(report, expected)
    assert report.settings.bars == 250 and report.settings.first_bar.date().isoformat() == "2012-01-03"
