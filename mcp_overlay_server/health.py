"""One health report for `/healthz` and the get_health tool: IB_MCP, poller, workflow runner, Claude budget."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

import anyio
from pydantic import BaseModel

from broker.errors import BrokerError

if TYPE_CHECKING:
    from mcp_overlay_server.app import Overlay

PROBE_TIMEOUT_S = 3.0
STALE_POLL_INTERVALS = 5


class IBMCPHealth(BaseModel):
    target: str
    connected: bool
    error: str | None
    missing_order_tools: list[str]


class PollerHealth(BaseModel):
    running: bool
    cycles: int
    failed_polls: int
    skipped_cycles: int
    seconds_since_last_poll: float | None
    last_error: str | None


class RunnerHealth(BaseModel):
    alive: bool
    workflows: list[str]
    pending_events: int | None
    background_errors: list[str]


class ClaudeBudget(BaseModel):
    analyst: str
    daily_budget_usd: float
    spent_today_usd: float
    left_today_usd: float
    last_call_error: str | None = None


class HealthReport(BaseModel):
    status: Literal["ok", "degraded"]
    problems: list[str]
    ib_mcp: IBMCPHealth
    poller: PollerHealth
    runner: RunnerHealth
    claude: ClaudeBudget


async def _probe_broker(overlay: Overlay) -> None:
    """Open the IB_MCP session if it is not open, within a short limit; the outcome lands in last_error."""
    if overlay.broker.connected:
        return
    with anyio.move_on_after(PROBE_TIMEOUT_S):
        try:
            await overlay.broker.connect()
        except BrokerError:
            return


async def check_health(overlay: Overlay) -> HealthReport:
    await _probe_broker(overlay)
    broker = overlay.broker
    stats = overlay.poller.stats
    since_poll_s = (datetime.now(UTC) - stats.last_poll_at).total_seconds() if stats.last_poll_at else None
    spent_usd = await overlay.usage.spent_today_usd()
    last_call = await overlay.usage.last_call()
    budget_usd = overlay.settings.claude_daily_budget_usd
    backlog = getattr(overlay.bus, "backlog", None)
    report = HealthReport(
        status="ok",
        problems=[],
        ib_mcp=IBMCPHealth(
            target=broker.target_label,
            connected=broker.connected,
            error=broker.last_error,
            missing_order_tools=broker.missing_order_tools() if broker.connected else [],
        ),
        poller=PollerHealth(
            running=overlay.poller.running,
            cycles=stats.cycles,
            failed_polls=stats.failed_polls,
            skipped_cycles=stats.skipped_cycles,
            seconds_since_last_poll=None if since_poll_s is None else round(since_poll_s, 3),
            last_error=stats.last_error,
        ),
        runner=RunnerHealth(
            alive=not overlay.background_errors,
            workflows=overlay.runner.workflows,
            pending_events=backlog if isinstance(backlog, int) else None,
            background_errors=list(overlay.background_errors),
        ),
        claude=ClaudeBudget(
            analyst=overlay.runner.deps.analyst.name,
            daily_budget_usd=budget_usd,
            spent_today_usd=round(spent_usd, 4),
            left_today_usd=round(max(budget_usd - spent_usd, 0.0), 4),
            last_call_error=None if last_call is None or last_call.ok else last_call.error,
        ),
    )
    report.problems = _problems(report, overlay.poller.interval_s)
    report.status = "degraded" if report.problems else "ok"
    return report


def _problems(report: HealthReport, interval_s: float) -> list[str]:
    problems: list[str] = []
    if not report.ib_mcp.connected:
        problems.append(f"IB_MCP not connected: {report.ib_mcp.error or 'no session yet'}")
    elif report.ib_mcp.missing_order_tools:
        problems.append("IB_MCP does not expose its order tools: remove 'Orders' from EXCLUDED_TAGS in IB_MCP's .env")
    poller = report.poller
    stale_after_s = STALE_POLL_INTERVALS * max(interval_s, 1.0)
    since_s = poller.seconds_since_last_poll
    if poller.running and since_s is not None and since_s > stale_after_s:
        problems.append(f"poller has not completed a poll for {since_s:.0f} s")
    if poller.last_error:
        problems.append(f"poller: {poller.last_error}")
    if not report.runner.alive:
        problems.append("workflow runner: " + "; ".join(report.runner.background_errors))
    if report.claude.last_call_error:
        problems.append(f"Claude API failing (the analyst answers 'hold'): {report.claude.last_call_error}")
    if report.claude.analyst != "offline" and report.claude.left_today_usd <= 0:
        problems.append("Claude daily budget used up: the analyst answers 'hold' until tomorrow (New York)")
    return problems
