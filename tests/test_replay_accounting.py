"""Replay accounting against a hand computation, the approval policies, simulated time, and the CLI.

tests/data/replay_hand.csv (AAPL, six daily closes): 100.50, 99.00, 101.00, 111.00, 98.00, 105.00.
Triggers: "buy dip" price < 100 (offline analyst: buy floor(0.5 x $5,000 / price)), "take profit" price > 110
(sell half the shares held). Slippage 10 bps (buy at close x 1.001, sell at close x 0.999, to the cent),
commission $0.05/share, $1 minimum. By hand:
  03-04 BUY 25 @ 99.10 (99 x 1.001 = 99.099), fee 1.25; cash 100000 - 2477.50 - 1.25 = 97521.25;
        average cost (2477.50 + 1.25) / 25 = 99.15
  03-06 SELL 12 @ 110.89 (111 x 0.999 = 110.889), fee 1.00 (minimum); realised 12 x (110.89 - 99.15) - 1 =
        139.88; cash 97521.25 + 1330.68 - 1.00 = 98850.93; 13 left at 99.15
  03-07 BUY 25 @ 98.10 (98 x 1.001 = 98.098), fee 1.25; cash 98850.93 - 2452.50 - 1.25 = 96397.18;
        38 held, cost 13 x 99.15 + 2452.50 + 1.25 = 3742.70
  03-08 close 105: market value 3990.00, unrealised 3990.00 - 3742.70 = 247.30, equity 100387.18,
        total P&L 387.18 = 139.88 + 247.30.
  Equity by day: 100000.00, 99996.25, 100046.25, 100293.93, 100121.18, 100387.18 -> max drawdown 172.75
  (from 100293.93 on 03-06 to 100121.18 on 03-07).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from broker.sim.accounting import CommissionSchedule
from broker.sim.prices import Bar, load_bars_csv
from mcp_overlay_server.cli import main
from mcp_overlay_server.settings import OverlaySettings
from poller.triggers import TriggerSpec
from replay.engine import ReplayConfig, ReplayError, run_replay
from replay.market import NO_COMMISSION, parse_commission
from replay.policy import ApprovalPolicy
from workflows.risk import RiskLimits

pytestmark = pytest.mark.anyio

HAND_CSV = Path(__file__).parent / "data" / "replay_hand.csv"
TRIGGERS = [
    TriggerSpec(name="buy dip", symbol="AAPL", condition="price < 100"),
    TriggerSpec(name="take profit", symbol="AAPL", condition="price > 110"),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def offline_settings() -> OverlaySettings:
    return OverlaySettings(anthropic_api_key=None, max_order_notional_usd=5000)


def hand_config(**changes: object) -> ReplayConfig:
    options: dict[str, object] = {
        "bars": load_bars_csv(HAND_CSV, "AAPL"),
        "triggers": TRIGGERS,
        "commission": parse_commission("0.05,1"),
        "slippage_bps": Decimal(10),
    }
    return ReplayConfig(**(options | changes))  # type: ignore[arg-type]


def d(text: str) -> Decimal:
    return Decimal(text)


async def test_fills_cash_and_pnl_equal_the_hand_computation() -> None:
    report = await run_replay(hand_config(), offline_settings())

    assert [(t.ts.date().isoformat(), t.side, t.quantity, t.price_usd, t.commission_usd) for t in report.trades] == [
        ("2024-03-04", "BUY", 25, d("99.10"), d("1.25")),
        ("2024-03-06", "SELL", 12, d("110.89"), d("1.00")),
        ("2024-03-07", "BUY", 25, d("98.10"), d("1.25")),
    ]
    assert [t.realized_pnl_usd for t in report.trades] == [0, d("139.88"), 0]
    assert [t.trigger for t in report.trades] == ["buy dip", "take profit", "buy dip"]
    assert {t.workflow for t in report.trades} == {"price_alert"}
    assert report.cash_usd == d("96397.18")
    assert report.realized_pnl_usd == d("139.88")
    assert report.unrealized_pnl_usd == d("247.30")
    assert report.final_equity_usd == d("100387.18")
    assert report.total_pnl_usd == d("387.18") == report.realized_pnl_usd + report.unrealized_pnl_usd
    assert report.commissions_usd == d("3.50")
    [position] = report.positions
    assert (position.quantity, position.market_value_usd) == (38, d("3990.00"))
    assert [p.equity_usd for p in report.equity_curve] == [
        d("100000.00"),
        d("99996.25"),
        d("100046.25"),
        d("100293.93"),
        d("100121.18"),
        d("100387.18"),
    ]
    assert report.drawdown.max_drawdown_usd == d("172.75")
    assert report.drawdown.trough_at is not None and report.drawdown.trough_at.date().isoformat() == "2024-03-07"
    assert report.max_exposure_usd == d("3990.00")
    assert report.win_rate == 1.0
    by_trigger = {line.name: line for line in report.by_trigger}
    assert by_trigger["take profit"].realized_pnl_usd == d("139.88") and by_trigger["take profit"].wins == 1
    assert by_trigger["buy dip"].bought_usd == d("4930.00") and by_trigger["buy dip"].win_rate is None
    [workflow] = report.by_workflow
    assert (workflow.name, workflow.fills, workflow.commissions_usd) == ("price_alert", 3, d("3.50"))
    assert report.claude.calls == 0 and report.settings.analyst == "offline"


async def test_reject_all_trades_nothing_and_under_a_notional_approves_only_small_orders() -> None:
    rejected = await run_replay(hand_config(policy=ApprovalPolicy.parse("none")), offline_settings())
    assert rejected.trades == []
    assert rejected.final_equity_usd == d("100000.00")
    assert [(x.trigger, x.approval, x.status) for x in rejected.decisions] == [
        ("buy dip", "reject", "rejected"),
        ("take profit", None, "completed"),  # nothing held: the analyst holds
        ("buy dip", "reject", "rejected"),
    ]

    # The notional is at the proposal's price: 25 x 99.00 = 2475 > 2460 is refused, 25 x 98.00 = 2450 is not.
    small = await run_replay(hand_config(policy=ApprovalPolicy.parse("under:2460")), offline_settings())
    assert [(t.side, t.quantity, t.price_usd) for t in small.trades] == [("BUY", 25, d("98.10"))]
    assert [x.approval for x in small.decisions] == ["reject", None, "approve"]


def intraday_bars(step: timedelta) -> dict[str, list[Bar]]:
    start = datetime(2024, 5, 1, 14, 0, tzinfo=UTC)
    closes = ["50.00", "49.00", "51.00", "48.00"]
    return {
        "XYZ": [
            Bar(int((start + i * step).timestamp() * 1000), d(c), d(c), d(c), d(c), 1000) for i, c in enumerate(closes)
        ]
    }


@pytest.mark.parametrize(("step", "expected_fills"), [(timedelta(minutes=10), 1), (timedelta(hours=2), 2)])
async def test_the_order_rate_limit_counts_simulated_time(step: timedelta, expected_fills: int) -> None:
    """One order per hour: bars 10 minutes apart allow the first dip's order only; 2 hours apart, both."""
    config = ReplayConfig(
        bars=intraday_bars(step),
        triggers=[TriggerSpec(name="dip", symbol="XYZ", condition="price < 50")],
        commission=NO_COMMISSION,
        risk_limits=RiskLimits(max_orders_per_hour=1),
    )
    report = await run_replay(config, offline_settings())
    assert len(report.trades) == expected_fills
    statuses = [x.status for x in report.decisions]
    assert statuses == ["completed", "denied"] if expected_fills == 1 else ["completed", "completed"]


