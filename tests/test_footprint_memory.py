"""What the embedded demo holds in memory stays bounded however long it runs: the simulated market keeps its
latest `history_bars` bars, and the history tool still serves them in order."""

from __future__ import annotations

from decimal import Decimal

from broker.sim.market import MarketSimulator
from broker.sim.prices import WalkSettings


def test_a_long_running_random_walk_keeps_its_latest_bars_only() -> None:
    settings = WalkSettings(start_price_usd=Decimal("100"), warmup_bars=20, history_bars=50)
    market = MarketSimulator(["XYZ"], walks={"XYZ": settings})
    market.step(30)
    assert len(market.history("XYZ")) == 20 + 1 + 30
    market.step(500)
    history = market.history("XYZ")
    assert len(history) == 50 + 1
    assert history[-1].close == market.quote("XYZ").last
    assert [bar.ts_ms for bar in history] == sorted(bar.ts_ms for bar in history)
    assert history[-1].ts_ms - history[0].ts_ms == 50 * settings.bar_interval_s * 1000
