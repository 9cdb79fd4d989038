"""What the runner reports about workflow runs: plain pydantic models and the runner's error.

Kept apart from runner.py so the MCP server, the REST endpoints and their tool schemas can name these types
without importing LangGraph or the graphs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class WorkflowError(Exception):
    """A workflow could not start or continue; the message says why and what to do."""


class RunView(BaseModel):
    workflow_id: str
    workflow: str
    status: str
    symbol: str | None = None
    summary: str = ""
    error: str | None = None
    pending_approval_id: str | None = None
    result: dict[str, Any] = {}
    created_at: datetime
    updated_at: datetime


class PendingApproval(BaseModel):
    approval_id: str
    workflow_id: str
    workflow: str
    mode: str
    account_id: str
    symbol: str
    instrument: str
    side: str
    quantity: float
    order_type: str
    limit_price: float | None
    reference_price: float
    notional_usd: float
    rationale: str
    analyst: str
    expires_at: datetime
    details: dict[str, Any] = {}
    how_to_answer: str


class DecisionResult(BaseModel):
    approval_id: str
    accepted: bool
    message: str
    run: RunView | None = None
