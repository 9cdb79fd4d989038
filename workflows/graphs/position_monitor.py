"""position_monitor: each open position's entry logic and exit criteria (the seed's "position memory"), and an
exit proposal when a criterion is met.

remember -> gather -> evaluate -> check_risk -> propose -> await_approval -> execute -> record
Params: `symbol` (omit to look at every remembered position), and optionally `entry_logic` and
`exit_criteria` ({stop_loss_pct, take_profit_pct, max_holding_hours}) to remember for that symbol first.
Stop and target are percentages of the position's average cost (a stop of 5 exits at -5%); holding time
counts from `entered_at`. An exit sells a long position (buys back a short) in full, at market, through
the shared risk / approval / execute-once nodes. `monitor_positions(runner)` is the periodic check: plain
code over one positions call and one batched quote, starting a run only for a position whose criterion
is met, at most once per position entry and criterion.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, Field

from broker.models import Position
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
from workflows.store import PositionMemory, WorkflowStore, as_utc, utc_now

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


async def evaluate_positions(deps: WorkflowDeps, symbol: str | None = None) -> tuple[str, list[Evaluation]]:
    """(account, an evaluation per open position that has a memory), optionally for one symbol only."""
    account_id = await deps.trading_account()
    memories = {m.symbol: m for m in await deps.store.position_memories()}
    positions = [
        p
        for p in await deps.broker.positions(account_id)
        if p.quantity != 0 and p.symbol in memories and (symbol is None or p.symbol == symbol)
    ]
    quotes = await deps.broker.quotes([p.symbol for p in positions]) if positions else {}
    now = utc_now()
    return account_id, [evaluate(p, quotes[p.symbol].price, memories[p.symbol], now) for p in positions]


def exit_intent(evaluation: Evaluation) -> OrderIntent:
    return OrderIntent(
        workflow=WORKFLOW,
        symbol=evaluation.symbol,
        side="SELL" if evaluation.quantity > 0 else "BUY",
        quantity=abs(evaluation.quantity),
        reference_price=evaluation.price or evaluation.avg_cost,
    )


class MonitorState(TradeState, total=False):
    evaluations: list[dict[str, Any]]


def build(deps: WorkflowDeps) -> StateGraph:
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
        account_id, evaluations = await evaluate_positions(deps, state.get("symbol") or None)
        return {
            "account_id": account_id,
            "evaluations": [e.model_dump(mode="json") for e in evaluations],
            "decision": {},
        }

    async def decide_exit(state: MonitorState) -> MonitorState:
        evaluations = [Evaluation.model_validate(e) for e in state["evaluations"]]
        chosen = next((e for e in evaluations if e.met), None)
        if chosen is None:
            lines = "; ".join(f"{e.symbol}: {e.reason}" for e in evaluations) or "no remembered open positions"
            return {
                "intent": None,
                "recommendation": Recommendation(action="hold", rationale=lines, source="rules").model_dump(),
            }
        intent = exit_intent(chosen)
        rationale = f"exit {chosen.symbol} ({chosen.met}): {chosen.reason}. Entry logic was: {chosen.entry_logic}"
        await deps.audit.append(
            "analysis",
            workflow=WORKFLOW,
            workflow_id=state["workflow_id"],
            symbol=chosen.symbol,
            action=intent.side,
            quantity=intent.quantity,
            price=chosen.price,
            claude_reasoning=rationale,
            source="rules",
        )
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

    async def forget_closed(state: MonitorState) -> MonitorState:
        """After an exit fills, the memory of that entry is done with; a new entry writes a new one."""
        if (state.get("order") or {}).get("status") == "filled":
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

    write_record = make_record(deps, WORKFLOW, ("evaluations",))

    async def record(state: MonitorState) -> MonitorState:
        # LangGraph hands a node only the keys its annotation declares: this one declares MonitorState's.
        return await write_record(state)

    graph = StateGraph(MonitorState)
    graph.add_node("remember", remember)
    graph.add_node("gather", gather)
    graph.add_node("evaluate", decide_exit)
    graph.add_node("check_risk", make_check_risk(deps, WORKFLOW))
    graph.add_node("propose", make_propose(deps, WORKFLOW))
    graph.add_node("await_approval", await_approval)
    graph.add_node("execute", make_execute(deps, WORKFLOW))
    graph.add_node("close_memory", forget_closed)
    graph.add_node("record", record)
    graph.add_edge(START, "remember")
    graph.add_edge("remember", "gather")
    graph.add_edge("gather", "evaluate")
    graph.add_edge("evaluate", "check_risk")
    graph.add_conditional_edges("check_risk", after_risk)
    graph.add_conditional_edges("propose", after_propose)
    graph.add_conditional_edges("await_approval", after_approval)
    graph.add_edge("execute", "close_memory")
    graph.add_edge("close_memory", "record")
    graph.add_edge("record", END)
    return graph


class ExitEvent(TriggerEvent):
    """An exit criterion met: its id names the position entry and the rule, so each is proposed once."""

    rule: str


async def monitor_positions(runner: WorkflowRunner) -> list[str]:
    """The periodic check: start a position_monitor run for each position whose exit criterion is met and
    was not proposed before. Returns the workflow ids started."""
    deps = runner.deps
    _, evaluations = await evaluate_positions(deps)
    started: list[str] = []
    for evaluation in evaluations:
        if evaluation.met is None:
            continue
        memory = {m.symbol: m for m in await deps.store.position_memories()}[evaluation.symbol]
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
    return started
