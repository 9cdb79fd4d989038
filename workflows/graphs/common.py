"""Nodes every trading graph shares: propose an order, wait for the human, place it once, record the run.

A graph's state carries `workflow_id`, `account_id`, `intent` (an OrderIntent dump), `recommendation`,
`risk`, and optionally `proposal_details` and `account_read` (gather's read of the account, see
`read_account_for_run`); these nodes add `approval_id`, `approval_round`, `decision`, `order`, `outcome` and
`summary`. `interrupt()` re-runs its node from the top on resume, so the node that
waits does nothing else, and every side effect lives in a node of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Literal, TypedDict

from langgraph.types import interrupt

from broker.models import Account, OrderTicket, Position
from workflows.deps import WorkflowDeps
from workflows.execution import client_order_id, place_once
from workflows.models import OrderIntent, Proposal, Recommendation, RiskDecision
from workflows.risk_gate import AccountRead, handed_over, read_account
from workflows.store import Approval, OrderRecord
from workflows.times import utc_now


class TradeState(TypedDict, total=False):
    """The keys the shared nodes read and write; each graph's state extends it."""

    workflow_id: str
    event: dict[str, Any]
    account_id: str
    symbol: str
    price: float
    account_read: dict[str, Any]
    recommendation: dict[str, Any]
    intent: dict[str, Any] | None
    risk: dict[str, Any]
    proposal_details: dict[str, Any]
    approval_id: str
    approval_round: int
    decision: dict[str, Any]
    order: dict[str, Any]
    outcome: str
    summary: str


State = TradeState
Node = Callable[[Any], Awaitable[Any]]

RUN_STATUS_BY_OUTCOME = {"filled": "completed", "submitted": "completed", "hold": "completed", "denied": "denied"}


async def audit_recommendation(deps: WorkflowDeps, workflow: str, state: State, recommendation: Recommendation) -> None:
    """The analyst's answer in the audit log, in the seed's log shape."""
    await deps.audit.append(
        "analysis",
        workflow=workflow,
        workflow_id=state["workflow_id"],
        symbol=state["symbol"],
        action=recommendation.action.upper(),
        quantity=recommendation.quantity,
        price=state["price"],
        claude_reasoning=recommendation.rationale,
        source=recommendation.source,
    )


async def read_account_for_run(deps: WorkflowDeps, account_id: str) -> tuple[Account, list[Position], dict[str, Any]]:
    """A gather step's live read of the account: the summary, every position, and the `account_read` state
    entry that lets the same run's risk check use this read instead of asking IB_MCP again (risk_gate)."""
    summary, positions, read_at = await read_account(deps.broker, account_id)
    return summary, positions, AccountRead.of(summary, positions, read_at).model_dump(mode="json")


def make_check_risk(deps: WorkflowDeps, workflow: str) -> Node:
    """Risk-check `state["intent"]`; no intent means the analyst said hold. The run's own `account_read`, if
    gather left one, is handed to the check (used only while recent and while no order changed since)."""

    async def check_risk(state: State) -> State:
        if not state.get("intent"):
            rationale = (state.get("recommendation") or {}).get("rationale", "")
            return {"outcome": "hold", "summary": f"hold: {rationale}".rstrip(": ")}
        intent = OrderIntent.model_validate(state["intent"])
        account_read = state.get("account_read")
        with handed_over(AccountRead.model_validate(account_read) if account_read else None):
            decision = await deps.risk.check(intent, state["account_id"])
        await deps.audit.append(
            "risk_check",
            workflow=workflow,
            workflow_id=state["workflow_id"],
            symbol=intent.symbol,
            action=intent.side,
            quantity=intent.quantity,
            price=intent.reference_price,
            allowed=decision.allowed,
            denials=[d.model_dump() for d in decision.denials],
        )
        update: State = {"risk": decision.model_dump()}
        if not decision.allowed:
            update |= {"outcome": "denied", "summary": f"risk denied: {decision.summary}"}
        return update

    return check_risk


def make_propose(deps: WorkflowDeps, workflow: str) -> Node:
    """Store the approval request (once per round) and mark the run as waiting: the approval row, its audit
    entry and the run's new status in one transaction."""

    async def propose(state: State) -> State:
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
            details=state.get("proposal_details") or {},
        )
        may_auto_approve = _auto_approve_limit_usd(deps, workflow, intent) is not None
        _, created = await deps.store.add_approval(
            Approval(
                approval_id=approval_id,
                workflow_id=state["workflow_id"],
                proposal_json=proposal.model_dump_json(),
                expires_at=proposal.expires_at,
            ),
            run_status=None if may_auto_approve else "awaiting_approval",
            audit=deps.audit.record(
                "approval_requested",
                workflow=workflow,
                workflow_id=state["workflow_id"],
                symbol=intent.symbol,
                action=intent.side,
                quantity=intent.quantity,
                price=intent.reference_price,
                approval_id=approval_id,
                mode=deps.trading.mode,
            ),
        )
        auto = await _auto_approval(deps, workflow, approval_id, intent, created) if may_auto_approve else None
        if auto is not None:
            return {"approval_id": approval_id, "approval_round": approval_round, "decision": auto}
        if may_auto_approve:
            await deps.store.update_run(state["workflow_id"], status="awaiting_approval")
        return {"approval_id": approval_id, "approval_round": approval_round}

    return propose


def _auto_approve_limit_usd(deps: WorkflowDeps, workflow: str, intent: OrderIntent) -> float | None:
    """The user's auto-approve threshold for this workflow, when the order is under it."""
    limit_usd = deps.trading.auto_approve_limit_usd(workflow)
    return limit_usd if limit_usd is not None and intent.notional_usd <= limit_usd else None


