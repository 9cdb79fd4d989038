"""momentum_trade (the seed's reactive workflow: "when AAPL drops 2%, analyse, decide if it is a buying
opportunity, execute a small position, monitor for exit").

gather -> analyse -> check_risk -> propose -> await_approval -> execute -> arm -> monitor (loop) -> exit -> record
The entry is small: at most `entry_fraction` of max_order_notional_usd. The one approval covers the entry
and its pre-declared exit (stop, target, time limit), which the proposal details state; the exit is a
reducing market SELL placed once (client order id = the entry's + "-exit") without a second approval.

Exits are watched by a monitoring loop, not a bracket order: the broker client places one order per
call, and IB's attached children (parentId) need several in one `orders` list. `monitor` polls the quote
every `monitor_interval_s`, at most `max_polls` times in all (then the time exit), in a bounded number of
checkpointed steps; a restart resumes the loop where its last step ended.

params: symbol, condition, entry_fraction (0.2), stop_loss_pct (1.0), take_profit_pct (2.0),
monitor_interval_s (5), max_polls (360).
"""

from __future__ import annotations

import math
from typing import Any

import anyio
from langgraph.graph import END, START, StateGraph

from broker.models import OrderTicket
from workflows.analyst import AnalysisRequest, crossing_direction
from workflows.deps import WorkflowDeps
from workflows.execution import client_order_id
from workflows.graphs.common import (
    TradeState,
    after_approval,
    after_propose,
    after_risk,
    audit_recommendation,
    await_approval,
    make_check_risk,
    make_execute,
    make_propose,
    make_record,
    place_and_audit,
)
from workflows.graphs.position_monitor import ExitCriteria, remember_entry
from workflows.models import OrderIntent, Recommendation

WORKFLOW = "momentum_trade"
MONITOR_STEPS = 8
OFFLINE_RATIONALE = "Rule-based offline analyst (no Claude)"


class MomentumState(TradeState, total=False):
    position_qty: float
    stop_price: float
    target_price: float
    monitor_polls: int
    monitor_steps: int
    last_price: float
    exit_reason: str | None
    exit_order: dict[str, Any]


def _param(state: MomentumState, key: str, default: Any) -> Any:
    value = state["event"].get(key)
    return default if value is None else value


def offline_momentum(request: AnalysisRequest) -> Recommendation:
    """Enter small when flat and the trigger named a move; never add to a position already held."""
    if request.position_qty != 0:
        return Recommendation(
            action="hold",
            rationale=f"{OFFLINE_RATIONALE}: {request.position_qty:g} shares already held; no pyramiding.",
        )
    direction = crossing_direction(request.trigger_condition)
    quantity = request.max_affordable_qty
    if direction is None or quantity < 1:
        return Recommendation(
            action="hold", rationale=f"{OFFLINE_RATIONALE}: no directional trigger or under one share."
        )
    move = "dip" if direction == "down" else "breakout"
    return Recommendation(
        action="buy",
        quantity=quantity,
        rationale=f"{OFFLINE_RATIONALE}: {move} on `{request.trigger_condition}` with no position: "
        f"small entry of {quantity} shares (the entry budget).",
    )


def exit_reason(price: float, stop_price: float, target_price: float) -> str | None:
    if price <= stop_price:
        return "stop"
    if price >= target_price:
        return "target"
    return None


