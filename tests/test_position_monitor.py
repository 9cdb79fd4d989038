"""position_monitor: remembered entry logic and exit criteria; an exit proposed when one is met, through the
shared risk / approval / execute-once path; the periodic check proposes each exit once. Short calls sold by
covered_call (options on in the simulated IB_MCP, Claude mocked at the HTTP layer): a near-strike alert once per
crossing, a buy to close N days before expiry, the memory closed when the position is over."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
import respx
from mcp import Client

from broker.options import NEW_YORK
from broker.sim.market import MarketSimulator, StartingPosition
from broker.sim.options import OptionSettings
from broker.sim.prices import WalkSettings
from broker.sim.server import build_sim_server
from mcp_overlay_server.app import Overlay, open_overlay
from mcp_overlay_server.server import build_server
from tests.anthropic_mock import MESSAGES_URL, message_json, mock_anthropic_client
from tests.test_walking_skeleton import call, settings_for
from workflows.analyst import ClaudeAnalyst
from workflows.graphs.position_monitor import ExitCriteria, monitor_positions, remember_entry
from workflows.models import OrderIntent
from workflows.short_calls import ShortCallWatch, short_call_watch

pytestmark = pytest.mark.anyio


def held_market() -> MarketSimulator:
    return MarketSimulator(
        ["AAPL", "MSFT"],
        seed=2,
        walks={"AAPL": WalkSettings(start_price_usd=Decimal("199.50"), volatility_pct=0.0)},
        positions=[StartingPosition("AAPL", Decimal(50), Decimal(180))],
    )


def opened(tmp_path: Path, market: MarketSimulator) -> Any:
    return open_overlay(settings_for(tmp_path), target=build_sim_server(market), run_poller=False)


async def enable(overlay: Overlay) -> None:
    limits = overlay.risk.engine.limits
    await overlay.risk.set_limits(limits.model_copy(update={"enabled_strategies": frozenset({"position_monitor"})}))


@pytest.fixture
def market() -> MarketSimulator:
    return held_market()


@pytest.fixture
async def overlay(tmp_path: Path, market: MarketSimulator) -> AsyncIterator[Overlay]:
    async with opened(tmp_path, market) as opened_overlay:
        await enable(opened_overlay)
        yield opened_overlay


async def test_target_met_proposes_a_full_exit_and_approval_sells_once(
    overlay: Overlay, market: MarketSimulator
) -> None:
    async with Client(build_server(overlay)) as client:
        run = await overlay.runner.start(
            "position_monitor",
            params={"symbol": "AAPL", "entry_logic": "breakout above $180", "exit_criteria": {"take_profit_pct": 10}},
        )
        assert run.status == "awaiting_approval"
        [proposal] = (await call(client, "list_pending_approvals"))["approvals"]
        assert (proposal["side"], proposal["quantity"]) == ("SELL", 50)
        assert proposal["details"]["exit_rule"] == "take_profit"
        assert "breakout above $180" in proposal["rationale"]
        decision = await call(client, "approve_trade", approval_id=proposal["approval_id"], decision="approve")
        assert decision["run"]["status"] == "completed"
        assert market.position("AAPL") == 0 and len(market.orders) == 1
        assert [m.entry_logic for m in await overlay.store.position_memories()] == ["closed by position_monitor"]


async def test_no_criterion_met_holds_and_says_where_it_stands(overlay: Overlay, market: MarketSimulator) -> None:
    run = await overlay.runner.start(
        "position_monitor", params={"symbol": "AAPL", "exit_criteria": {"take_profit_pct": 20, "stop_loss_pct": 5}}
    )
    assert run.status == "completed"
    assert "P&L +10.83%: no exit criterion met" in run.summary
    [evaluation] = run.result["evaluations"]
    assert evaluation["criteria"]["take_profit_pct"] == 20
    assert market.orders == []


async def test_periodic_check_proposes_a_stop_once(overlay: Overlay, market: MarketSimulator) -> None:
    await remember_entry(overlay.store, "AAPL", "price_alert-1", "bought the dip", ExitCriteria(stop_loss_pct=5))
    assert await monitor_positions(overlay.runner) == []
    market.set_price("AAPL", "170.00")
    [started] = await monitor_positions(overlay.runner)
    assert await monitor_positions(overlay.runner) == []
    status = await overlay.runner.status(started)
    assert status.status == "awaiting_approval"
    [pending] = await overlay.runner.pending()
    assert pending.details["exit_rule"] == "stop_loss" and pending.quantity == 50
    assert market.orders == []


async def test_max_holding_time_and_a_restart_in_the_approval_wait(tmp_path: Path, market: MarketSimulator) -> None:
    async with opened(tmp_path, market) as overlay:
        await enable(overlay)
        run = await overlay.runner.start(
            "position_monitor", params={"symbol": "AAPL", "exit_criteria": {"max_holding_hours": 1e-9}}
        )
        [pending] = await overlay.runner.pending()
        assert pending.details["exit_rule"] == "max_holding_time"
    async with opened(tmp_path, market) as overlay:
        decided = await overlay.runner.decide(pending.approval_id, "approve")
        assert decided.accepted and decided.run is not None and decided.run.workflow_id == run.workflow_id
    assert [o.client_order_id for o in market.orders] == [f"ovl-{pending.approval_id}"]


# --- short calls sold by covered_call: near-strike alerts and buy to close ------------------------------------


class Clock:
    """The simulator's clock and position_monitor's, moved by the test (no sleeping)."""

    def __init__(self) -> None:
        self.epoch_s = time.time()

    def __call__(self) -> float:
        return self.epoch_s

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.epoch_s, UTC)

    def set_new_york(self, day: date, hour: int) -> None:
        self.epoch_s = datetime.combine(day, dt_time(hour), NEW_YORK).timestamp()


def option_market(clock: Clock) -> MarketSimulator:
    return MarketSimulator(
        ["AAPL", "MSFT"],
        seed=5,
        walks={"AAPL": WalkSettings(start_price_usd=Decimal("190.00"), volatility_pct=0.0)},
        positions=[StartingPosition("AAPL", Decimal(250), Decimal(150))],
        options=OptionSettings(volatility_pct=25.0),
        clock=clock,
    )


def claude_sells_two_far_calls(request: httpx.Request) -> httpx.Response:
    """Claude's answer: 2 contracts of the highest strike on the expiry nearest 30 days (at least 10 away)."""
    prompt = json.loads(request.content)["messages"][0]["content"]
    candidates = json.loads(prompt[prompt.index("{") : prompt.rindex("}") + 1])["candidates"]
    later = [c for c in candidates if c["days_to_expiry"] >= 10]
    expiry = min(later, key=lambda c: abs(c["days_to_expiry"] - 30))["expiry"]
    pick = max((c for c in later if c["expiry"] == expiry), key=lambda c: c["strike"])
    answer = {"action": "sell_call", "conid": pick["conid"], "contracts": 2, "rationale": "far OTM", "confidence": 0.7}
    return httpx.Response(200, json=message_json(json.dumps(answer)))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    moved = Clock()
    monkeypatch.setattr("workflows.graphs.position_monitor.utc_now", moved.now)
    router = respx.Router(assert_all_mocked=True)
    router.post(MESSAGES_URL).mock(side_effect=claude_sells_two_far_calls)
    monkeypatch.setattr(
        "workflows.analyst.build_analyst",
        lambda api_key, usage, **_: ClaudeAnalyst(mock_anthropic_client(router), usage=usage),
    )
    return moved