async def _auto_approval(
    deps: WorkflowDeps, workflow: str, approval_id: str, intent: OrderIntent, created: bool
) -> dict[str, Any] | None:
    """The decision, when the user set an auto-approve threshold for this workflow and the order is under it.
    Risk has already allowed the order; the approval row still records who decided (the threshold)."""
    limit_usd = _auto_approve_limit_usd(deps, workflow, intent)
    if limit_usd is None:
        return None
    note = f"auto-approved: ${intent.notional_usd:,.2f} <= auto_approve_under_usd[{workflow}] ${limit_usd:,.2f}"
    if created and await deps.store.decide_approval(approval_id, "approved", note=note):
        await deps.audit.append(
            "approval_decided", workflow=workflow, approval_id=approval_id, decision="auto_approve", note=note
        )
    stored = await deps.store.get_approval(approval_id)
    if stored is None or stored.status != "approved" or stored.decision_note != note:
        return None
    return {"decision": "approve", "note": note, "auto": True}


def after_propose(state: State) -> Literal["execute", "await_approval"]:
    """An auto-approved proposal goes straight to execution; every other one waits for the human."""
    return "execute" if (state.get("decision") or {}).get("auto") else "await_approval"


async def await_approval(state: State) -> State:
    """Pause until the runner resumes with the human's decision (approve / reject / expired / repropose)."""
    decision = interrupt({"approval_id": state["approval_id"], "intent": state["intent"]})
    return {"decision": dict(decision)}


def ticket_for(state: State) -> OrderTicket:
    """The order to send: the proposal as approved, with the quantity / limit the human may have lowered."""
    intent = OrderIntent.model_validate(state["intent"])
    decision = state.get("decision") or {}
    limit_price = decision.get("limit_price") or intent.limit_price
    return OrderTicket(
        account_id=state["account_id"],
        symbol=intent.symbol,
        side=intent.side,
        quantity=decision.get("quantity") or intent.quantity,
        order_type="LMT" if limit_price else intent.order_type,
        limit_price=limit_price,
        outside_rth=intent.outside_rth,
        client_order_id=client_order_id(state["approval_id"]),
        conid=intent.option.conid if intent.option else None,
    )


async def place_and_audit(
    deps: WorkflowDeps, workflow: str, state: State, ticket: OrderTicket, **audit_fields: Any
) -> OrderRecord:
    """Place `ticket` once (see execution.place_once) under the run's approval, and audit the outcome."""
    record = await place_once(
        deps.broker, deps.store, ticket, workflow_id=state["workflow_id"], approval_id=state["approval_id"]
    )
    await audit_order(deps, workflow, state, record, **audit_fields)
    return record


async def audit_order(
    deps: WorkflowDeps, workflow: str, state: State, record: OrderRecord, **audit_fields: Any
) -> None:
    """An order's outcome in the audit log: trade_executed once filled, else order_submitted."""
    await deps.audit.append(
        "trade_executed" if record.status == "filled" else "order_submitted",
        workflow=workflow,
        workflow_id=state["workflow_id"],
        symbol=record.symbol,
        action=record.side,
        quantity=record.filled_quantity or record.quantity,
        price=record.avg_fill_price,
        order_id=record.broker_order_id,
        client_order_id=record.client_order_id,
        **audit_fields,
    )


def make_execute(deps: WorkflowDeps, workflow: str) -> Node:
    async def execute(state: State) -> State:
        ticket = ticket_for(state)
        await deps.store.update_run(state["workflow_id"], status="running")
        record = await place_and_audit(
            deps, workflow, state, ticket, claude_reasoning=(state.get("recommendation") or {}).get("rationale")
        )
        fill = f" at ${record.avg_fill_price:,.2f}" if record.avg_fill_price else ""
        return {
            "order": record.model_dump(mode="json"),
            "outcome": "filled" if record.status == "filled" else "submitted",
            "summary": f"{record.side} {record.quantity:g} {record.symbol}: {record.status}{fill} "
            f"(order {record.broker_order_id}, cOID {record.client_order_id})",
        }

    return execute


def make_record(deps: WorkflowDeps, workflow: str, result_keys: tuple[str, ...] = ()) -> Node:
    """Write the run's outcome, summary and result; the last node of every graph."""

    async def record(state: dict[str, Any]) -> State:  # dict: LangGraph then passes the graph's whole state
        outcome = state.get("outcome", "hold")
        decision = state.get("decision") or {}
        summary = state.get("summary", outcome)
        if decision and decision.get("decision") not in ("approve", None):
            outcome = "rejected" if decision["decision"] == "reject" else str(decision["decision"])
            summary = f"not executed: approval {decision['decision']} ({decision.get('note') or 'no note'})"
        await deps.store.update_run(
            state["workflow_id"],
            status=RUN_STATUS_BY_OUTCOME.get(outcome, "rejected"),
            summary=summary,
            result={
                "outcome": outcome,
                "recommendation": state.get("recommendation"),
                "risk": state.get("risk"),
                "order": state.get("order"),
                **{key: state.get(key) for key in result_keys},
            },
        )
        await deps.audit.append(
            "workflow_finished", workflow=workflow, workflow_id=state["workflow_id"], outcome=outcome
        )
        return {"outcome": outcome, "summary": summary}

    return record


def after_risk(state: State) -> Literal["propose", "record"]:
    return "propose" if state.get("intent") and (state.get("risk") or {}).get("allowed") else "record"


def after_approval(state: State) -> Literal["execute", "gather", "record"]:
    """Approve executes; a price that drifted too far by approval time re-proposes from `gather`."""
    decision = (state.get("decision") or {}).get("decision")
    if decision == "approve":
        return "execute"
    return "gather" if decision == "repropose" else "record"