def build(deps: WorkflowDeps) -> StateGraph:
    async def gather(state: MomentumState) -> MomentumState:
        symbol = state["event"]["symbol"].upper()
        account_id = await deps.trading_account()
        quote = (await deps.broker.quotes([symbol]))[symbol]
        positions = await deps.broker.positions(account_id)
        held = sum(p.quantity for p in positions if p.symbol == symbol and p.asset_class == "STK")
        return {
            "symbol": symbol,
            "account_id": account_id,
            "price": quote.price or float(state["event"]["price"]),
            "position_qty": held,
            "decision": {},
        }

    async def analyse(state: MomentumState) -> MomentumState:
        event: dict[str, Any] = state["event"]
        budget_usd = deps.trading.max_order_notional_usd * float(_param(state, "entry_fraction", 0.2))
        request = AnalysisRequest(
            workflow=WORKFLOW,
            workflow_id=state["workflow_id"],
            symbol=state["symbol"],
            question=(
                f"{state['symbol']} triggered '{event.get('condition')}' at ${state['price']:,.2f}. Is this a "
                f"buying opportunity for a small long position (at most ${budget_usd:,.2f}) with a stop "
                f"{_param(state, 'stop_loss_pct', 1.0)}% below and a target {_param(state, 'take_profit_pct', 2.0)}% "
                "above the entry? Answer buy or hold."
            ),
            price=state["price"],
            position_qty=state["position_qty"],
            trigger_condition=event.get("condition"),
            trigger_name=event.get("trigger_name"),
            indicators=event.get("indicators") or {},
            recent_prices=event.get("recent_prices") or [],
            max_order_notional_usd=budget_usd,
        )
        if deps.analyst.name == "offline":
            recommendation = offline_momentum(request).model_copy(update={"source": "offline"})
        else:
            recommendation = await deps.analyst.recommend(request)
        if recommendation.action == "sell":
            recommendation = Recommendation(
                action="hold",
                rationale=f"momentum_trade only opens long positions; the analyst said sell "
                f"({recommendation.rationale})",
                source=recommendation.source,
            )
        await audit_recommendation(deps, WORKFLOW, state, recommendation)
        if recommendation.action == "hold" or recommendation.quantity < 1:
            return {"recommendation": recommendation.model_dump(), "intent": None}
        intent = OrderIntent(
            workflow=WORKFLOW,
            symbol=state["symbol"],
            side="BUY",
            quantity=math.floor(recommendation.quantity),
            order_type=recommendation.order_type,
            limit_price=recommendation.limit_price if recommendation.order_type == "LMT" else None,
            reference_price=state["price"],
        )
        stop_pct = float(_param(state, "stop_loss_pct", 1.0))
        target_pct = float(_param(state, "take_profit_pct", 2.0))
        interval_s = float(_param(state, "monitor_interval_s", 5.0))
        max_polls = int(_param(state, "max_polls", 360))
        details = {
            "entry_budget_usd": round(budget_usd, 2),
            "stop_loss_pct": stop_pct,
            "take_profit_pct": target_pct,
            "stop_price_usd": round(state["price"] * (1 - stop_pct / 100), 2),
            "target_price_usd": round(state["price"] * (1 + target_pct / 100), 2),
            "max_hold_s": round(interval_s * max_polls, 1),
            "exit_policy": (
                "approving this entry also approves its exit: a market SELL of the whole position when the "
                "price reaches the stop or the target (set from the fill price), or when the hold time ends; "
                "no second approval is asked"
            ),
        }
        return {
            "recommendation": recommendation.model_dump(),
            "intent": intent.model_dump(),
            "proposal_details": details,
        }

    async def arm(state: MomentumState) -> MomentumState:
        """Stop and target from the actual fill; position memory for the position monitor."""
        order = state.get("order") or {}
        entry = order.get("avg_fill_price") or OrderIntent.model_validate(state["intent"]).reference_price
        stop_pct = float(_param(state, "stop_loss_pct", 1.0))
        target_pct = float(_param(state, "take_profit_pct", 2.0))
        hold_hours = float(_param(state, "monitor_interval_s", 5.0)) * int(_param(state, "max_polls", 360)) / 3600
        await remember_entry(
            deps.store,
            state["symbol"],
            state["workflow_id"],
            (state.get("recommendation") or {}).get("rationale", ""),
            ExitCriteria(stop_loss_pct=stop_pct, take_profit_pct=target_pct, max_holding_hours=hold_hours or None),
        )
        return {
            "stop_price": round(entry * (1 - stop_pct / 100), 2),
            "target_price": round(entry * (1 + target_pct / 100), 2),
            "monitor_polls": 0,
            "monitor_steps": 0,
            "exit_reason": None,
        }

    async def monitor(state: MomentumState) -> MomentumState:
        """Up to a step's share of the polls; reads quotes only, so a re-run after a crash is harmless."""
        max_polls = int(_param(state, "max_polls", 360))
        interval_s = float(_param(state, "monitor_interval_s", 5.0))
        per_step = max(1, math.ceil(max_polls / MONITOR_STEPS))
        polls = state.get("monitor_polls", 0)
        price = state.get("last_price", state["price"])
        reason: str | None = None
        for _ in range(min(per_step, max_polls - polls)):
            if polls:
                await anyio.sleep(interval_s)
            quote = (await deps.broker.quotes([state["symbol"]]))[state["symbol"]]
            polls += 1
            price = quote.bid or quote.price or price
            reason = exit_reason(price, state["stop_price"], state["target_price"])
            if reason:
                break
        if reason is None and polls >= max_polls:
            reason = "time"
        return {
            "monitor_polls": polls,
            "monitor_steps": state.get("monitor_steps", 0) + 1,
            "last_price": price,
            "exit_reason": reason,
        }

    async def exit_position(state: MomentumState) -> MomentumState:
        entry = state.get("order") or {}
        quantity = entry.get("filled_quantity") or entry.get("quantity")
        ticket = OrderTicket(
            account_id=state["account_id"],
            symbol=state["symbol"],
            side="SELL",
            quantity=quantity,
            order_type="MKT",
            client_order_id=f"{client_order_id(state['approval_id'])}-exit",
        )
        record = await place_and_audit(deps, WORKFLOW, state, ticket, exit_reason=state.get("exit_reason"))
        pnl = ""
        if record.avg_fill_price and entry.get("avg_fill_price"):
            pnl_usd = (record.avg_fill_price - entry["avg_fill_price"]) * record.quantity
            pnl = f", P&L ${pnl_usd:+,.2f} before commissions"
        return {
            "exit_order": record.model_dump(mode="json"),
            "summary": f"{state.get('summary', '')}; exit on {state.get('exit_reason')}: SELL {record.quantity:g} "
            f"{record.symbol} {record.status}"
            + (f" at ${record.avg_fill_price:,.2f}" if record.avg_fill_price else "")
            + pnl,
        }

    record_run = make_record(
        deps, WORKFLOW, result_keys=("proposal_details", "exit_reason", "exit_order", "stop_price", "target_price")
    )

    async def record(state: MomentumState) -> MomentumState:
        # LangGraph hands a node only the keys of its annotated state type: this one must see ours.
        return await record_run(state)

    def after_execute(state: MomentumState) -> str:
        return "arm" if state.get("outcome") == "filled" else "record"

    def after_monitor(state: MomentumState) -> str:
        if state.get("exit_reason"):
            return "exit"
        return "monitor" if state.get("monitor_steps", 0) < MONITOR_STEPS + 1 else "exit"

    graph = StateGraph(MomentumState)
    graph.add_node("gather", gather)
    graph.add_node("analyse", analyse)
    graph.add_node("check_risk", make_check_risk(deps, WORKFLOW))
    graph.add_node("propose", make_propose(deps, WORKFLOW))
    graph.add_node("await_approval", await_approval)
    graph.add_node("execute", make_execute(deps, WORKFLOW))
    graph.add_node("arm", arm)
    graph.add_node("monitor", monitor)
    graph.add_node("exit", exit_position)
    graph.add_node("record", record)
    graph.add_edge(START, "gather")
    graph.add_edge("gather", "analyse")
    graph.add_edge("analyse", "check_risk")
    graph.add_conditional_edges("check_risk", after_risk)
    graph.add_conditional_edges("propose", after_propose)
    graph.add_conditional_edges("await_approval", after_approval)
    graph.add_conditional_edges("execute", after_execute, ["arm", "record"])
    graph.add_edge("arm", "monitor")
    graph.add_conditional_edges("monitor", after_monitor, ["monitor", "exit"])
    graph.add_edge("exit", "record")
    graph.add_edge("record", END)
    return graph
