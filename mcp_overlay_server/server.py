"""The overlay's MCP server: a table of tools. Each docstring is what the model reads."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from broker.errors import BrokerError
from mcp_overlay_server.app import Overlay
from mcp_overlay_server.context import TradingContext, build_context
from workflows.runner import DecisionResult, PendingApproval, RunView, WorkflowError

INSTRUCTIONS = """\
IB MCP Overlay runs trading workflows beside IB_MCP (the raw Interactive Brokers tools).
Workflows propose orders; nothing is sent to the broker until the human approves with approve_trade.
Start with get_context. Pending proposals: list_pending_approvals. Never approve on the user's behalf:
show the proposal (symbol, side, quantity, price, notional, mode paper/live) and ask the user first."""


class PendingApprovals(BaseModel):
    approvals: list[PendingApproval]
    message: str


class WorkflowList(BaseModel):
    available: list[str]
    recent: list[RunView]


def _tool_error(exc: Exception) -> ToolError:
    return ToolError(str(exc))


def build_server(overlay: Overlay) -> MCPServer:
    server = MCPServer("ib-mcp-overlay", instructions=INSTRUCTIONS, version="0.1.0")

    @server.tool()
    async def get_context() -> TradingContext:
        """The trading desk at a glance, compact enough to read in one go: trading mode (paper/live) and
        account, cash and net liquidation (USD), positions, pending approvals, recent workflow runs and orders,
        risk limits, triggers and the poller's health. Read-only. If IB_MCP is unreachable the broker part says
        so in `broker_error` and the rest is still returned."""
        return await build_context(overlay)

    @server.tool()
    async def start_strategy(
        workflow: Annotated[str, Field(description="workflow name; list_workflows shows them, e.g. 'price_alert'")],
        symbol: Annotated[str, Field(min_length=1, max_length=12, description="US stock symbol, e.g. 'AAPL'")],
        condition: Annotated[
            str, Field(description="why the workflow runs, shown to the analyst, e.g. 'price > 200'")
        ] = "manual request",
    ) -> RunView:
        """Start a workflow now for one symbol. It gathers account, position and quote from IB_MCP, asks the
        analyst, checks risk, and, if it proposes an order, stops with status "awaiting_approval" and a
        `pending_approval_id`: show that proposal to the user and call approve_trade with their answer. No order
        is placed by this tool."""
        try:
            quote = (await overlay.broker.quotes([symbol]))[symbol.upper()]
            params: dict[str, Any] = {
                "symbol": symbol.upper(),
                "price": quote.price,
                "condition": condition,
                "trigger_name": "manual",
            }
            return await overlay.runner.start(workflow, params=params)
        except (BrokerError, WorkflowError) as exc:
            raise _tool_error(exc) from exc

    @server.tool()
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
        order. An approval already decided, rejected or expired does nothing and says so (`accepted` false)."""
        try:
            return await overlay.runner.decide(
                approval_id, decision, quantity=quantity, limit_price=limit_price, note=note
            )
        except (BrokerError, WorkflowError) as exc:
            raise _tool_error(exc) from exc

    @server.tool()
    async def list_pending_approvals() -> PendingApprovals:
        """Proposed orders waiting for the user's decision, oldest first: symbol, side, quantity, reference price
        and notional (USD), mode (paper/live), the analyst's rationale and the deadline (UTC) after which the
        proposal expires. Read-only; answer each with approve_trade."""
        approvals = await overlay.runner.pending()
        message = (
            f"{len(approvals)} proposal(s) wait for the user's decision; ask the user, then call approve_trade."
            if approvals
            else "No proposals are waiting."
        )
        return PendingApprovals(approvals=approvals, message=message)

    @server.tool()
    async def get_workflow_status(
        workflow_id: Annotated[str, Field(description="id returned by start_strategy or list_workflows")],
    ) -> RunView:
        """One workflow run: status (running, awaiting_approval, completed, rejected, denied, failed), summary,
        the pending approval id if any, and the result (recommendation, risk decision, order). Read-only."""
        try:
            return await overlay.runner.status(workflow_id)
        except WorkflowError as exc:
            raise _tool_error(exc) from exc

    @server.tool()
    async def list_workflows(
        limit: Annotated[int, Field(ge=1, le=100, description="how many recent runs")] = 10,
    ) -> WorkflowList:
        """The workflows that can be started and the most recent runs, newest first. Read-only."""
        return WorkflowList(available=overlay.runner.workflows, recent=await overlay.runner.recent_runs(limit))

    return server
