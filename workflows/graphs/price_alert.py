"""price_alert (the seed's "Workflow 1"): a trigger fired; add, take profit, or hold?

gather -> analyse -> check_risk -> propose -> await_approval -> execute -> record
The analyst is the overlay's (Claude, or offline rules), or, for a run started with the client's sampled
answer in its event, that answer checked the same way (workflows/client_analyst.py).
A hold, a risk denial or a rejection goes straight to record; a price that drifted too far by approval
time loops back to gather for a fresh proposal.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from langgraph.graph import END, START, StateGraph

from workflows.analyst import AnalysisRequest
from workflows.client_analyst import analyst_for
from workflows.deps import WorkflowDeps
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
    read_account_for_run,
)
from workflows.models import OrderIntent, Recommendation

WORKFLOW = "price_alert"


class PriceAlertState(TradeState, total=False):
    position_qty: float
    position_avg_cost: float | None
    cash_usd: float | None
    net_liquidation_usd: float | None


def _question(symbol: str, price: float, condition: str, position_qty: float) -> str:
    return (
        f"{symbol} just triggered '{condition}' at ${price:,.2f}. Current position: {position_qty:g} shares. "
        "Should we add to the position, take profit (how many shares), or hold?"
    )


def intent_from(recommendation: Recommendation, symbol: str, price: float) -> OrderIntent | None:
    if recommendation.action == "hold" or recommendation.quantity < 1:
        return None
    return OrderIntent(
        workflow=WORKFLOW,
        symbol=symbol,
        side="BUY" if recommendation.action == "buy" else "SELL",
        quantity=math.floor(recommendation.quantity),
        order_type=recommendation.order_type,
        limit_price=recommendation.limit_price if recommendation.order_type == "LMT" else None,
        reference_price=price,
    )


async def gather_inputs(deps: WorkflowDeps, event: dict[str, Any]) -> PriceAlertState:
    """Account, position and quote for the event's symbol: what the analyst is shown."""
    symbol = event["symbol"].upper()
    account_id = await deps.trading_account()
    quotes, (summary, positions, account_read) = await asyncio.gather(
        deps.broker.quotes([symbol]), read_account_for_run(deps, account_id)
    )
    quote = quotes[symbol]
    position = next((p for p in positions if p.symbol == symbol and p.asset_class == "STK"), None)
    return {
        "symbol": symbol,
        "account_id": account_id,
        "price": quote.price or float(event["price"]),
        "position_qty": position.quantity if position else 0.0,
        "position_avg_cost": position.avg_cost if position else None,
        "cash_usd": summary.cash_usd,
        "net_liquidation_usd": summary.net_liquidation_usd,
        "account_read": account_read,
    }


def analysis_request(deps: WorkflowDeps, state: PriceAlertState) -> AnalysisRequest:
    event: dict[str, Any] = state["event"]
    return AnalysisRequest(
        workflow=WORKFLOW,
        workflow_id=state["workflow_id"],
        symbol=state["symbol"],
        question=_question(state["symbol"], state["price"], event["condition"], state["position_qty"]),
        price=state["price"],
        position_qty=state["position_qty"],
        position_avg_cost=state.get("position_avg_cost"),
        cash_usd=state.get("cash_usd"),
        net_liquidation_usd=state.get("net_liquidation_usd"),
        trigger_condition=event["condition"],
        trigger_name=event.get("trigger_name"),
        indicators=event.get("indicators") or {},
        recent_prices=event.get("recent_prices") or [],
        max_order_notional_usd=deps.trading.max_order_notional_usd,
    )


def build(deps: WorkflowDeps) -> StateGraph:
    async def gather(state: PriceAlertState) -> PriceAlertState:
        return {**await gather_inputs(deps, state["event"]), "decision": {}}

    async def analyse(state: PriceAlertState) -> PriceAlertState:
        analyst = analyst_for(state["event"], deps.analyst, deps.usage)
        recommendation = await analyst.recommend(analysis_request(deps, state))
        await audit_recommendation(deps, WORKFLOW, state, recommendation)
        intent = intent_from(recommendation, state["symbol"], state["price"])
        return {"recommendation": recommendation.model_dump(), "intent": intent.model_dump() if intent else None}

    graph = StateGraph(PriceAlertState)
    graph.add_node("gather", gather)
    graph.add_node("analyse", analyse)
    graph.add_node("check_risk", make_check_risk(deps, WORKFLOW))
    graph.add_node("propose", make_propose(deps, WORKFLOW))
    graph.add_node("await_approval", await_approval)
    graph.add_node("execute", make_execute(deps, WORKFLOW))
    graph.add_node("record", make_record(deps, WORKFLOW))
    graph.add_edge(START, "gather")
    graph.add_edge("gather", "analyse")
    graph.add_edge("analyse", "check_risk")
    graph.add_conditional_edges("check_risk", after_risk)
    graph.add_conditional_edges("propose", after_propose)
    graph.add_conditional_edges("await_approval", after_approval)
    graph.add_edge("execute", "record")
    graph.add_edge("record", END)
    return graph
