"""momentum_trade (the seed's reactive workflow: "when AAPL drops 2%, analyse, decide if it is a buying
opportunity, execute a small position, monitor for exit").

gather -> analyse -> check_risk -> propose -> await_approval -> execute -> arm -> monitor (loop) -> exit -> record
The entry is small: at most `entry_fraction` of max_order_notional_usd. The one approval covers the entry
and its pre-declared exits (stop, target, time limit), which the proposal details state; no exit asks for a
second approval. Who holds the exits is decided when the proposal is made and shown in its `exit_mode`:

- "bracket" (setting IB_BRACKETS auto and IB_MCP's order tool takes orders with parentId, or on): the entry
  goes out as an IB bracket, one request with a STP SELL at the stop and a LMT SELL at the target attached
  (execution.place_bracket_once; cOIDs entry's + "-stop" / "-target"). The broker holds the exits: they work
  once the entry fills, the one that fills cancels the other, overlay running or not. `monitor` polls the
  two children's status and records which one filled; when the hold time ends, `exit` cancels both and sells
  at market once (cOID entry's + "-exit"). Children that end cancelled without a fill (cancelled by someone
  else) make the run fall back to watching.
- "watch": `monitor` polls the quote; `exit` places a reducing market SELL once (cOID entry's + "-exit")
  when the bid reaches the stop or the target (set from the fill price), or when the hold time ends.

`monitor` polls every `monitor_interval_s`, at most `max_polls` times in all (then the time exit), in a
bounded number of checkpointed steps; a restart resumes the loop where its last step ended.

params: symbol, condition, entry_fraction (0.2), stop_loss_pct (1.0), take_profit_pct (2.0),
monitor_interval_s (5), max_polls (360).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import anyio
from langgraph.graph import END, START, StateGraph

from broker.errors import BrokerError
from broker.models import STOP_LOSS_SUFFIX, TAKE_PROFIT_SUFFIX, BracketTicket, OrderTicket
from workflows.analyst import AnalysisRequest, crossing_direction
from workflows.client_analyst import analyst_for
from workflows.deps import WorkflowDeps
from workflows.execution import OPEN, cancel_orders, client_order_id, place_bracket_once, refresh_orders
from workflows.graphs.common import (
    TradeState,
    after_approval,
    after_propose,
    after_risk,
    audit_order,
    audit_recommendation,
    await_approval,
    make_check_risk,
    make_execute,
    make_propose,
    make_record,
    place_and_audit,
    ticket_for,
)
from workflows.graphs.position_monitor import ExitCriteria, remember_entry
from workflows.models import OrderIntent, Recommendation
from workflows.store import OrderRecord

WORKFLOW = "momentum_trade"
MONITOR_STEPS = 8
OFFLINE_RATIONALE = "Rule-based offline analyst (no Claude)"
ExitMode = Literal["bracket", "watch"]
EXIT_KINDS = ("stop", "target")
WATCH_POLICY = (
    "approving this entry also approves its exit: the overlay watches the price and places a market SELL of the "
    "whole position when it reaches the stop or the target (set from the fill price), or when the hold time "
    "ends; no second approval is asked"
)
BRACKET_POLICY = (
    "approving this entry also approves its exits, held at the broker as a bracket: a stop (STP) SELL at "
    "stop_price_usd and a limit SELL at target_price_usd are attached to the entry, work once it fills, and "
    "the one that fills cancels the other, whether or not the overlay is running; when the hold time ends the "
    "overlay cancels both and sells the position at market; no second approval is asked"
)


class MomentumState(TradeState, total=False):
    position_qty: float
    stop_price: float
    target_price: float
    monitor_polls: int
    monitor_steps: int
    last_price: float
    exit_mode: ExitMode
    exit_reason: str | None
    exit_order: dict[str, Any]
    exit_orders: dict[str, dict[str, Any]]
    """The bracket's children by kind ("stop", "target"): their ledger rows as last seen."""


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


def exit_client_order_ids(state: MomentumState) -> list[str]:
    """The cOIDs of the bracket's stop-loss and take-profit, in EXIT_KINDS order."""
    entry = client_order_id(state["approval_id"])
    return [f"{entry}{STOP_LOSS_SUFFIX}", f"{entry}{TAKE_PROFIT_SUFFIX}"]


def _filled_exit(records: Sequence[OrderRecord]) -> tuple[str, OrderRecord] | None:
    return next(((kind, r) for kind, r in zip(EXIT_KINDS, records, strict=True) if r.status == "filled"), None)


def _exit_dumps(records: Sequence[OrderRecord]) -> dict[str, dict[str, Any]]:
    return {kind: r.model_dump(mode="json") for kind, r in zip(EXIT_KINDS, records, strict=True)}


async def gather_inputs(deps: WorkflowDeps, event: dict[str, Any]) -> MomentumState:
    """Quote and shares held for the event's symbol: what the analyst is shown."""
    symbol = event["symbol"].upper()
    account_id = await deps.trading_account()
    quote = (await deps.broker.quotes([symbol]))[symbol]
    positions = await deps.broker.positions(account_id)
    held = sum(p.quantity for p in positions if p.symbol == symbol and p.asset_class == "STK")
    return {
        "symbol": symbol,
        "account_id": account_id,
        "price": quote.price or float(event["price"]),
        "position_qty": held,
    }


