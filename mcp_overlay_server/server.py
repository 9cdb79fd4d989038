"""The overlay's MCP server: a table of tools. Each docstring is what the model reads."""

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver import Context, Elicit, ElicitationResult, MCPServer, Resolve
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.mcpserver.resolve import Sample
from mcp_types import CallToolResult, CreateMessageResult, InputRequiredResult, ToolAnnotations
from pydantic import BaseModel, Field, ValidationError, create_model

from broker.errors import BrokerError
from broker.models import Order
from mcp_overlay_server.actions import start_workflow
from mcp_overlay_server.app import Overlay
from mcp_overlay_server.client_sampling import (
    AnalystChoice,
    SamplingDrafts,
    carried_analysis,
    draft_prompt,
    sample_request,
    wants_client_analysis,
)
from mcp_overlay_server.context import TradingContext, build_context
from mcp_overlay_server.health import HealthReport, check_health
from mcp_overlay_server.notifications import ChangeWatcher, SessionHub
from mcp_overlay_server.performance import PerformanceReport, build_performance_report
from mcp_overlay_server.prompts import register_prompts
from mcp_overlay_server.resources import register_resources
from mcp_overlay_server.startup import LazyOverlay, OverlayUnavailable
from mcp_overlay_server.views import MARKET_SCAN, PriceHistory, TriggerList, TriggerView, price_history, trigger_list
from poller.triggers import TriggerSpec
from replay.suggest import (
    SuggestionDecision,
    SuggestionError,
    SuggestionSet,
    decide_suggestion,
    suggest_for_overlay,
)
from workflows.risk import LIMITS_KEY, STATE_KEY, RiskLimits, TradingState
from workflows.run_types import DecisionResult, PendingApproval, RunView, WorkflowError

INSTRUCTIONS = """\
IB MCP Overlay runs trading workflows beside IB_MCP (the raw Interactive Brokers tools).
Workflows propose orders; nothing is sent to the broker until the human approves (review_approval asks in a form
where the client supports it; otherwise approve_trade with the user's answer). Start with get_context.
Never approve on the user's behalf: show the proposal (symbol, side, quantity, price, notional, mode paper/live)
and ask the user first. Resources: overlay://context, overlay://approvals/pending, overlay://triggers,
overlay://workflows/{id}, overlay://prices/{symbol}, overlay://scans/latest."""

VERSION = "0.1.0"
PROGRESS_EVERY_S = 1.0
T = TypeVar("T")

READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
READ_ONLY_BROKER = ToolAnnotations(read_only_hint=True, open_world_hint=True)
ADDITIVE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
SETTING = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
REMOVING = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)
TRADING = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=True)
STARTING = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True)
RESERVED_PREFERENCES = frozenset({LIMITS_KEY, STATE_KEY})


class PendingApprovals(BaseModel):
    approvals: list[PendingApproval]
    message: str


class WorkflowList(BaseModel):
    available: list[str]
    recent: list[RunView]


class ApprovalAnswer(BaseModel):
    """The form shown in the chat for one proposal."""

    decision: Literal["approve", "reject"] = Field(description="approve places the order; reject discards it")
    quantity: float | None = Field(default=None, gt=0, description="shares; at most the proposed quantity")
    limit_price: float | None = Field(default=None, gt=0, description="USD; makes it a limit order")
    note: str | None = Field(default=None, max_length=500, description="your reason, kept in the audit log")


class ReviewResult(BaseModel):
    asked_in_chat: bool
    message: str
    proposal: PendingApproval | None = None
    decision: DecisionResult | None = None


class CancelResult(BaseModel):
    workflow_id: str
    cancelled: bool
    message: str
    run: RunView


class TriggerChange(BaseModel):
    name: str
    changed: bool
    message: str


class RiskLimitsResult(BaseModel):
    limits: RiskLimits
    changed: list[str]


class PreferencesResult(BaseModel):
    saved: list[str]
    preferences: dict[str, Any]


