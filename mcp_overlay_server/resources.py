"""The overlay's MCP resources: what a client can read (and subscribe to) without calling a tool."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError
from pydantic import BaseModel

from mcp_overlay_server.context import build_context
from mcp_overlay_server.notifications import CONTEXT_URI, PENDING_URI, SCANS_URI, TRIGGERS_URI
from mcp_overlay_server.views import latest_scan, price_history, trigger_list
from workflows.run_types import PendingApproval, WorkflowError

if TYPE_CHECKING:
    from mcp_overlay_server.app import Overlay

JSON = "application/json"
PRICE_POINTS = 120


class PendingList(BaseModel):
    approvals: list[PendingApproval]


def register_resources(server: MCPServer, overlay: Overlay) -> None:
    @server.resource(CONTEXT_URI, name="trading-context", mime_type=JSON)
    async def context_resource() -> str:
        """The trading desk at a glance: mode, account, cash, positions, pending approvals, recent runs and
        orders, risk limits, triggers and the poller's health (the same as the get_context tool)."""
        return (await build_context(overlay)).model_dump_json()

    @server.resource("overlay://workflows/{workflow_id}", name="workflow-run", mime_type=JSON)
    async def workflow_resource(workflow_id: str) -> str:
        """One workflow run: status, summary, pending approval id and result."""
        try:
            return (await overlay.runner.status(workflow_id)).model_dump_json()
        except WorkflowError as exc:
            raise ResourceError(str(exc)) from exc

    @server.resource(PENDING_URI, name="pending-approvals", mime_type=JSON)
    async def pending_resource() -> str:
        """Proposed orders waiting for the user's decision, oldest first, each with its deadline (UTC)."""
        return PendingList(approvals=await overlay.runner.pending()).model_dump_json()

    @server.resource(TRIGGERS_URI, name="triggers", mime_type=JSON)
    async def triggers_resource() -> str:
        """Every price trigger: symbol, condition, action, enabled, why it was switched off, times fired."""
        return trigger_list(overlay).model_dump_json()

    @server.resource("overlay://prices/{symbol}", name="recent-prices", mime_type=JSON)
    async def prices_resource(symbol: str) -> str:
        """The poller's recent prices of one symbol (USD, oldest first) and its current indicator values."""
        return (await price_history(overlay, symbol, PRICE_POINTS)).model_dump_json()

    @server.resource(SCANS_URI, name="latest-market-scan", mime_type=JSON)
    async def scans_resource() -> str:
        """The most recent market scan run and its ranked opportunities."""
        return (await latest_scan(overlay)).model_dump_json()
