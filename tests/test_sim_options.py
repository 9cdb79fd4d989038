"""The simulated option chain: IB's search -> strikes -> secdef info flow through real MCP calls,
Black-Scholes quotes in snapshots, and option fills booked at 100 shares per contract."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from mcp import Client

from broker import black_scholes
from broker.client import BrokerClient
from broker.errors import BrokerError
from broker.options import listed_options, option_months, option_quotes, option_strikes
from broker.sim.market import MarketSimulator, StartingPosition
from broker.sim.options import OptionSettings, expiry_instant, monthly_expiries, third_friday
from broker.sim.prices import WalkSettings
from broker.sim.server import build_sim_server

pytestmark = pytest.mark.anyio

NOW_S = 1_764_000_000.0  # Mon 2025-11-24 16:00 UTC


def make_market(**options: object) -> MarketSimulator:
    return MarketSimulator(
        ["AAPL"],
        walks={"AAPL": WalkSettings(start_price_usd=Decimal("190.00"), volatility_pct=0.0)},
        positions=[StartingPosition("AAPL", Decimal(200), Decimal(150))],
        order_questions={},
        clock=lambda: NOW_S,
        options=OptionSettings(**options),  # type: ignore[arg-type]
    )


def test_expiries_are_third_fridays_after_today() -> None:
    assert third_friday(2025, 12) == date(2025, 12, 19)
    assert third_friday(2026, 1) == date(2026, 1, 16)
    assert monthly_expiries(date(2025, 12, 19), 2) == [date(2026, 1, 16), date(2026, 2, 20)]


def test_black_scholes_matches_a_textbook_value_and_inverts() -> None:
    # Hull's example: S=42, K=40, r=10%, sigma=20%, T=0.5 -> call 4.76, put 0.81.
    assert black_scholes.price("C", 42, 40, 0.5, 20, 10) == pytest.approx(4.76, abs=0.005)
    assert black_scholes.price("P", 42, 40, 0.5, 20, 10) == pytest.approx(0.81, abs=0.005)
    assert black_scholes.implied_volatility_pct("C", 4.7594, 42, 40, 0.5, 10) == pytest.approx(20, abs=0.01)
    assert black_scholes.delta("C", 42, 40, 0.5, 20, 10) == pytest.approx(0.7791, abs=1e-4)


async def test_chain_flow_quotes_and_a_short_call_fill_through_mcp() -> None:
    market = make_market(volatility_pct=25.0, risk_free_rate_pct=4.0)
    async with BrokerClient(build_sim_server(market)) as broker:
        months = await option_months(broker, "AAPL")
        assert months.conid == 265598 and months.months == ["DEC25", "JAN26", "FEB26"]
        strikes = await option_strikes(broker, months.conid, "DEC25")
        assert strikes["call"] == strikes["put"] and 200.0 in strikes["call"]
        assert all(b - a == 2.5 for a, b in zip(strikes["call"], strikes["call"][1:], strict=False))
        [call] = await listed_options(broker, "AAPL", months.conid, "DEC25", 200.0, "C")
        assert (call.expiry, call.strike, call.right, call.multiplier) == ("20251219", 200.0, "C", 100)

        quote = (await option_quotes(broker, [call.conid]))[call.conid]
        years = (expiry_instant(date(2025, 12, 19)).timestamp() - NOW_S) / (365 * 86_400)
        expected = black_scholes.price("C", 190.0, 200.0, years, 25.0, 4.0)
        assert quote.mid == pytest.approx(expected, abs=0.01)
        assert quote.ask is not None and quote.bid is not None and quote.ask - quote.bid == pytest.approx(0.10)

        cash_before = market.cash()
        payload = await broker.call(
            "place_order_iserver_account",
            {
                "accountId": market.account_id,
                "orders": [{"conid": call.conid, "orderType": "MKT", "side": "SELL", "tif": "DAY", "quantity": 2}],
            },
        )
        assert payload["result"][0]["order_status"] == "Filled"
        assert market.cash() == cash_before + Decimal(str(quote.bid)) * 200 - Decimal("1.30")
        positions = {(p.asset_class, p.conid): p for p in await broker.positions(market.account_id)}
        short = positions[("OPT", call.conid)]
        assert short.symbol == "AAPL" and short.quantity == -2
        assert short.market_value == pytest.approx(-2 * 100 * (quote.last or 0))
        assert positions[("STK", 265598)].quantity == 200

        with pytest.raises(BrokerError, match="404"):
            await broker.call("get_options_chains_trsrv_secdef_chains_get", {"symbol": "AAPL"})


async def test_option_price_follows_the_underlying_and_a_resting_limit_fills_when_crossed() -> None:
    market = make_market()
    async with Client(build_sim_server(market)) as client:
        info = await client.call_tool(
            "get_secdef_info_iserver_secdef_info_get",
            {"conid": "265598", "secType": "OPT", "month": "JAN26", "strike": 200, "right": "C"},
        )
        [contract] = info.structured_content["result"]
        assert contract["maturityDate"] == "20260116" and contract["multiplier"] == "100"
    option = market.instrument_by_conid(contract["conid"])
    assert option is not None
    before = market.quote_instrument(option)
    limit = before.ask
    market.submit_order(
        market.account_id,
        [{"conid": option.conid, "orderType": "LMT", "price": str(limit), "side": "SELL", "tif": "DAY", "quantity": 1}],
    )
    [order] = market.orders
    assert order.status == "Submitted"
    market.set_price("AAPL", "195.00")
    assert market.quote_instrument(option).bid > before.bid
    assert order.status == "Filled" and order.avg_fill_price == market.quote_instrument(option).bid


async def test_without_options_the_search_has_no_opt_section() -> None:
    market = MarketSimulator(["AAPL"])
    async with BrokerClient(build_sim_server(market)) as broker:
        with pytest.raises(BrokerError, match="no listed options"):
            await option_months(broker, "AAPL")
