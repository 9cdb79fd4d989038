"""position_monitor: each open position's entry logic and exit criteria (the seed's "position memory"), and
what to do when one is met: an exit proposal for a stock position; an alert, or a buy to close, for a short
call that covered_call sold.

remember -> gather -> evaluate -> check_risk -> propose -> await_approval -> execute -> close_memory -> record
(a hold or an alert goes from evaluate straight to record)

Stock positions. Params: `symbol` (omit to look at every remembered position), and optionally `entry_logic`
and `exit_criteria` ({stop_loss_pct, take_profit_pct, max_holding_hours}) to remember for that symbol first.
Stop and target are percentages of the position's average cost (a stop of 5 exits at -5%); holding time
counts from `entered_at`. An exit sells a long position (buys back a short) in full, at market, through
the shared risk / approval / execute-once nodes.

Short calls (memory written by covered_call, see workflows/short_calls.py), matched to the broker's option
position by conid:
- the underlying within the remembered distance of the strike (or past it): an alert, once per entry and
  crossing (re-armed when the underlying falls back below the alert price). It is a market event on the
  urgent channel (MCP clients that set a log level get it as a log message, like a fired trigger), a
  position_monitor run whose summary starts "alert:" (get_context's recent runs, list_workflows), and an
  audit row `position_alert` under the covered_call run that sold the call;
- `buy_to_close` on and days to expiry <= the remembered N: a run proposing BUY of every contract held, a
  limit at the option's ask (its mid or last when there is no ask; at market when it has no quote), through
  the same risk / approval / execute-once nodes; workflows/option_risk.py judges a closing buy as reducing;
- the position gone at the broker (bought back, assigned, expired) or past its expiry: the memory is marked
  closed (`closed_at`, `closed_reason`, audit `position_closed`) and nothing more fires for it.

`monitor_positions(runner)` is the periodic check: plain code over one positions call and one batched quote
(stocks and underlyings together), starting a run only when something is due, at most once per position
entry and rule (per crossing for alerts). The clock is this module's `utc_now`; expiry days count New York
dates.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, Field

from broker.models import Position
from broker.options import option_label, option_quotes
from poller.events import TriggerEvent
from workflows.deps import WorkflowDeps
from workflows.graphs.common import (
    TradeState,
    after_approval,
    after_propose,
    after_risk,
    await_approval,
    make_check_risk,
    make_execute,
    make_propose,
    make_record,
)
from workflows.models import OrderIntent, Recommendation
from workflows.option_risk import OptionRiskGate
from workflows.short_calls import (
    BUY_TO_CLOSE,
    NEAR_STRIKE,
    ShortCallStatus,
    ShortCallWatch,
    alert_text,
    close_details,
    close_intent,
    evaluate_short_call,
    remembered,
    short_call_watch,
)
from workflows.store import MarketEvent, PositionMemory, WorkflowStore
from workflows.times import as_utc, utc_now

if TYPE_CHECKING:
    from workflows.runner import WorkflowRunner

WORKFLOW = "position_monitor"
Rule = Literal["stop_loss", "take_profit", "max_holding_time"]
RULE_ORDER: tuple[Rule, ...] = ("stop_loss", "take_profit", "max_holding_time")


class ExitCriteria(BaseModel):
    stop_loss_pct: float | None = Field(default=None, gt=0, description="exit at this % loss from avg cost")
    take_profit_pct: float | None = Field(default=None, gt=0, description="exit at this % gain from avg cost")
    max_holding_hours: float | None = Field(default=None, gt=0)
    entered_at: datetime | None = None


class Evaluation(BaseModel):
    symbol: str
    quantity: float
    avg_cost: float
    price: float | None
    pnl_pct: float | None
    held_hours: float | None
    entry_logic: str
    criteria: ExitCriteria
    met: Rule | None = None
    reason: str


async def remember_entry(
    store: WorkflowStore, symbol: str, workflow_id: str, entry_logic: str, criteria: ExitCriteria | None = None
) -> None:
    """What other workflows call when they open a position: why, and when to leave it."""
    criteria = criteria or ExitCriteria()
    if criteria.entered_at is None:
        criteria = criteria.model_copy(update={"entered_at": utc_now()})
    await store.remember_position(
        PositionMemory(
            symbol=symbol.upper(),
            workflow_id=workflow_id,
            entry_logic=entry_logic,
            exit_criteria_json=criteria.model_dump_json(),
            updated_at=utc_now(),
        )
    )


def criteria_of(memory: PositionMemory) -> ExitCriteria:
    return ExitCriteria.model_validate(json.loads(memory.exit_criteria_json or "{}"))


def evaluate(position: Position, price: float | None, memory: PositionMemory, now: datetime) -> Evaluation:
    """Which exit criterion the position meets now, first by RULE_ORDER (a stop before a target)."""
    criteria = criteria_of(memory)
    long = position.quantity > 0
    pnl_pct = None
    if price is not None and position.avg_cost > 0:
        pnl_pct = round(((price / position.avg_cost - 1) * 100) * (1 if long else -1), 3)
    held_hours = (now - as_utc(criteria.entered_at)).total_seconds() / 3600 if criteria.entered_at else None
    met: dict[Rule, str] = {}
    if pnl_pct is not None and criteria.stop_loss_pct is not None and pnl_pct <= -criteria.stop_loss_pct:
        met["stop_loss"] = f"P&L {pnl_pct:+.2f}% reached the stop at -{criteria.stop_loss_pct:g}%"
    if pnl_pct is not None and criteria.take_profit_pct is not None and pnl_pct >= criteria.take_profit_pct:
        met["take_profit"] = f"P&L {pnl_pct:+.2f}% reached the target at +{criteria.take_profit_pct:g}%"
    if held_hours is not None and criteria.max_holding_hours is not None and held_hours >= criteria.max_holding_hours:
        met["max_holding_time"] = f"held {held_hours:.1f} h, the limit is {criteria.max_holding_hours:g} h"
    rule = next((r for r in RULE_ORDER if r in met), None)
    pnl = f"P&L {pnl_pct:+.2f}%" if pnl_pct is not None else "no price"
    return Evaluation(
        symbol=position.symbol,
        quantity=position.quantity,
        avg_cost=position.avg_cost,
        price=price,
        pnl_pct=pnl_pct,
        held_hours=round(held_hours, 3) if held_hours is not None else None,
        entry_logic=memory.entry_logic,
        criteria=criteria,
        met=rule,
        reason=met[rule] if rule else f"{pnl}: no exit criterion met",
    )


@dataclass(frozen=True)
class PositionLook:
    """One look at the remembered positions: stock evaluations, short calls not yet closed, their memories."""

    account_id: str
    stocks: list[Evaluation]
    short_calls: list[ShortCallStatus]
    memories: dict[str, PositionMemory]


async def look_at_positions(deps: WorkflowDeps, symbol: str | None = None) -> PositionLook:
    """One positions call and one batched quote (the stocks and the short calls' underlyings together), for
    every remembered position, or for one symbol (a stock, or the underlying of short calls) only."""
    account_id = await deps.trading_account()
    memories = {m.symbol: m for m in await deps.store.position_memories()}
    stock_memories: dict[str, PositionMemory] = {}
    watches: list[tuple[PositionMemory, ShortCallWatch]] = []
    for memory in memories.values():
        watch = short_call_watch(memory)
        if watch is None:
            stock_memories[memory.symbol] = memory
        elif watch.closed_at is None and (symbol is None or watch.underlying == symbol):
            watches.append((memory, watch))
    positions = await deps.broker.positions(account_id)
    stocks = [
        p
        for p in positions
        if p.asset_class == "STK"
        and p.quantity != 0
        and p.symbol in stock_memories
        and (symbol is None or p.symbol == symbol)
    ]
    options = {p.conid: p for p in positions if p.asset_class == "OPT"}
    short_underlyings = [
        w.underlying for _, w in watches if (p := options.get(w.option_conid)) is not None and p.quantity < 0
    ]
    wanted = list(dict.fromkeys([p.symbol for p in stocks] + short_underlyings))
    quotes = await deps.broker.quotes(wanted) if wanted else {}
    now = utc_now()
    return PositionLook(
        account_id=account_id,
        stocks=[evaluate(p, quotes[p.symbol].price, stock_memories[p.symbol], now) for p in stocks],
        short_calls=[
            evaluate_short_call(
                memory,
                watch,
                options.get(watch.option_conid),
                quotes[watch.underlying].price if watch.underlying in quotes else None,
                now,
            )
            for memory, watch in watches
        ],
        memories=memories,
    )


def exit_intent(evaluation: Evaluation) -> OrderIntent:
    return OrderIntent(
        workflow=WORKFLOW,
        symbol=evaluation.symbol,
        side="SELL" if evaluation.quantity > 0 else "BUY",
        quantity=abs(evaluation.quantity),
        reference_price=evaluation.price or evaluation.avg_cost,
    )


async def close_short_call(deps: WorkflowDeps, memory: PositionMemory, watch: ShortCallWatch, reason: str) -> None:
    """Mark the short call's memory closed, in it and in the audit trail of the run that sold it."""
    now = utc_now()
    await deps.store.remember_position(
        remembered(memory, watch.model_copy(update={"closed_at": now, "closed_reason": reason}), now)
    )
    await deps.audit.append(
        "position_closed",
        workflow="covered_call",
        workflow_id=memory.workflow_id,
        symbol=watch.underlying,
        position=memory.symbol,
        note=reason,
    )


class MonitorState(TradeState, total=False):
    evaluations: list[dict[str, Any]]
    short_calls: list[dict[str, Any]]


def _hold(rationale: str) -> MonitorState:
    return {
        "intent": None,
        "recommendation": Recommendation(action="hold", rationale=rationale, source="rules").model_dump(),
        "outcome": "hold",
        "summary": f"hold: {rationale}",
    }


def build(deps: WorkflowDeps) -> StateGraph:
    gated = dataclasses.replace(deps, risk=OptionRiskGate.around(deps.risk, deps.broker))

    async def remember(state: MonitorState) -> MonitorState:
        event = state.get("event") or {}
        symbol = str(event.get("symbol") or "").strip().upper()
        if symbol and ("exit_criteria" in event or "entry_logic" in event):
            existing = {m.symbol: m for m in await deps.store.position_memories()}.get(symbol)
            criteria = criteria_of(existing) if existing else ExitCriteria()
            changes = ExitCriteria.model_validate(event.get("exit_criteria") or {}).model_dump(exclude_unset=True)
            await remember_entry(
                deps.store,
                symbol,
                existing.workflow_id if existing else state["workflow_id"],
                str(event.get("entry_logic") or (existing.entry_logic if existing else "set by hand")),
                criteria.model_copy(update=changes),
            )
        return {"symbol": symbol} if symbol else {}

    async def gather(state: MonitorState) -> MonitorState:
        look = await look_at_positions(deps, state.get("symbol") or None)
        return {
            "account_id": look.account_id,
            "evaluations": [e.model_dump(mode="json") for e in look.stocks],
            "short_calls": [c.model_dump(mode="json") for c in look.short_calls],
            "decision": {},
        }

    async def decide(state: MonitorState) -> MonitorState:
        """A started-for event decides what this run is about: a near-strike alert or one buy to close.
        Otherwise (a run started by hand) the first stock exit met, else the first buy to close due."""
        event = state.get("event") or {}
        evaluations = [Evaluation.model_validate(e) for e in state["evaluations"]]
        calls = [ShortCallStatus.model_validate(c) for c in state.get("short_calls") or []]
        if event.get("rule") == NEAR_STRIKE:
            return {
                "intent": None,
                "recommendation": Recommendation(
                    action="hold", rationale=str(event["condition"]), source="rules"
                ).model_dump(),
                "outcome": "hold",
                "summary": f"alert: {event['condition']}",
            }
        if event.get("position_key"):
            call = next((c for c in calls if c.key == event["position_key"]), None)
            if call is not None and call.close_due:
                return await propose_close(state, call)
            return _hold(f"nothing to buy back: {call.reason if call else event['position_key'] + ' is closed'}")
        chosen = next((e for e in evaluations if e.met), None)
        if chosen is not None:
            return await propose_exit(state, chosen)
        due = next((c for c in calls if c.close_due), None)
        if due is not None:
            return await propose_close(state, due)
        lines = [f"{e.symbol}: {e.reason}" for e in evaluations] + [c.reason for c in calls]
        return _hold("; ".join(lines) or "no remembered open positions")

    async def propose_exit(state: MonitorState, chosen: Evaluation) -> MonitorState:
        intent = exit_intent(chosen)
        rationale = f"exit {chosen.symbol} ({chosen.met}): {chosen.reason}. Entry logic was: {chosen.entry_logic}"
        await _audit_analysis(state, intent, chosen.price, rationale)
        return {
            "symbol": chosen.symbol,
            "price": intent.reference_price,
            "intent": intent.model_dump(),
            "recommendation": Recommendation(
                action="sell" if intent.side == "SELL" else "buy",
                quantity=intent.quantity,
                rationale=rationale,
                confidence=1.0,
                source="rules",
            ).model_dump(),
            "proposal_details": {"exit_rule": chosen.met, "evaluation": chosen.model_dump(mode="json")},
        }

    async def propose_close(state: MonitorState, call: ShortCallStatus) -> MonitorState:
        quote = (await option_quotes(deps.broker, [call.watch.option_conid])).get(call.watch.option_conid)
        intent = close_intent(call, quote, WORKFLOW)
        rationale = (
            f"buy to close {call.key}: {call.days_to_expiry} day(s) to expiry (buy back "
            f"{call.watch.buy_to_close_days_before_expiry} day(s) before expiry, set when it was sold). {call.reason}. "
            f"Entry logic was: {call.entry_logic}"
        )
        await _audit_analysis(state, intent, intent.reference_price, rationale)
        return {
            "symbol": intent.symbol,
            "price": intent.reference_price,
            "intent": intent.model_dump(),
            "recommendation": Recommendation(
                action="buy",
                quantity=intent.quantity,
                order_type=intent.order_type,
                limit_price=intent.limit_price,
                rationale=rationale,
                confidence=1.0,
                source="rules",
            ).model_dump(),
            "proposal_details": close_details(call, intent),
        }

    async def _audit_analysis(state: MonitorState, intent: OrderIntent, price: float | None, rationale: str) -> None:
        await deps.audit.append(
            "analysis",
            workflow=WORKFLOW,
            workflow_id=state["workflow_id"],
            symbol=intent.symbol,
            action=intent.side,
            quantity=intent.quantity,
            price=price,
            claude_reasoning=rationale,
            source="rules",
        )

    async def close_memory(state: MonitorState) -> MonitorState:
        """After an exit fills, the memory of that entry is done with; a new entry writes a new one."""
        order = state.get("order") or {}
        if order.get("status") != "filled":
            return {}
        option = OrderIntent.model_validate(state["intent"]).option
        if option is None:
            await deps.store.remember_position(
                PositionMemory(
                    symbol=state["symbol"],
                    workflow_id=state["workflow_id"],
                    entry_logic="closed by position_monitor",
                    exit_criteria_json="{}",
                    updated_at=utc_now(),
                )
            )
            return {}
        key = option_label(option.underlying, option.expiry, option.strike, option.right)
        memory = next((m for m in await deps.store.position_memories() if m.symbol == key), None)
        watch = short_call_watch(memory) if memory is not None else None
        if memory is not None and watch is not None and watch.closed_at is None:
            contracts = order.get("filled_quantity") or order.get("quantity")
            price = f" at ${order['avg_fill_price']:,.2f}" if order.get("avg_fill_price") else ""
            reason = f"bought back {contracts:g} contract(s){price} by {state['workflow_id']}"
            await close_short_call(deps, memory, watch, reason)
        return {}

    write_record = make_record(deps, WORKFLOW, ("evaluations", "short_calls"))

    async def record(state: MonitorState) -> MonitorState:
        # LangGraph hands a node only the keys its annotation declares: this one declares MonitorState's.
        return await write_record(state)

    def after_decide(state: MonitorState) -> Literal["check_risk", "record"]:
        return "check_risk" if state.get("intent") else "record"

    graph = StateGraph(MonitorState)
    graph.add_node("remember", remember)
    graph.add_node("gather", gather)
    graph.add_node("evaluate", decide)
    graph.add_node("check_risk", make_check_risk(gated, WORKFLOW))
    graph.add_node("propose", make_propose(deps, WORKFLOW))
    graph.add_node("await_approval", await_approval)
    graph.add_node("execute", make_execute(deps, WORKFLOW))
    graph.add_node("close_memory", close_memory)
    graph.add_node("record", record)
    graph.add_edge(START, "remember")
    graph.add_edge("remember", "gather")
    graph.add_edge("gather", "evaluate")
    graph.add_conditional_edges("evaluate", after_decide)
    graph.add_conditional_edges("check_risk", after_risk)
    graph.add_conditional_edges("propose", after_propose)
    graph.add_conditional_edges("await_approval", after_approval)
    graph.add_edge("execute", "close_memory")
    graph.add_edge("close_memory", "record")
    graph.add_edge("record", END)
    return graph


class ExitEvent(TriggerEvent):
    """Something due on a remembered position: its id names the position entry and the rule (and the crossing,
    for an alert), so each is acted on once. `position_key` names a short call's memory entry."""

    rule: str
    position_key: str | None = None


async def monitor_positions(runner: WorkflowRunner) -> list[str]:
    """The periodic check: start a position_monitor run for each stock exit criterion met, each near-strike
    alert and each buy to close due, not acted on before; mark short calls that are over closed.
    Returns the workflow ids started."""
    deps = runner.deps
    look = await look_at_positions(deps)
    started: list[str] = []
    for evaluation in look.stocks:
        if evaluation.met is None:
            continue
        memory = look.memories[evaluation.symbol]
        entered = evaluation.criteria.entered_at or memory.updated_at
        event_id = f"exit:{evaluation.symbol}:{memory.workflow_id}:{as_utc(entered):%Y%m%dT%H%M%S}:{evaluation.met}"
        if await deps.store.run_for_event(event_id) is not None:
            continue
        run = await runner.start(
            WORKFLOW,
            event=ExitEvent(
                event_id=event_id,
                trigger_name=f"position exit: {evaluation.met}",
                symbol=evaluation.symbol,
                price=evaluation.price or evaluation.avg_cost,
                condition=evaluation.reason,
                action=f"execute_workflow:{WORKFLOW}",
                rule=evaluation.met,
            ),
        )
        started.append(run.workflow_id)
    for status in look.short_calls:
        started += await watch_short_call(runner, status, look.memories[status.key])
    return started


async def watch_short_call(runner: WorkflowRunner, status: ShortCallStatus, memory: PositionMemory) -> list[str]:
    """Act on one short call: close its memory when it is over; else alert (once per crossing), remember
    what was seen, and start the buy to close when due (once per entry). The memory is written before the
    buy-to-close run starts, since that run closes it when its order fills."""
    deps = runner.deps
    watch = status.watch
    if status.over:
        await close_short_call(deps, memory, watch, status.over)
        return []
    started: list[str] = []
    changes: dict[str, Any] = {}
    if status.contracts_held and not watch.held:
        changes["held"] = True
    if status.alert_due and status.underlying_price is not None:
        alert = alert_text(status)
        count = watch.alerts + 1
        event = ExitEvent(
            event_id=f"{NEAR_STRIKE}:{status.key}:{status.workflow_id}:{count}",
            trigger_name=f"covered call near strike: {status.key}",
            symbol=watch.underlying,
            price=status.underlying_price,
            condition=alert,
            action=f"execute_workflow:{WORKFLOW}",
            channel="urgent",
            rule=NEAR_STRIKE,
            position_key=status.key,
        )
        if await deps.store.run_for_event(event.event_id) is None:
            # A market event on the urgent channel: the change watcher announces it to MCP clients.
            if await deps.store.record_market_event(MarketEvent.of(event)):
                await deps.audit.append(
                    "position_alert",
                    workflow="covered_call",
                    workflow_id=status.workflow_id,
                    symbol=watch.underlying,
                    price=status.underlying_price,
                    position=status.key,
                    note=alert,
                )
            started.append((await runner.start(WORKFLOW, event=event)).workflow_id)
        changes |= {"near_strike": True, "alerts": count, "last_alert": f"{utc_now():%Y-%m-%d %H:%M} UTC: {alert}"}
    elif watch.near_strike and status.underlying_price is not None and not status.near_strike:
        changes["near_strike"] = False  # re-armed: the next crossing alerts again
    if changes:
        await deps.store.remember_position(remembered(memory, watch.model_copy(update=changes), utc_now()))
    if status.close_due:
        event_id = f"{BUY_TO_CLOSE}:{status.key}:{status.workflow_id}"
        if await deps.store.run_for_event(event_id) is None:
            run = await runner.start(
                WORKFLOW,
                event=ExitEvent(
                    event_id=event_id,
                    trigger_name=f"buy to close: {status.key}",
                    symbol=watch.underlying,
                    price=status.underlying_price or watch.strike,
                    condition=status.reason,
                    action=f"execute_workflow:{WORKFLOW}",
                    rule=BUY_TO_CLOSE,
                    position_key=status.key,
                ),
            )
            started.append(run.workflow_id)
    return started