@asynccontextmanager
async def option_session(tmp_path: Path, market: MarketSimulator) -> AsyncIterator[tuple[Overlay, Client]]:
    async with opened(tmp_path, market) as overlay:
        strategies = frozenset({"covered_call", "position_monitor"})
        await overlay.risk.set_limits(overlay.risk.engine.limits.model_copy(update={"enabled_strategies": strategies}))
        async with Client(build_server(overlay)) as client:
            yield overlay, client


async def sell_calls(client: Client, **params: Any) -> dict[str, Any]:
    """covered_call through the MCP tools, sold at the bid (fills at once) and approved: the memory it wrote."""
    run = await call(
        client, "start_strategy", workflow="covered_call", symbol="AAPL", params=params | {"limit_at": "bid"}
    )
    assert run["status"] == "awaiting_approval", run
    decision = await call(client, "approve_trade", approval_id=run["pending_approval_id"], decision="approve")
    assert decision["run"]["status"] == "completed" and decision["run"]["result"]["order"]["status"] == "filled"
    memory: dict[str, Any] = decision["run"]["result"]["position_memory"]
    memory["workflow_id"] = run["workflow_id"]
    return memory


def expiry_of(memory: dict[str, Any]) -> date:
    return datetime.strptime(memory["expiry"], "%Y%m%d").date()


def short_options(market: MarketSimulator) -> dict[int, Decimal]:
    return {p.instrument.conid: p.quantity for p in market.positions() if p.instrument.sec_type == "OPT"}


async def watch_of(overlay: Overlay, key: str) -> ShortCallWatch:
    [memory] = [m for m in await overlay.store.position_memories() if m.symbol == key]
    watch = short_call_watch(memory)
    assert watch is not None
    return watch