async def test_a_trigger_on_a_symbol_without_bars_is_refused_with_the_reason() -> None:
    config = hand_config(triggers=[TriggerSpec(name="t", symbol="MSFT", condition="price > 1")])
    with pytest.raises(ReplayError, match="MSFT"):
        await run_replay(config, offline_settings())
    with pytest.raises(ReplayError, match="moonshot"):
        await run_replay(hand_config(workflows=frozenset({"moonshot"})), offline_settings())


def test_commission_and_policy_parsing() -> None:
    assert parse_commission("ib") == CommissionSchedule()
    assert parse_commission("0.01,2,0.5") == CommissionSchedule(
        per_share_usd=d("0.01"), minimum_usd=d("2"), maximum_pct_of_value=d("0.5")
    )
    assert parse_commission("none").commission(d(100), d(10)) == 0
    with pytest.raises(ValueError, match="numbers"):
        parse_commission("a,b")
    assert ApprovalPolicy.parse("under:1000").approves(1000.0)
    assert not ApprovalPolicy.parse("under:1000").approves(1000.01)
    assert not ApprovalPolicy.parse("none").approves(1.0)
    with pytest.raises(ValueError, match="under:USD"):
        ApprovalPolicy.parse("maybe")


def test_cli_replay_writes_json_and_html(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "triggers.yaml"
    config.write_text(
        "polling:\n  interval_seconds: 1\n  symbols: [AAPL]\ntriggers:\n"
        '  - {name: buy dip, symbol: AAPL, condition: "price < 100"}\n'
        '  - {name: take profit, symbol: AAPL, condition: "price > 110"}\n'
    )
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("OVERLAY_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "report"
    argv = ["replay", "--data", str(HAND_CSV), "--symbol", "AAPL", "--config", str(config), "--out", str(out)]
    assert main([*argv, "--commission", "0.05,1", "--slippage-bps", "10", "--log-format", "text"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["total_pnl_usd"] == "387.18" and len(report["trades"]) == 3
    html = (out / "report.html").read_text()
    assert "Replay report: AAPL" in html and "<script src=" not in html
    assert main([*argv, "--approve", "sometimes"]) == 2
