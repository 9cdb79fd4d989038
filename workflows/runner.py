"""Starts workflow graphs, resumes them with the human's decision, and reports their state.

One LangGraph thread per workflow run (thread id = workflow id), checkpointed after every step, so a run
waiting for approval survives a restart. Deciding an approval is a compare-and-set in the database
(pending -> approved), so a double approval, from one process or two, resumes the graph once.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from typing import Any, Literal

import anyio
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.types import Command, StateSnapshot

from broker.errors import BrokerError
from poller.events import TriggerEvent
from workflows.deps import WorkflowDeps
from workflows.graphs import GRAPHS, GraphBuilder
from workflows.models import OrderIntent, Proposal
from workflows.run_types import DecisionResult, PendingApproval, RunView, WorkflowError
from workflows.store import Approval, MarketEvent, WorkflowRun
from workflows.times import as_utc, utc_now

log = logging.getLogger(__name__)

Decision = Literal["approve", "reject"]


def _instrument(intent: OrderIntent) -> str:
    option = intent.option
    if option is None:
        return intent.symbol
    return f"{option.underlying} {option.expiry} {option.strike:g} {option.right} (x{option.multiplier})"


def pending_view(approval: Approval) -> PendingApproval:
    proposal = Proposal.model_validate_json(approval.proposal_json)
    intent = proposal.intent
    return PendingApproval(
        approval_id=approval.approval_id,
        workflow_id=approval.workflow_id,
        workflow=intent.workflow,
        mode=proposal.mode,
        account_id=proposal.account_id,
        symbol=intent.symbol,
        instrument=_instrument(intent),
        side=intent.side,
        quantity=intent.quantity,
        order_type=intent.order_type,
        limit_price=intent.limit_price,
        reference_price=intent.reference_price,
        notional_usd=round(intent.notional_usd, 2),
        rationale=proposal.recommendation.rationale,
        analyst=proposal.recommendation.source,
        expires_at=as_utc(approval.expires_at),
        details=proposal.details,
        how_to_answer=(
            f'call approve_trade(approval_id="{approval.approval_id}", decision="approve" or "reject") '
            f"before {as_utc(approval.expires_at):%H:%M:%S} UTC"
        ),
    )


def graph_input(workflow_id: str, event: TriggerEvent | dict[str, Any]) -> dict[str, Any]:
    """What a run starts from: its id and its event (a trigger's, or a hand-started run's parameters)."""
    payload = event.model_dump(mode="json") if isinstance(event, TriggerEvent) else event
    return {"workflow_id": workflow_id, "event": payload}


def cut_short(snapshot: StateSnapshot) -> bool:
    """Whether a run stopped between steps, not at an interrupt or its end. `snapshot.next` is not enough: it
    leaves out a task whose writes were saved before its step's checkpoint was (a stop in that gap), and
    invoking the graph again applies those writes and goes on."""
    return bool(snapshot.tasks) and not snapshot.interrupts


class WorkflowRunner:
    def __init__(
        self,
        deps: WorkflowDeps,
        checkpointer: BaseCheckpointSaver,
        graphs: dict[str, GraphBuilder] | None = None,
        *,
        worker_name: str | None = None,
    ) -> None:
        self.deps = deps
        self.worker_name = worker_name
        self.background: anyio.abc.TaskGroup | None = None
        """Set by the app: resumed runs that outlast `resume_wait_s` continue in this task group."""
        self._graphs = {
            name: build(deps).compile(checkpointer=checkpointer) for name, build in (graphs or GRAPHS).items()
        }
        self._thread_locks: defaultdict[str, anyio.Lock] = defaultdict(anyio.Lock)

    @property
    def workflows(self) -> list[str]:
        return sorted(self._graphs)

    async def start(
        self, workflow: str, *, event: TriggerEvent | None = None, params: dict[str, Any] | None = None
    ) -> RunView:
        """Run `workflow` until it finishes or waits for approval. An event starts at most one run."""
        if workflow not in self._graphs:
            raise WorkflowError(f"unknown workflow {workflow!r}; available: {', '.join(self.workflows)}")
        event_payload = event.model_dump(mode="json") if event else dict(params or {})
        workflow_id = f"{workflow}-{uuid.uuid4().hex[:10]}"
        symbol = str(event_payload.get("symbol", "")).upper() or None
        run, created = await self.deps.store.create_run(
            WorkflowRun(
                workflow_id=workflow_id,
                workflow=workflow,
                symbol=symbol,
                trigger_event_id=event.event_id if event else None,
                worker=self.worker_name,
            ),
            audit=self.deps.audit.record(
                "workflow_started",
                workflow=workflow,
                workflow_id=workflow_id,
                symbol=symbol,
                trigger=event_payload.get("trigger_name"),
                condition=event_payload.get("condition"),
            ),
        )
        if not created:
            return await self.status(run.workflow_id)
        await self._advance(workflow, workflow_id, graph_input(workflow_id, event_payload))
        return await self.status(workflow_id)

    async def handle_event(self, event: TriggerEvent, *, redelivered: bool = False) -> RunView | None:
        """A trigger event from the bus: remembered, then handed to the workflow its action names.

        An event starts at most one run (the run row is unique per event id). A redelivered event means the
        worker that took it died before finishing: its run, if cut short, continues here from its checkpoint."""
        fresh = await self.deps.store.record_market_event(MarketEvent.of(event))
        workflow = event.workflow
        if workflow is None or workflow not in self._graphs:
            if fresh:
                log.info("trigger %s fired (%s): no workflow to run", event.trigger_name, event.action)
            return None
        try:
            if redelivered and (run := await self.deps.store.run_for_event(event.event_id)) is not None:
                return await self._continue_abandoned(run, event)
            return await self.start(workflow, event=event)
        except WorkflowError as exc:
            log.warning("trigger %s: %s", event.trigger_name, exc)
            return None

    async def _continue_abandoned(self, run: WorkflowRun, event: TriggerEvent) -> RunView:
        if run.status in ("running", "awaiting_approval") and run.workflow in self._graphs:
            snapshot = await self._snapshot(run.workflow, run.workflow_id)
            if not snapshot.values:
                # The worker died after recording the run and before the graph's first checkpoint: no step ran,
                # so nothing was sent; it starts over from its event.
                await self._advance(run.workflow, run.workflow_id, graph_input(run.workflow_id, event))
            elif cut_short(snapshot):
                await self._advance(run.workflow, run.workflow_id, None)
        return await self.status(run.workflow_id)

    async def _input_to_start_over(self, run: WorkflowRun) -> dict[str, Any] | None:
        """At start-up, for a run with no checkpoint: the input that starts it again from its recorded trigger
        event; None when it was started by hand (its inputs were only ever in the checkpoint), after ending it
        as failed with the reason."""
        recorded = await self.deps.store.market_event(run.trigger_event_id) if run.trigger_event_id else None
        if recorded is not None and recorded.payload_json:
            return graph_input(run.workflow_id, TriggerEvent.model_validate_json(recorded.payload_json))
        reason = (
            "the overlay stopped before this run's first step; nothing was analysed or sent. "
            "Start it again with start_strategy."
        )
        await self.deps.store.update_run(run.workflow_id, status="failed", error=reason, summary=reason)
        await self.deps.audit.append(
            "workflow_failed", workflow=run.workflow, workflow_id=run.workflow_id, error=reason
        )
        return None

    async def _advance(self, workflow: str, workflow_id: str, graph_input: Any) -> None:
        graph = self._graphs[workflow]
        config = {"configurable": {"thread_id": workflow_id}}
        async with self._thread_locks[workflow_id]:
            try:
                await graph.ainvoke(graph_input, config, durability="sync")
            except (BrokerError, WorkflowError) as exc:
                await self.deps.store.update_run(workflow_id, status="failed", error=str(exc), summary=str(exc))
                await self.deps.audit.append(
                    "workflow_failed", workflow=workflow, workflow_id=workflow_id, error=str(exc)
                )
                raise WorkflowError(str(exc)) from exc
            except Exception as exc:
                log.exception("workflow %s failed", workflow_id)
                message = f"{type(exc).__name__}: {exc}"
                await self.deps.store.update_run(workflow_id, status="failed", error=message, summary=message)
                await self.deps.audit.append(
                    "workflow_failed", workflow=workflow, workflow_id=workflow_id, error=message
                )
                raise WorkflowError(f"workflow {workflow_id} failed: {message}") from exc

    async def resume_unfinished(self) -> list[str]:
        """After a crash: runs cut short continue from their last checkpoint up to their next stop (a node
        that did not finish is re-run; the order ledger makes a re-run execute node find its order instead of
        sending it again). A run cut before its first checkpoint starts over from its trigger event. They are
        resumed together, and waited for at most `resume_wait_s`: a long one (an exit watch, a VWAP schedule)
        goes on in the background instead of holding up the start."""
        resumed: list[str] = []
        runs = await self.deps.store.list_runs(limit=200, status="running")
        runs += await self.deps.store.list_runs(limit=200, status="awaiting_approval")

        async def resume(run: WorkflowRun, graph_input: dict[str, Any] | None) -> None:
            try:
                await self._advance_in_background(run.workflow, run.workflow_id, graph_input)
            except WorkflowError as exc:
                log.warning("run %s could not be resumed: %s", run.workflow_id, exc)
                return
            resumed.append(run.workflow_id)

        async with anyio.create_task_group() as tasks:
            for run in runs:
                if run.workflow not in self._graphs:
                    continue
                snapshot = await self._snapshot(run.workflow, run.workflow_id)
                if not snapshot.values:
                    start_input = await self._input_to_start_over(run)
                    if start_input is not None:
                        tasks.start_soon(resume, run, start_input)
                elif cut_short(snapshot):
                    tasks.start_soon(resume, run, None)
        return resumed

    async def _snapshot(self, workflow: str, workflow_id: str) -> Any:
        return await self._graphs[workflow].aget_state({"configurable": {"thread_id": workflow_id}})

    async def status(self, workflow_id: str) -> RunView:
        run = await self.deps.store.get_run(workflow_id)
        if run is None:
            raise WorkflowError(f"no workflow run with id {workflow_id!r}; list_workflows shows recent runs")
        pending = next(
            (a.approval_id for a in await self.deps.store.pending_approvals() if a.workflow_id == workflow_id),
            None,
        )
        return RunView(
            workflow_id=run.workflow_id,
            workflow=run.workflow,
            status=run.status,
            symbol=run.symbol,
            summary=run.summary,
            error=run.error,
            pending_approval_id=pending,
            result=json.loads(run.result_json or "{}"),
            created_at=as_utc(run.created_at),
            updated_at=as_utc(run.updated_at),
        )

    async def recent_runs(self, limit: int = 10) -> list[RunView]:
        return [await self.status(run.workflow_id) for run in await self.deps.store.list_runs(limit=limit)]

    async def pending(self, rows: list[Approval] | None = None) -> list[PendingApproval]:
        """Approvals still open, oldest first: one read of the pending rows (or `rows`, read already with
        something else). Past-deadline ones are left out here, not expired: the sweeper does that every 5 s."""
        now = utc_now()
        rows = await self.deps.store.pending_approvals() if rows is None else rows
        return [pending_view(a) for a in rows if as_utc(a.expires_at) > now]

    async def expire_overdue(self) -> int:
        """Pending approvals past their deadline become "expired" and their runs finish without an order."""
        expired = 0
        now = utc_now()
        for approval in await self.deps.store.pending_approvals():
            if as_utc(approval.expires_at) <= now and await self.deps.store.decide_approval(
                approval.approval_id, "expired", note="no answer before the deadline"
            ):
                expired += 1
                await self._resume(approval, {"decision": "expired", "note": "approval expired"})
        return expired

    async def decide(
        self,
        approval_id: str,
        decision: Decision,
        *,
        quantity: float | None = None,
        limit_price: float | None = None,
        note: str | None = None,
    ) -> DecisionResult:
        """Answer a pending approval once. Approving re-checks risk and the price before anything is sent."""
        approval = await self.deps.store.get_approval(approval_id)
        if approval is None:
            raise WorkflowError(f"no approval with id {approval_id!r}; list_pending_approvals shows the open ones")
        if approval.status != "pending":
            return DecisionResult(
                approval_id=approval_id,
                accepted=False,
                message=f"approval {approval_id} is already {approval.status}; nothing was done",
                run=await self.status(approval.workflow_id),
            )
        if as_utc(approval.expires_at) <= utc_now():
            await self.expire_overdue()
            return DecisionResult(
                approval_id=approval_id,
                accepted=False,
                message=f"approval {approval_id} expired at {as_utc(approval.expires_at):%H:%M:%S} UTC; "
                "nothing was done. Start the workflow again for a fresh proposal.",
                run=await self.status(approval.workflow_id),
            )
        if decision == "reject":
            return await self._conclude(approval, "rejected", {"decision": "reject", "note": note}, note)
        proposal = Proposal.model_validate_json(approval.proposal_json)
        intent = self._amended(proposal.intent, quantity, limit_price)
        risk = await self.deps.risk.check(intent, proposal.account_id)
        if not risk.allowed:
            reason = f"risk check at approval time denied the order: {risk.summary}"
            return await self._conclude(approval, "rejected", {"decision": "denied", "note": reason}, reason)
        drift_pct = await self._price_drift_pct(intent)
        if drift_pct is not None and drift_pct > self.deps.trading.max_price_drift_pct:
            reason = (
                f"{intent.symbol} moved {drift_pct:.2f}% since the proposal "
                f"(> max_price_drift_pct {self.deps.trading.max_price_drift_pct:g}%); re-proposing at the new price"
            )
            return await self._conclude(approval, "cancelled", {"decision": "repropose", "note": reason}, reason)
        return await self._conclude(
            approval,
            "approved",
            {"decision": "approve", "note": note, "quantity": quantity, "limit_price": limit_price},
            note,
            quantity=quantity,
            limit_price=limit_price,
        )

    @staticmethod
    def _amended(intent: OrderIntent, quantity: float | None, limit_price: float | None) -> OrderIntent:
        if quantity is not None and not 0 < quantity <= intent.quantity:
            raise WorkflowError(
                f"quantity must be more than 0 and at most the proposed {intent.quantity:g} shares; "
                "to trade more, start a new proposal"
            )
        if limit_price is not None and limit_price <= 0:
            raise WorkflowError("limit_price must be a positive price in USD")
        changes: dict[str, Any] = {}
        if quantity is not None:
            changes["quantity"] = quantity
        if limit_price is not None:
            changes |= {"limit_price": limit_price, "order_type": "LMT"}
        return intent.model_copy(update=changes)

    async def _price_drift_pct(self, intent: OrderIntent) -> float | None:
        """How far the stock moved since the proposal; None for options (their quote is not by symbol)."""
        if intent.option is not None:
            return None
        try:
            quote = (await self.deps.broker.quotes([intent.symbol]))[intent.symbol]
        except BrokerError as exc:
            raise WorkflowError(f"cannot re-check the price of {intent.symbol} before trading: {exc}") from exc
        if quote.price is None:
            return None
        return abs(quote.price - intent.reference_price) / intent.reference_price * 100

    async def _conclude(
        self,
        approval: Approval,
        status: Literal["approved", "rejected", "cancelled"],
        resume: dict[str, Any],
        note: str | None,
        *,
        quantity: float | None = None,
        limit_price: float | None = None,
    ) -> DecisionResult:
        won = await self.deps.store.decide_approval(
            approval.approval_id, status, note=note, quantity=quantity, limit_price=limit_price
        )
        if not won:
            current = await self.deps.store.get_approval(approval.approval_id)
            return DecisionResult(
                approval_id=approval.approval_id,
                accepted=False,
                message=f"approval {approval.approval_id} was already "
                f"{current.status if current else 'decided'}; nothing was done",
                run=await self.status(approval.workflow_id),
            )
        await self.deps.audit.append(
            "approval_decided",
            workflow_id=approval.workflow_id,
            approval_id=approval.approval_id,
            decision=resume["decision"],
            note=note,
            quantity=quantity,
            price=limit_price,
        )
        run = await self._resume(approval, resume)
        return DecisionResult(
            approval_id=approval.approval_id,
            accepted=status == "approved",
            message=(note or status) if resume["decision"] in ("repropose", "denied") else (run.summary or status),
            run=run,
        )

    async def _resume(self, approval: Approval, resume: dict[str, Any]) -> RunView:
        run = await self.deps.store.get_run(approval.workflow_id)
        if run is None:
            raise WorkflowError(f"approval {approval.approval_id} belongs to no known run")
        snapshot = await self._snapshot(run.workflow, run.workflow_id)
        if cut_short(snapshot):
            # The approval row is written one step before the graph stops at its interrupt; a decision (or a
            # restart) that lands in between first lets the graph reach the interrupt.
            await self._advance(run.workflow, run.workflow_id, None)
            snapshot = await self._snapshot(run.workflow, run.workflow_id)
        waiting_for = {i.value.get("approval_id") for i in snapshot.interrupts if isinstance(i.value, dict)}
        if approval.approval_id not in waiting_for:
            raise WorkflowError(
                f"run {run.workflow_id} is not waiting for approval {approval.approval_id} (waiting for "
                f"{sorted(waiting_for) or 'nothing'}); nothing was done"
            )
        await self._advance_in_background(run.workflow, run.workflow_id, Command(resume=resume))
        return await self.status(run.workflow_id)

    async def _advance_in_background(self, workflow: str, workflow_id: str, graph_input: Any) -> None:
        """Resume a graph; wait for it at most `resume_wait_s`. A run that keeps going after that (a momentum
        trade watching for its exit, a VWAP schedule) goes on in the background and the caller reports it as
        still running; an error within the wait is raised to the caller as before."""
        if self.background is None:
            await self._advance(workflow, workflow_id, graph_input)
            return
        finished = anyio.Event()
        failure: list[WorkflowError] = []

        async def advance() -> None:
            try:
                await self._advance(workflow, workflow_id, graph_input)
            except WorkflowError as exc:
                failure.append(exc)
            finally:
                finished.set()

        self.background.start_soon(advance)
        with anyio.move_on_after(self.deps.trading.resume_wait_s):
            await finished.wait()
        if failure:
            raise failure[0]