def near(memory: dict[str, Any]) -> str:
    """An underlying price within the remembered distance of the strike, below it."""
    return f"{(memory['strike'] + memory['alert_when_underlying_at_or_above_usd']) / 2:.2f}"


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_underlying_near_the_strike_alerts_once_per_crossing_and_the_model_sees_it(
    tmp_path: Path, clock: Clock
) -> None:
    market = option_market(clock)
    logged: list[dict[str, Any]] = []
    alerted = anyio.Event()

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logged.append(params.data)
        if str(params.data.get("trigger", "")).startswith("covered call near strike"):
            alerted.set()

    async with option_session(tmp_path, market) as (overlay, client):
        memory = await sell_calls(client)
        assert memory["buy_to_close"] and (expiry_of(memory) - clock.now().date()).days > 2
        server = build_server(overlay, watch_interval_s=0.05)
        async with Client(server, mode="legacy", logging_callback=on_log) as listener:
            await listener.set_logging_level("info")
            assert await monitor_positions(overlay.runner) == []
            await anyio.sleep(0.2)  # the change watcher's first look, so the alert is news to it

            market.set_price("AAPL", near(memory))
            [alert_run] = await monitor_positions(overlay.runner)
            assert await monitor_positions(overlay.runner) == []
            with anyio.fail_after(10):
                await alerted.wait()

        [alert] = [e for e in logged if str(e.get("trigger", "")).startswith("covered call near strike")]
        assert memory["key"] in alert["trigger"] and f"${memory['strike']:g} strike" in alert["condition"]
        context = await call(client, "get_context")
        [line] = [r for r in context["recent_runs"] if r["workflow_id"] == alert_run]
        assert line["workflow"] == "position_monitor" and line["summary"].startswith("alert: AAPL $")
        assert "2 short" in line["summary"] and memory["key"] in line["summary"]
        assert context["pending_approvals"] == []
        history = (await call(client, "get_audit_log", workflow_id=memory["workflow_id"]))["entries"]
        assert [e["payload"]["position"] for e in history if e["event"] == "position_alert"] == [memory["key"]]

        market.set_price("AAPL", "190.00")
        assert await monitor_positions(overlay.runner) == []
        assert (await watch_of(overlay, memory["key"])).near_strike is False
        market.set_price("AAPL", f"{memory['strike'] + 1:.2f}")
        [second] = await monitor_positions(overlay.runner)
        assert "above the" in (await overlay.runner.status(second)).summary
        assert (await watch_of(overlay, memory["key"])).alerts == 2
        assert [o.side for o in market.orders] == ["SELL"]


async def test_days_to_expiry_reaching_n_proposes_one_buy_to_close_and_approval_closes_the_memory(
    tmp_path: Path, clock: Clock
) -> None:
    market = option_market(clock)
    async with option_session(tmp_path, market) as (overlay, client):
        memory = await sell_calls(client, close_days_before_expiry=3)
        conid = memory["option_conid"]
        # REDUCING admits only position-reducing orders: the buy to close is one (it shrinks the short call).
        await call(client, "kill_switch", state="reducing", reason="test: reducing only")
        clock.set_new_york(expiry_of(memory) - timedelta(days=4), 12)
        assert await monitor_positions(overlay.runner) == []
        clock.set_new_york(expiry_of(memory) - timedelta(days=3), 12)
        [started] = await monitor_positions(overlay.runner)
        assert await monitor_positions(overlay.runner) == []

        [proposal] = (await call(client, "list_pending_approvals"))["approvals"]
        assert proposal["workflow_id"] == started and (proposal["side"], proposal["quantity"]) == ("BUY", 2)
        assert proposal["instrument"].startswith(f"AAPL {memory['expiry']} {memory['strike']:g} C")
        option_ask = float(market.quote_instrument(market.instrument_by_conid(conid)).ask)  # type: ignore[arg-type]
        assert (proposal["order_type"], proposal["limit_price"]) == ("LMT", option_ask)
        details = proposal["details"]
        assert details["exit_rule"] == "buy_to_close" and details["days_to_expiry"] == 3
        assert details["cost_usd"] == pytest.approx(option_ask * 200)
        assert len(market.orders) == 1

        decision = await call(client, "approve_trade", approval_id=proposal["approval_id"], decision="approve")
        assert decision["accepted"] and decision["run"]["status"] == "completed", decision
        [_, buy] = market.orders
        assert (buy.instrument.conid, buy.side, buy.quantity, buy.status) == (conid, "BUY", 2, "Filled")
        assert buy.client_order_id == f"ovl-{proposal['approval_id']}"
        assert short_options(market) == {}
        watch = await watch_of(overlay, memory["key"])
        assert watch.closed_at is not None and watch.closed_reason is not None
        assert watch.closed_reason.startswith("bought back 2 contract(s)")

        market.set_price("AAPL", near(memory))
        assert await monitor_positions(overlay.runner) == []
        assert len(market.orders) == 2
        assert await overlay.store.recent_market_events() == []