class CancelledOrder(BaseModel):
    order_id: str
    symbol: str
    side: str
    quantity: float
    error: str | None = None


class KillSwitchResult(BaseModel):
    trading_state: str
    cancelled_orders: list[CancelledOrder]
    rejected_approvals: list[str]
    message: str


class AuditLogTail(BaseModel):
    entries: list[dict[str, Any]]


RiskLimitsUpdate = create_model(
    "RiskLimitsUpdate",
    __doc__="The limits to change; every field left out keeps its current value. All limits are inclusive maxima.",
    **{
        name: (info.annotation | None, Field(default=None, description=info.description))  # type: ignore[operator]
        for name, info in RiskLimits.model_fields.items()
    },
)


class OverlayMCPServer(MCPServer):
    """MCPServer whose argument errors read as one line per field instead of pydantic's report, and whose tools
    and resources wait for `opening` (the overlay opening in the background), if any, before they run."""

    opening: LazyOverlay | None = None

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context | None = None
    ) -> CallToolResult | InputRequiredResult:
        if self.opening is not None:
            try:
                await self.opening.wait_open()
            except OverlayUnavailable as exc:
                raise ToolError(str(exc)) from exc
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(
                    f"invalid arguments for {name}: {_validation_message(exc.__cause__, with_input=True)}"
                ) from exc.__cause__
            raise

    async def read_resource(
        self, uri: Any, context: Context | None = None
    ) -> Iterable[ReadResourceContents] | InputRequiredResult:
        if self.opening is not None:
            try:
                await self.opening.wait_open()
            except OverlayUnavailable as exc:
                raise ResourceError(str(exc)) from exc
        return await super().read_resource(uri, context)


def _tool_error(exc: Exception) -> ToolError:
    return ToolError(str(exc))


def _validation_message(exc: ValidationError, *, with_input: bool = False) -> str:
    def line(err: Any) -> str:
        field = ".".join(str(part) for part in err["loc"]) or "value"
        given = f" (got {err['input']!r})" if with_input and err["type"] != "missing" else ""
        return f"{field}: {err['msg']}{given}"

    return "; ".join(line(err) for err in exc.errors())