def entry_budget_usd(deps: WorkflowDeps, state: MomentumState) -> float:
    return deps.trading.max_order_notional_usd * float(_param(state, "entry_fraction", 0.2))


def analysis_request(deps: WorkflowDeps, state: MomentumState) -> AnalysisRequest:
    event: dict[str, Any] = state["event"]
    budget_usd = entry_budget_usd(deps, state)
    return AnalysisRequest(
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


def build(deps: WorkflowDeps) -> StateGraph:
    async def choose_exit_mode() -> ExitMode:
        """IB_BRACKETS: off -> watch; auto -> bracket when IB_MCP takes one; on -> bracket or an error."""
        if deps.trading.brackets == "off":
            return "watch"
        if await deps.broker.supports_brackets():
            return "bracket"
        if deps.trading.brackets == "on":
            raise BrokerError(
                "IB_BRACKETS=on, but IB_MCP's order tool does not take bracket orders (no list of orders with "
                "parentId in its input schema); nothing was proposed. Set IB_BRACKETS=auto to have the overlay "
                "watch the exits instead."
            )
        return "watch"

    async def gather(state: MomentumState) -> MomentumState:
        return {**await gather_inputs(deps, state["event"]), "decision": {}}

    async def analyse(state: MomentumState) -> MomentumState:
        request = analysis_request(deps, state)
        budget_usd = request.max_order_notional_usd
        analyst = analyst_for(state["event"], deps.analyst, deps.usage)
        if analyst.name == "offline":
            recommendation = offline_momentum(request).model_copy(update={"source": "offline"})
        else:
            recommendation = await analyst.recommend(request)
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
        exit_mode = await choose_exit_mode()
        details = {
            "entry_budget_usd": round(budget_usd, 2),
            "stop_loss_pct": stop_pct,
            "take_profit_pct": target_pct,
            "stop_price_usd": round(state["price"] * (1 - stop_pct / 100), 2),
            "target_price_usd": round(state["price"] * (1 + target_pct / 100), 2),
            "max_hold_s": round(interval_s * max_polls, 1),
            "exit_mode": exit_mode,
            "exit_policy": BRACKET_POLICY if exit_mode == "bracket" else WATCH_POLICY,
        }
        return {
            "recommendation": recommendation.model_dump(),
            "intent": intent.model_dump(),
            "proposal_details": details,
            "exit_mode": exit_mode,
        }

    execute_single = make_execute(deps, WORKFLOW)

    async def execute(state: MomentumState) -> MomentumState:
        """The entry alone (watch), or the entry with its stop and target attached at the broker (bracket)."""
        if state.get("exit_mode") != "bracket":
            return await execute_single(state)
        details = state.get("proposal_details") or {}
        bracket = BracketTicket(
            entry=ticket_for(state), stop_price=details["stop_price_usd"], target_price=details["target_price_usd"]
        )
        await deps.store.update_run(state["workflow_id"], status="running")
        records = await place_bracket_once(
            deps.broker, deps.store, bracket, workflow_id=state["workflow_id"], approval_id=state["approval_id"]
        )
        entry = records.entry
        await audit_order(
            deps,
            WORKFLOW,
            state,
            entry,
            claude_reasoning=(state.get("recommendation") or {}).get("rationale"),
            bracket_exits=[r.client_order_id for r in records.exits],
        )
        fill = f" at ${entry.avg_fill_price:,.2f}" if entry.avg_fill_price else ""
        return {
            "order": entry.model_dump(mode="json"),
            "exit_orders": _exit_dumps(records.exits),
            "outcome": "filled" if entry.status == "filled" else "submitted",
            "summary": f"{entry.side} {entry.quantity:g} {entry.symbol}: {entry.status}{fill} "
            f"(order {entry.broker_order_id}, cOID {entry.client_order_id}); exits held at the broker: "
            f"stop ${bracket.stop_price:,.2f} ({records.stop_loss.status}), target ${bracket.target_price:,.2f} "
            f"({records.take_profit.status}), one cancels the other",
        }

    async def arm(state: MomentumState) -> MomentumState:
        """Stop and target: the bracket's approved prices, or (watch) set from the actual fill; position memory
        for the position monitor."""
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
        if state.get("exit_mode") == "bracket":  # the broker holds the approved prices
            details = state.get("proposal_details") or {}
            stop_price, target_price = details["stop_price_usd"], details["target_price_usd"]
        else:
            stop_price, target_price = round(entry * (1 - stop_pct / 100), 2), round(entry * (1 + target_pct / 100), 2)
        return {
            "stop_price": stop_price,
            "target_price": target_price,
            "monitor_polls": 0,
            "monitor_steps": 0,
            "exit_reason": None,
        }

    def poll_budget(state: MomentumState) -> tuple[int, float, int]:
        """(polls allowed in this step, seconds between polls, polls allowed in all)."""
        max_polls = int(_param(state, "max_polls", 360))
        interval_s = float(_param(state, "monitor_interval_s", 5.0))
        per_step = max(1, math.ceil(max_polls / MONITOR_STEPS))
        return min(per_step, max_polls - state.get("monitor_polls", 0)), interval_s, max_polls

    async def monitor(state: MomentumState) -> MomentumState:
        """Up to a step's share of the polls; reads state only, so a re-run after a crash is harmless."""
        if state.get("exit_mode") == "bracket":
            return await monitor_bracket(state)
        allowed, interval_s, max_polls = poll_budget(state)
        polls = state.get("monitor_polls", 0)
        price = state.get("last_price", state["price"])
        reason: str | None = None
        for _ in range(allowed):
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

    async def monitor_bracket(state: MomentumState) -> MomentumState:
        """Polls the bracket's children: one filled is the exit. Both ended without a fill (cancelled outside
        the overlay) means the broker no longer holds the exits: the run falls back to watching the price."""
        allowed, interval_s, max_polls = poll_budget(state)
        polls = state.get("monitor_polls", 0)
        coids = exit_client_order_ids(state)
        records = await refresh_orders(deps.broker, deps.store, coids)
        reason: str | None = None
        held = True
        for _ in range(allowed):
            if polls:
                await anyio.sleep(interval_s)
                records = await refresh_orders(deps.broker, deps.store, coids)
            polls += 1
            filled = _filled_exit(records)
            held = any(r.status in OPEN for r in records)
            if filled is not None:
                reason = filled[0]
            if reason or not held:
                break
        update: MomentumState = {
            "monitor_polls": polls,
            "monitor_steps": state.get("monitor_steps", 0) + 1,
            "exit_orders": _exit_dumps(records),
        }
        if reason is None and not held:
            await deps.audit.append(
                "bracket_exits_lost",
                workflow=WORKFLOW,
                workflow_id=state["workflow_id"],
                symbol=state["symbol"],
                client_order_id=", ".join(coids),
                note="the stop and target ended without a fill; the overlay watches the price from here",
            )
            return update | {"exit_mode": "watch", "exit_reason": "time" if polls >= max_polls else None}
        return update | {"exit_reason": reason or ("time" if polls >= max_polls else None)}

    async def close_bracket(state: MomentumState) -> tuple[tuple[str, OrderRecord] | None, list[OrderRecord]]:
        """Cancel whichever child still works (both on the time exit; after a fill, a sibling IB has not yet
        cancelled) and return the filled one, if any. A child still working afterwards stops the run: a market
        exit, or that child's own fill, could then sell the position twice."""
        coids = exit_client_order_ids(state)
        records = await cancel_orders(deps.broker, deps.store, coids)
        if any(r.status in OPEN for r in records):
            raise BrokerError(
                f"the bracket's exits {coids} could not be cancelled ({[r.status for r in records]}); no market "
                "exit was placed and the broker may still hold the stop or the target"
            )
        return _filled_exit(records), records

    async def exit_position(state: MomentumState) -> MomentumState:
        entry = state.get("order") or {}
        reason = state.get("exit_reason")
        closed: MomentumState = {}
        if state.get("exit_mode") == "bracket":
            filled, children = await close_bracket(state)
            closed = {"exit_orders": _exit_dumps(children)}
            if filled is not None:
                reason, record = filled
                await audit_order(deps, WORKFLOW, state, record, exit_reason=reason, held_by="broker")
                return closed | _exit_result(state, record, reason)
        quantity = entry.get("filled_quantity") or entry.get("quantity")
        ticket = OrderTicket(
            account_id=state["account_id"],
            symbol=state["symbol"],
            side="SELL",
            quantity=quantity,
            order_type="MKT",
            client_order_id=f"{client_order_id(state['approval_id'])}-exit",
        )
        record = await place_and_audit(deps, WORKFLOW, state, ticket, exit_reason=reason)
        return closed | _exit_result(state, record, reason)

    record_run = make_record(
        deps,
        WORKFLOW,
        result_keys=(
            "proposal_details",
            "exit_mode",
            "exit_reason",
            "exit_order",
            "exit_orders",
            "stop_price",
            "target_price",
        ),
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
    graph.add_node("execute", execute)
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


def _exit_result(state: MomentumState, record: OrderRecord, reason: str | None) -> MomentumState:
    """The exit that closed the position (a bracket child, or the overlay's market SELL), with its P&L."""
    entry = state.get("order") or {}
    pnl = ""
    if record.avg_fill_price and entry.get("avg_fill_price"):
        pnl_usd = (record.avg_fill_price - entry["avg_fill_price"]) * (record.filled_quantity or record.quantity)
        pnl = f", P&L ${pnl_usd:+,.2f} before commissions"
    held_by = " (broker-held)" if reason in EXIT_KINDS and state.get("exit_mode") == "bracket" else ""
    return {
        "exit_order": record.model_dump(mode="json"),
        "exit_reason": reason,
        "summary": f"{state.get('summary', '')}; exit on {reason}{held_by}: {record.side} {record.quantity:g} "
        f"{record.symbol} {record.status}"
        + (f" at ${record.avg_fill_price:,.2f}" if record.avg_fill_price else "")
        + pnl,
    }