async def test_buy_to_close_off_alerts_only_and_expiry_closes_the_memory(tmp_path: Path, clock: Clock) -> None:
    market = option_market(clock)
    async with option_session(tmp_path, market) as (overlay, client):
        memory = await sell_calls(client, buy_to_close=False)
        assert memory["buy_to_close"] is False
        market.set_price("AAPL", near(memory))
        clock.set_new_york(expiry_of(memory) - timedelta(days=1), 12)
        [alert_run] = await monitor_positions(overlay.runner)
        alert = await overlay.runner.status(alert_run)
        assert alert.summary.startswith("alert: ") and "buy to close is off" in alert.summary
        assert await monitor_positions(overlay.runner) == []
        assert (await call(client, "list_pending_approvals"))["approvals"] == []

        clock.set_new_york(expiry_of(memory), 17)
        assert await monitor_positions(overlay.runner) == []
        watch = await watch_of(overlay, memory["key"])
        assert watch.closed_reason is not None and watch.closed_reason.startswith(f"expired {memory['expiry']}")
        market.set_price("AAPL", f"{memory['strike'] + 5:.2f}")
        assert await monitor_positions(overlay.runner) == []
        assert [o.side for o in market.orders] == ["SELL"]
        assert len(await overlay.store.recent_market_events()) == 1


async def test_a_restart_in_the_buy_to_close_approval_wait_resumes_and_buys_once(tmp_path: Path, clock: Clock) -> None:
    market = option_market(clock)
    async with option_session(tmp_path, market) as (overlay, client):
        memory = await sell_calls(client)
        clock.set_new_york(expiry_of(memory) - timedelta(days=2), 10)
        [started] = await monitor_positions(overlay.runner)
        [proposal] = (await call(client, "list_pending_approvals"))["approvals"]
    async with option_session(tmp_path, market) as (overlay, client):
        assert await monitor_positions(overlay.runner) == []
        decision = await call(client, "approve_trade", approval_id=proposal["approval_id"], decision="approve")
        assert decision["accepted"] and decision["run"]["workflow_id"] == started
        again = await call(client, "approve_trade", approval_id=proposal["approval_id"], decision="approve")
        assert again["accepted"] is False
        assert (await watch_of(overlay, memory["key"])).closed_at is not None
    assert [(o.side, o.client_order_id) for o in market.orders][1:] == [("BUY", f"ovl-{proposal['approval_id']}")]
    assert short_options(market) == {}


async def test_option_buys_beyond_the_short_are_denied_and_a_buy_back_elsewhere_closes_the_memory(
    tmp_path: Path, clock: Clock
) -> None:
    market = option_market(clock)
    async with option_session(tmp_path, market) as (overlay, client):
        memory = await sell_calls(client)
        watch = await watch_of(overlay, memory["key"])
        account_id = await overlay.runner.deps.trading_account()
        ask = float(market.quote_instrument(market.instrument_by_conid(watch.option_conid)).ask)  # type: ignore[arg-type]

        def buy(contracts: int) -> OrderIntent:
            return OrderIntent(
                workflow="position_monitor",
                symbol="AAPL",
                side="BUY",
                quantity=contracts,
                order_type="LMT",
                limit_price=ask,
                reference_price=ask,
                option=watch.contract(),
            )

        over = await overlay.runner.deps.risk.check(buy(3), account_id)
        assert not over.allowed and [d.rule for d in over.denials] == ["option_buys_close_only"]
        assert "2 short contract(s)" in over.summary
        assert (await overlay.runner.deps.risk.check(buy(2), account_id)).allowed
        # Seen as shares, the same buy adds to a $47,500 AAPL holding: the share-based gate alone refuses it.
        assert not (await overlay.risk.check(buy(2), account_id)).allowed

        assert await monitor_positions(overlay.runner) == []
        assert (await watch_of(overlay, memory["key"])).held
        market.submit_order(
            market.account_id,
            [{"conid": watch.option_conid, "side": "BUY", "orderType": "LMT", "price": ask, "quantity": 2}],
        )
        assert short_options(market) == {}
        market.set_price("AAPL", near(memory))
        assert await monitor_positions(overlay.runner) == []
        closed = await watch_of(overlay, memory["key"])
        assert closed.closed_reason == "no longer held at the broker (bought back, assigned or expired)"
        assert await monitor_positions(overlay.runner) == []
        assert await overlay.store.recent_market_events() == []
