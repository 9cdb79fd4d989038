"""price_alert (the seed's "Workflow 1"): a trigger fired; add, take profit, or hold?

gather -> analyse -> check_risk -> propose -> await_approval -> execute -> record
A price that drifted too far by approval time loops back to gather for a fresh proposal. A hold, a risk
denial or a rejection goes straight to record. Side effects sit in nodes of their own: `interrupt()`
re-runs its node from the top on resume, so nothing before it in that node may act.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from broker.models import OrderTicket
from workflows.analyst import AnalysisRequest
from workflows.deps import WorkflowDeps
from workflows.execution import client_order_id, place_once
from workflows.models import OrderIntent, Proposal, Recommendation, RiskDecision
from workflows.store import Approval, utc_now

WORKFLOW = "price_alert"


class PriceAlertState(TypedDict, total=False):
    workflow_id: str
    event: dict[str, Any]
    symbol: str
    account_id: str
    price: float
    position_qty: float
    position_avg_cost: float | None
    cash_usd: float | None
    net_liquidation_usd: float | None
    recommendation: dict[str, Any]
    intent: dict[str, Any] | None
    risk: dict[str, Any]
    approval_id: str
    approval_round: int
    decision: dict[str, Any]
    order: dict[str, Any]
    outcome: str
    summary: str


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


def build(deps: WorkflowDeps) -> StateGraph:
    async def gather(state: PriceAlertState) -> PriceAlertState:
        symbol = state["event"]["symbol"].upper()
        account_id = await deps.trading_account()
        quote = (await deps.broker.quotes([symbol]))[symbol]
        summary = await deps.broker.account_summary(account_id)
        position = await deps.broker.position(account_id, symbol)
        price = quote.price or float(state["event"]["price"])
        return {
            "symbol": symbol,
            "account_id": account_id,
            "price": price,
            "position_qty": position.quantity if position else 0.0,
            "position_avg_cost": position.avg_cost if position else None,
            "cash_usd": summary.cash_usd,
            "net_liquidation_usd": summary.net_liquidation_usd,
            "decision": {},
        }

    async def analyse(state: PriceAlertState) -> PriceAlertState:
        event = state["event"]
        request = AnalysisRequest(
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
        recommendation = await deps.analyst.recommend(request)
        await deps.audit.append(
            "analysis",
            workflow=WORKFLOW,
            workflow_id=state["workflow_id"],
            symbol=state["symbol"],
            action=recommendation.action.upper(),
            quantity=recommendation.quantity,
            price=state["price"],
            claude_reasoning=recommendation.rationale,
            source=recommendation.source,
        )
        return {"recommendation": recommendation.model_dump()}

    async def check_risk(state: PriceAlertState) -> PriceAlertState:
        recommendation = Recommendation.model_validate(state["recommendation"])
        intent = intent_from(recommendation, state["symbol"], state["price"])
        if intent is None:
            return {"intent": None, "outcome": "hold", "summary": f"hold: {recommendation.rationale}"}
        decision = await deps.risk.check(intent, state["account_id"])
        await deps.audit.append(
            "risk_check",
            workflow=WORKFLOW,
            workflow_id=state["workflow_id"],
            symbol=intent.symbol,
            action=intent.side,
            quantity=intent.quantity,
            price=intent.reference_price,
            allowed=decision.allowed,
            denials=[d.model_dump() for d in decision.denials],
        )
        update: PriceAlertState = {"intent": intent.model_dump(), "risk": decision.model_dump()}
        if not decision.allowed:
            update |= {"outcome": "denied", "summary": f"risk denied: {decision.summary}"}
        return update

    async def propose(state: PriceAlertState) -> PriceAlertState:
        approval_round = state.get("approval_round", 0) + 1
        approval_id = f"{state['workflow_id']}-a{approval_round}"
        intent = OrderIntent.model_validate(state["intent"])
        proposal = Proposal(
            approval_id=approval_id,
            workflow_id=state["workflow_id"],
            intent=intent,
            recommendation=Recommendation.model_validate(state["recommendation"]),
            mode=deps.trading.mode,
            account_id=state["account_id"],
            expires_at=utc_now() + timedelta(seconds=deps.trading.approval_ttl_s),
            risk=RiskDecision.model_validate(state["risk"]),
        )
        _, created = await deps.store.add_approval(
            Approval(
                approval_id=approval_id,
                workflow_id=state["workflow_id"],
                proposal_json=proposal.model_dump_json(),
                expires_at=proposal.expires_at,
            )
        )
        if created:
            await deps.audit.append(
                "approval_requested",
                workflow=WORKFLOW,
                workflow_id=state["workflow_id"],
                symbol=intent.symbol,
                action=intent.side,
                quantity=intent.quantity,
                price=intent.reference_price,
                approval_id=approval_id,
                mode=deps.trading.mode,
            )
        await deps.store.update_run(state["workflow_id"], status="awaiting_approval")
        return {"approval_id": approval_id, "approval_round": approval_round}

    async def await_approval(state: PriceAlertState) -> PriceAlertState:
        decision = interrupt({"approval_id": state["approval_id"], "intent": state["intent"]})
        return {"decision": dict(decision)}

    async def execute(state: PriceAlertState) -> PriceAlertState:
        intent = OrderIntent.model_validate(state["intent"])
        decision = state["decision"]
        ticket = OrderTicket(
            account_id=state["account_id"],
            symbol=intent.symbol,
            side=intent.side,
            quantity=decision.get("quantity") or intent.quantity,
            order_type="LMT" if decision.get("limit_price") else intent.order_type,
            limit_price=decision.get("limit_price") or intent.limit_price,
            outside_rth=intent.outside_rth,
            client_order_id=client_order_id(state["approval_id"]),
        )
        await deps.store.update_run(state["workflow_id"], status="running")
        record = await place_once(
            deps.broker,
            deps.store,
            ticket,
            workflow_id=state["workflow_id"],
            approval_id=state["approval_id"],
        )
        await deps.audit.append(
            "trade_executed" if record.status == "filled" else "order_submitted",
            workflow=WORKFLOW,
            workflow_id=state["workflow_id"],
            symbol=record.symbol,
            action=record.side,
            quantity=record.filled_quantity or record.quantity,
            price=record.avg_fill_price,
            order_id=record.broker_order_id,
            client_order_id=record.client_order_id,
            claude_reasoning=state["recommendation"].get("rationale"),
        )
        fill = f" at ${record.avg_fill_price:,.2f}" if record.avg_fill_price else ""
        return {
            "order": record.model_dump(mode="json"),
            "outcome": "filled" if record.status == "filled" else "submitted",
            "summary": f"{record.side} {record.quantity:g} {record.symbol}: {record.status}{fill} "
            f"(order {record.broker_order_id}, cOID {record.client_order_id})",
        }

    async def record(state: PriceAlertState) -> PriceAlertState:
        outcome = state.get("outcome", "hold")
        decision = state.get("decision") or {}
        if decision and decision.get("decision") != "approve":
            outcome = "rejected" if decision.get("decision") == "reject" else str(decision.get("decision"))
            summary = f"not executed: approval {decision.get('decision')} ({decision.get('note') or 'no note'})"
        else:
            summary = state.get("summary", outcome)
        status = {
            "filled": "completed",
            "submitted": "completed",
            "hold": "completed",
            "denied": "denied",
        }.get(outcome, "rejected")
        await deps.store.update_run(
            state["workflow_id"],
            status=status,
            summary=summary,
            result={
                "outcome": outcome,
                "recommendation": state.get("recommendation"),
                "risk": state.get("risk"),
                "order": state.get("order"),
            },
        )
        await deps.audit.append(
            "workflow_finished", workflow=WORKFLOW, workflow_id=state["workflow_id"], outcome=outcome
        )
        return {"outcome": outcome, "summary": summary}

    def after_risk(state: PriceAlertState) -> Literal["propose", "record"]:
        return "propose" if state.get("intent") and state.get("risk", {}).get("allowed") else "record"

    def after_approval(state: PriceAlertState) -> Literal["execute", "gather", "record"]:
        decision = state.get("decision", {}).get("decision")
        if decision == "approve":
            return "execute"
        return "gather" if decision == "repropose" else "record"

    graph = StateGraph(PriceAlertState)
    graph.add_node("gather", gather)
    graph.add_node("analyse", analyse)
    graph.add_node("check_risk", check_risk)
    graph.add_node("propose", propose)
    graph.add_node("await_approval", await_approval)
    graph.add_node("execute", execute)
    graph.add_node("record", record)
    graph.add_edge(START, "gather")
    graph.add_edge("gather", "analyse")
    graph.add_edge("analyse", "check_risk")
    graph.add_conditional_edges("check_risk", after_risk)
    graph.add_edge("propose", "await_approval")
    graph.add_conditional_edges("await_approval", after_approval)
    graph.add_edge("execute", "record")
    graph.add_edge("record", END)
    return graph