async def _with_progress(ctx: Context, label: str, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work`, sending a progress notification every second so the client knows it is alive."""

    async def heartbeat() -> None:
        elapsed_s = 0.0
        while True:
            await ctx.report_progress(elapsed_s, None, f"{label}: {elapsed_s:.0f} s")
            await anyio.sleep(PROGRESS_EVERY_S)
            elapsed_s += PROGRESS_EVERY_S

    # The work's own exception is re-raised as is (a task group would wrap it in an ExceptionGroup).
    failure: Exception | None = None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(heartbeat)
        try:
            result = await work()
        except Exception as exc:
            failure = exc
        finally:
            tasks.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return result


def _supports_form_elicitation(ctx: Context) -> bool:
    capabilities = ctx.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    return elicitation is not None and (elicitation.form is not None or elicitation.url is None)


def build_server(overlay: Overlay | LazyOverlay, *, watch_interval_s: float | None = None) -> MCPServer:
    """The MCP server over `overlay`, open or opening in the background (a LazyOverlay: tools and resources
    are listed at once and wait for it when called). Its lifespan runs the change watcher that feeds resource
    updates and background-event log messages (trigger fired, order filled) to subscribed clients."""
    hub = SessionHub()
    suggestion_lock = anyio.Lock()
    drafts = SamplingDrafts()
    opening = overlay if isinstance(overlay, LazyOverlay) else None

    async def watch_changes() -> None:
        if opening is not None:
            try:
                await opening.wait_open(math.inf)
            except OverlayUnavailable:
                return
        watcher = ChangeWatcher(overlay, hub, **({"interval_s": watch_interval_s} if watch_interval_s else {}))
        await watcher.run()

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(watch_changes)
            yield
            tasks.cancel_scope.cancel()

    server = OverlayMCPServer(
        "ib-mcp-overlay",
        instructions=INSTRUCTIONS,
        version=VERSION,
        lifespan=lifespan,
        subscriptions=hub.bus,
    )
    server.opening = opening
    hub.install(server)
    register_resources(server, overlay)
    register_prompts(server)

    @server.tool(annotations=READ_ONLY_BROKER)
    async def get_context() -> TradingContext:
        """The trading desk at a glance, compact enough to read in one go: trading mode (paper/live) and
        account, cash and net liquidation (USD), positions, pending approvals, recent workflow runs and orders,
        risk limits, triggers and the poller's health. Read-only. Cash, net liquidation and positions are a
        snapshot refreshed every few seconds and right after an order is submitted or filled: `broker_as_of` and
        `broker_age_s` say how old it is (risk checks and approve_trade always read the broker live). If IB_MCP
        is unreachable the broker part says so in `broker_error` and the rest is still returned."""
        return await build_context(overlay)

    async def ask_client_model(
        workflow: str, symbol: str, condition: str, params: dict[str, Any] | None, analyst: AnalystChoice, ctx: Context
    ) -> Sample | None:
        if not wants_client_analysis(analyst, workflow, ctx, overlay.runner.deps.analyst.name):
            return None
        try:
            return sample_request(await draft_prompt(overlay, drafts, workflow, symbol, condition, params))
        except BrokerError as exc:
            raise _tool_error(exc) from exc

    @server.tool(annotations=STARTING)
    async def start_strategy(
        ctx: Context,
        workflow: Annotated[str, Field(description="workflow name; list_workflows shows them, e.g. 'price_alert'")],
        symbol: Annotated[str, Field(min_length=1, max_length=12, description="US stock symbol, e.g. 'AAPL'")],
        condition: Annotated[
            str, Field(description="why the workflow runs, shown to the analyst, e.g. 'price > 200'")
        ] = "manual request",
        params: Annotated[
            dict[str, Any] | None,
            Field(
                description="extra inputs the workflow takes, e.g. {'notional_usd': 1000, 'window_minutes': 30} "
                "for vwap_order; symbol, price and condition are filled in by this tool"
            ),
        ] = None,
        analyst: Annotated[
            AnalystChoice,
            Field(
                description="who analyses: 'auto' (default) asks this client's own model through MCP sampling when "
                "the overlay has no Claude API key and the client supports sampling, else the overlay's analyst; "
                "'client' always asks this client's model (error if it cannot be asked); 'overlay' never does"
            ),
        ] = "auto",
        client_answer: Annotated[CreateMessageResult | None, Resolve(ask_client_model)] = None,
    ) -> RunView:
        """Start a workflow now for one symbol. It gathers account, position and quote from IB_MCP, asks the
        analyst, checks risk, and, if it proposes an order, stops with status "awaiting_approval" and a
        `pending_approval_id`: show that proposal to the user and ask them (review_approval, or approve_trade
        with their answer). No order is placed by this tool. Sends progress notifications while it runs.
        price_alert and momentum_trade can be analysed by this client's own model (MCP sampling, see
        `analyst`); its answer is checked against the same limits as the overlay's analyst, and a malformed or
        out-of-range answer becomes a hold whose reason is shown. The run's recommendation names its source."""
        if client_answer is not None:
            prompt = await draft_prompt(overlay, drafts, workflow, symbol, condition, params)
            params = {**(params or {}), **carried_analysis(client_answer, prompt)}
        try:
            return await _with_progress(
                ctx,
                f"{workflow} {symbol.upper()}",
                lambda: start_workflow(overlay, workflow, symbol, condition, params),
            )
        except (BrokerError, WorkflowError) as exc:
            raise _tool_error(exc) from exc

    @server.tool(annotations=TRADING)
    async def approve_trade(
        approval_id: Annotated[str, Field(description="the approval id from list_pending_approvals")],
        decision: Annotated[Literal["approve", "reject"], Field(description="the user's answer")],
        quantity: Annotated[
            float | None, Field(gt=0, description="shares; at most the proposed quantity; omit to keep it")
        ] = None,
        limit_price: Annotated[
            float | None, Field(gt=0, description="USD; turns the order into a limit order; omit to keep it")
        ] = None,
        note: Annotated[
            str | None, Field(max_length=500, description="the user's reason, kept in the audit log")
        ] = None,
    ) -> DecisionResult:
        """Record the USER's decision on a proposed order. Only call this with the user's explicit answer.
        "approve" re-checks risk limits and the price (a move beyond the allowed drift re-proposes instead), then
        places the order through IB_MCP exactly once and returns the fill; "reject" ends the workflow with no
        order. An approval already decided, rejected or expired does nothing and says so (`accepted` false).
        A workflow that keeps working after its order (a momentum exit watch, a VWAP schedule) comes back with
        run status "running" after RESUME_WAIT_S (default 20 s); follow it with get_workflow_status."""
        try:
            return await overlay.runner.decide(
                approval_id, decision, quantity=quantity, limit_price=limit_price, note=note
            )
        except (BrokerError, WorkflowError) as exc:
            raise _tool_error(exc) from exc

    async def ask_in_chat(approval_id: str, ctx: Context) -> ApprovalAnswer | Elicit[ApprovalAnswer] | None:
        if not _supports_form_elicitation(ctx):
            return None
        pending = next((p for p in await overlay.runner.pending() if p.approval_id == approval_id), None)
        if pending is None:
            return None
        price = f"limit ${pending.limit_price:,.2f}" if pending.limit_price else f"~${pending.reference_price:,.2f}"
        return Elicit(
            f"{pending.mode.upper()} order proposed by {pending.workflow}: {pending.side} {pending.quantity:g} "
            f"{pending.symbol} at {price} (${pending.notional_usd:,.2f}) in account {pending.account_id}.\n"
            f"Analyst ({pending.analyst}): {pending.rationale}\n"
            f"Expires {pending.expires_at:%H:%M:%S} UTC. Approve or reject; you may lower the quantity or set a "
            "limit price.",
            ApprovalAnswer,
        )

    @server.tool(annotations=TRADING)
    async def review_approval(
        approval_id: Annotated[str, Field(description="the approval id from list_pending_approvals")],
        answer: Annotated[ElicitationResult[ApprovalAnswer], Resolve(ask_in_chat)],
    ) -> ReviewResult:
        """Ask the USER, in the chat, to decide one proposed order: a form with decision (approve/reject),
        quantity and limit price. Their answer is recorded exactly as approve_trade would (approve places the
        order once; reject discards it). If this client cannot show forms, nothing is decided and the result says
        to ask the user and call approve_trade with their answer. Declining the form leaves the proposal pending
        until its deadline."""
        pending = next((p for p in await overlay.runner.pending() if p.approval_id == approval_id), None)
        if pending is None:
            approval = await overlay.store.get_approval(approval_id)
            if approval is None:
                raise ToolError(f"no approval with id {approval_id!r}; list_pending_approvals shows the open ones")
            return ReviewResult(
                asked_in_chat=False, message=f"approval {approval_id} is already {approval.status}; nothing was done"
            )
        if answer.action != "accept":
            return ReviewResult(
                asked_in_chat=True,
                message=f"the user {answer.action}d the form; nothing was decided and the proposal stays pending "
                f"until {pending.expires_at:%H:%M:%S} UTC",
                proposal=pending,
            )
        form = answer.data
        if form is None:
            return ReviewResult(
                asked_in_chat=False,
                message="this client cannot show a form: show the proposal to the user, ask them, then call "
                f'approve_trade(approval_id="{approval_id}", decision="approve" or "reject") with their answer',
                proposal=pending,
            )
        try:
            decision = await overlay.runner.decide(
                approval_id, form.decision, quantity=form.quantity, limit_price=form.limit_price, note=form.note
            )
        except (BrokerError, WorkflowError) as exc:
            raise _tool_error(exc) from exc
        return ReviewResult(asked_in_chat=True, message=decision.message, proposal=pending, decision=decision)

    @server.tool(annotations=READ_ONLY)
    async def list_pending_approvals() -> PendingApprovals:
        """Proposed orders waiting for the user's decision, oldest first: symbol, side, quantity, reference price
        and notional (USD), mode (paper/live), the analyst's rationale and the deadline (UTC) after which the
        proposal expires. Answer each with review_approval (a form in the chat) or approve_trade."""
        approvals = await overlay.runner.pending()
        message = (
            f"{len(approvals)} proposal(s) wait for the user's decision; ask the user (review_approval shows a "
            "form where the client supports it), then record the answer with approve_trade."
            if approvals
            else "No proposals are waiting."
        )
        return PendingApprovals(approvals=approvals, message=message)

    @server.tool(annotations=READ_ONLY)
    async def get_workflow_status(
        workflow_id: Annotated[str, Field(description="id returned by start_strategy or list_workflows")],
    ) -> RunView:
        """One workflow run: status (running, awaiting_approval, completed, rejected, denied, cancelled, failed),
        summary, the pending approval id if any, and the result (recommendation, risk decision, order)."""
        try:
            return await overlay.runner.status(workflow_id)
        except WorkflowError as exc:
            raise _tool_error(exc) from exc

    @server.tool(annotations=READ_ONLY)
    async def list_workflows(
        limit: Annotated[int, Field(ge=1, le=100, description="how many recent runs")] = 10,
    ) -> WorkflowList:
        """The workflows that can be started and the most recent runs, newest first."""
        return WorkflowList(available=overlay.runner.workflows, recent=await overlay.runner.recent_runs(limit))

    @server.tool(annotations=REMOVING)
    async def cancel_workflow(
        workflow_id: Annotated[str, Field(description="id returned by start_strategy or list_workflows")],
        reason: Annotated[str, Field(max_length=500, description="why, kept in the audit log")] = "cancelled by user",
    ) -> CancelResult:
        """Cancel a workflow run that waits for approval: its proposal is rejected (no order is placed) and the run
        is marked "cancelled". A run that already finished is left as it is and the result says so. Orders already
        at the broker are not touched: use kill_switch for those."""
        try:
            run = await overlay.runner.status(workflow_id)
            if run.pending_approval_id is None:
                return CancelResult(
                    workflow_id=workflow_id,
                    cancelled=False,
                    message=f"run {workflow_id} is {run.status} with no pending approval; nothing to cancel",
                    run=run,
                )
            await overlay.runner.decide(run.pending_approval_id, "reject", note=f"cancelled: {reason}")
            summary = f"cancelled: {reason}"
            await overlay.store.update_run(workflow_id, status="cancelled", summary=summary)
            await overlay.audit.append("workflow_cancelled", workflow_id=workflow_id, note=reason)
            return CancelResult(
                workflow_id=workflow_id, cancelled=True, message=summary, run=await overlay.runner.status(workflow_id)
            )
        except (BrokerError, WorkflowError) as exc:
            raise _tool_error(exc) from exc

    @server.tool(annotations=SETTING)
    async def add_trigger(
        name: Annotated[
            str, Field(min_length=1, max_length=80, description="unique name; an existing one is replaced")
        ],
        symbol: Annotated[str, Field(min_length=1, max_length=12, description="US stock symbol, e.g. 'AAPL'")],
        condition: Annotated[
            str,
            Field(
                description="e.g. 'price > 200', 'percent_change_5min > 1.5', 'rsi(14) crosses_below 30', "
                "'price > sma(50) and volume > 1000000'"
            ),
        ],
        action: Annotated[
            str, Field(description="'notify_langgraph' (runs price_alert) or 'execute_workflow:<workflow name>'")
        ] = "notify_langgraph",
        channel: Annotated[Literal["urgent", "info"], Field(description="urgent events are handled first")] = "info",
        cooldown_s: Annotated[float, Field(ge=0, description="seconds after firing before it may fire again")] = 0,
        expires_at: Annotated[datetime | None, Field(description="ISO 8601 time after which it stops (UTC)")] = None,
    ) -> TriggerView:
        """Watch a price condition on one symbol: the poller evaluates it on every tick and, when it turns true,
        fires once (again only after it was false) and starts the action's workflow. Saved; survives a restart.
        A condition that does not parse is refused with the position of the problem."""
        try:
            spec = TriggerSpec(
                name=name,
                symbol=symbol,
                condition=condition,
                action=action,
                channel=channel,
                cooldown_s=cooldown_s,
                expires_at=expires_at,
            )
            await overlay.add_trigger(spec)
        except ValidationError as exc:
            raise ToolError(f"trigger not added: {_validation_message(exc)}") from exc
        except ValueError as exc:
            raise ToolError(f"trigger not added: {exc}") from exc
        await overlay.audit.append("trigger_added", trigger=spec.name, symbol=spec.symbol, condition=spec.condition)
        return next(t for t in trigger_list(overlay).triggers if t.spec.name == spec.name)

    @server.tool(annotations=READ_ONLY)
    async def list_triggers() -> TriggerList:
        """Every price trigger: symbol, condition, action, channel, enabled, why it was switched off (a failing
        plugin, an expiry), how often it fired since start, and the symbols the poller watches."""
        return trigger_list(overlay)

    @server.tool(annotations=REMOVING)
    async def remove_trigger(
        name: Annotated[str, Field(description="the trigger's name, see list_triggers")],
    ) -> TriggerChange:
        """Delete a trigger for good (from memory and storage). Removing an unknown name changes nothing."""
        removed = await overlay.remove_trigger(name)
        if removed:
            await overlay.audit.append("trigger_removed", trigger=name)
        return TriggerChange(
            name=name, changed=removed, message="removed" if removed else f"no trigger named {name!r}; nothing changed"
        )

    @server.tool(annotations=SETTING)
    async def set_trigger_enabled(
        name: Annotated[str, Field(description="the trigger's name, see list_triggers")],
        enabled: Annotated[bool, Field(description="false pauses it; true resumes it, re-armed")],
    ) -> TriggerChange:
        """Pause or resume a trigger without deleting it. Resuming re-arms it and clears a run-time failure."""
        changed = await overlay.set_trigger_enabled(name, enabled)
        if not changed:
            raise ToolError(f"no trigger named {name!r}; list_triggers shows the names")
        await overlay.audit.append("trigger_enabled" if enabled else "trigger_disabled", trigger=name)
        return TriggerChange(name=name, changed=True, message="enabled" if enabled else "disabled")

    @server.tool(annotations=SETTING)
    async def set_risk_limits(limits: RiskLimitsUpdate) -> RiskLimitsResult:  # type: ignore[valid-type]
        """Change some risk limits (USD, shares, percent, per-minute/hour counts, minutes); the others keep their
        values. Every proposal and every approval is checked against them. Saved; survives a restart. Returns
        all limits as now in force. Ask the user before loosening a limit."""
        changes = limits.model_dump(exclude_none=True)  # type: ignore[attr-defined]
        if not changes:
            raise ToolError("no limit given; name at least one, e.g. {'max_order_notional_usd': 2000}")
        current = overlay.risk.engine.limits
        try:
            updated = RiskLimits.model_validate(current.model_dump() | changes)
        except ValidationError as exc:
            raise ToolError(f"limits not changed: {_validation_message(exc)}") from exc
        await overlay.risk.set_limits(updated)
        await overlay.audit.append("risk_limits_changed", changes=sorted(changes))
        return RiskLimitsResult(limits=updated, changed=sorted(changes))

    @server.tool(annotations=SETTING)
    async def set_preferences(
        preferences: Annotated[
            dict[str, Any],
            Field(description="key -> JSON value, e.g. {'watchlist': ['AAPL', 'MSFT'], 'max_trades_per_day': 3}"),
        ],
    ) -> PreferencesResult:
        """Remember the user's trading preferences (watchlist, style, notes for the analyst). Saved; survives a
        restart; each key replaces its earlier value. Risk limits and the trading state have their own tools."""
        reserved = RESERVED_PREFERENCES & preferences.keys()
        if reserved:
            raise ToolError(f"{', '.join(sorted(reserved))}: use set_risk_limits or kill_switch for these")
        if not preferences:
            raise ToolError("preferences is empty; give at least one key")
        for key, value in preferences.items():
            await overlay.store.set_preference(key, value)
        saved = await overlay.store.preferences()
        return PreferencesResult(
            saved=sorted(preferences),
            preferences={k: v for k, v in saved.items() if k not in RESERVED_PREFERENCES},
        )

    @server.tool(annotations=TRADING)
    async def kill_switch(
        state: Annotated[
            Literal["halted", "reducing", "active"],
            Field(description="halted: no new orders; reducing: only orders that shrink a position; active: resume"),
        ] = "halted",
        reason: Annotated[str, Field(max_length=500, description="why, kept in the audit log")] = "kill switch",
    ) -> KillSwitchResult:
        """Stop trading NOW. "halted" blocks every new order, cancels every working order at the broker and
        rejects every pending proposal; "reducing" allows only position-reducing orders and cancels working
        orders; "active" resumes normal trading (cancels nothing). The state is saved and survives a restart.
        Returns what was cancelled; an order the broker would not cancel is listed with the error."""
        trading_state = TradingState(state.upper())
        await overlay.risk.set_state(trading_state)
        await overlay.audit.append("kill_switch", state=trading_state.value, note=reason)
        cancelled: list[CancelledOrder] = []
        rejected: list[str] = []
        if trading_state is not TradingState.ACTIVE:
            try:
                working: list[Order] = [o for o in await overlay.broker.live_orders() if o.is_working]
            except BrokerError as exc:
                raise ToolError(
                    f"trading state is now {trading_state.value}, but the working orders could not be listed: {exc}"
                ) from exc
            for order in working:
                line = CancelledOrder(
                    order_id=order.order_id, symbol=order.symbol, side=order.side, quantity=order.quantity
                )
                try:
                    await overlay.broker.cancel_order(order.account_id, order.order_id)
                except BrokerError as exc:
                    line.error = str(exc)
                cancelled.append(line)
        if trading_state is TradingState.HALTED:
            for pending in await overlay.runner.pending():
                result = await overlay.runner.decide(pending.approval_id, "reject", note=f"kill switch: {reason}")
                if result.run is not None:
                    rejected.append(pending.approval_id)
        failed = [c for c in cancelled if c.error]
        return KillSwitchResult(
            trading_state=trading_state.value,
            cancelled_orders=cancelled,
            rejected_approvals=rejected,
            message=f"trading state {trading_state.value}; {len(cancelled) - len(failed)} working order(s) cancelled"
            + (f", {len(failed)} could NOT be cancelled" if failed else "")
            + f"; {len(rejected)} pending proposal(s) rejected",
        )

    @server.tool(annotations=STARTING)
    async def run_market_scan(
        ctx: Context,
        symbols: Annotated[
            list[str] | None, Field(description="symbols to scan; omit for the watchlist / the poller's symbols")
        ] = None,
    ) -> RunView:
        """Scan the watchlist now: overnight moves, gaps, volume and technical set-ups, ranked by the analyst.
        Places no order. Takes a while (progress notifications are sent); the ranked list is in the run's
        `result` and in the resource overlay://scans/latest."""
        watch = [s.upper() for s in symbols] if symbols else overlay.poller.symbols
        if MARKET_SCAN not in overlay.runner.workflows:
            raise ToolError(
                f"the {MARKET_SCAN} workflow is not installed in this overlay "
                f"(available: {', '.join(overlay.runner.workflows)})"
            )
        try:
            return await _with_progress(
                ctx,
                f"scanning {len(watch)} symbol(s)",
                lambda: overlay.runner.start(MARKET_SCAN, params={"symbols": watch}),
            )
        except (BrokerError, WorkflowError) as exc:
            raise _tool_error(exc) from exc

    @server.tool(annotations=READ_ONLY)
    async def get_price_history(
        symbol: Annotated[str, Field(min_length=1, max_length=12, description="US stock symbol, e.g. 'AAPL'")],
        points: Annotated[int, Field(ge=1, le=1000, description="how many of the latest prices")] = 100,
    ) -> PriceHistory:
        """The poller's recent prices of one symbol (USD, oldest first, UTC timestamps) and its indicator values
        as of the last tick (SMA/EMA/RSI/VWAP/percent change, whichever the triggers use). Only symbols the
        poller watches have a history."""
        return await price_history(overlay, symbol, points)

    @server.tool(annotations=READ_ONLY)
    async def get_audit_log(
        limit: Annotated[int, Field(ge=1, le=500, description="how many of the latest entries")] = 50,
        workflow_id: Annotated[str | None, Field(description="only this workflow run's entries")] = None,
    ) -> AuditLogTail:
        """The latest audit log entries, oldest first: workflows started, analyst answers, risk decisions,
        approvals, orders and fills, trigger and limit changes, the kill switch."""
        return AuditLogTail(entries=await overlay.audit.tail(limit, workflow_id=workflow_id))

    @server.tool(annotations=READ_ONLY)
    async def performance_report() -> PerformanceReport:
        """How the overlay's own orders did, per workflow and per trigger: orders sent and filled, fill rate, USD
        bought and sold, realised P&L (average cost of the overlay's own buys), win rate, average slippage in basis
        points against the proposal's reference price (positive = worse), max drawdown of realised P&L, exposure
        over time, and Claude calls and cost. The same figures as a replay report. Definitions are in the result."""
        return await build_performance_report(overlay.store, overlay.usage)

    @server.tool(annotations=ADDITIVE)
    async def suggest_strategy_changes(
        data_path: Annotated[
            str,
            Field(description="CSV of recorded bars on the overlay's machine: date, open, high, low, close, volume"),
        ],
        symbol: Annotated[str | None, Field(description="the symbol, when the CSV has no symbol column")] = None,
        approve: Annotated[str, Field(description="approvals in the replays: all, none, or under:USD")] = "all",
        commission: Annotated[str, Field(description="'ib', 'none', or PER_SHARE[,MIN[,MAX_PCT]]")] = "ib",
        slippage_bps: Annotated[float, Field(ge=0, le=1000, description="fills this far beyond the close")] = 0,
    ) -> SuggestionSet:
        """Review how the current triggers and risk limits would have done on recorded bars (P&L, win rate,
        drawdown by workflow and trigger) and propose parameter changes (thresholds, order size, cooldowns).
        Each proposal is replayed on the same bars: `before` and `after` are side by side. Nothing changes until
        the user approves a proposal with decide_strategy_change. Show the user both columns first."""
        try:
            return await suggest_for_overlay(
                overlay,
                Path(data_path),
                symbol=symbol,
                policy=approve,
                commission=commission,
                slippage_bps=slippage_bps,
            )
        except (SuggestionError, ValueError) as exc:
            raise _tool_error(exc) from exc

    @server.tool(annotations=SETTING)
    async def decide_strategy_change(
        suggestion_id: Annotated[str, Field(description="from suggest_strategy_changes")],
        decision: Literal["approve", "reject"],
    ) -> SuggestionDecision:
        """The user's answer to one suggested change. Approve applies it once (the trigger is saved, or the risk
        limit set); reject drops it. Never approve without the user's explicit yes."""
        async with suggestion_lock:
            try:
                return await decide_suggestion(overlay, suggestion_id, decision)
            except (SuggestionError, ValueError) as exc:
                raise _tool_error(exc) from exc

    @server.tool(annotations=READ_ONLY_BROKER)
    async def get_health() -> HealthReport:
        """Is everything working: IB_MCP reachable and exposing its order tools, the poller polling, the
        workflow runner alive, and how much of today's Claude budget (USD) is left. `problems` says what to fix."""
        return await check_health(overlay)

    return server
