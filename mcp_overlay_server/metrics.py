"""Prometheus metrics, read at scrape time from what the overlay already keeps (poller stats, the workflow
store, the order ledger, the Claude usage ledger), so no counter is sprinkled through the code and a restart
loses nothing that the databases remember."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from mcp_overlay_server.performance import build_performance_report
from workflows.times import as_utc

if TYPE_CHECKING:
    from mcp_overlay_server.app import Overlay

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RUNS_CONSIDERED = 10_000
ORDERS_CONSIDERED = 10_000
FINISHED = frozenset({"completed", "rejected", "denied", "cancelled", "failed", "expired"})


class _Snapshot(Collector):
    """Yields metric families computed once before the scrape."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        return self._metrics


def _poller_metrics(overlay: Overlay) -> list[Metric]:
    stats = overlay.poller.stats
    latency = GaugeMetricFamily("overlay_poll_latency_seconds", "Duration of the last completed poll cycle")
    latency.add_metric([], (stats.last_poll_ms or 0.0) / 1000)
    cycles = CounterMetricFamily("overlay_poll_cycles", "Completed poll cycles")
    cycles.add_metric([], stats.cycles)
    failed = CounterMetricFamily("overlay_poll_failures", "Poll cycles whose price source failed")
    failed.add_metric([], stats.failed_polls)
    missed = CounterMetricFamily("overlay_polls_missed", "Poll cycles skipped because a cycle overran")
    missed.add_metric([], stats.skipped_cycles)
    running = GaugeMetricFamily("overlay_poller_running", "1 while the polling loop runs")
    running.add_metric([], 1.0 if overlay.poller.running else 0.0)
    fires = CounterMetricFamily("overlay_trigger_fires", "Trigger fires since start", labels=["trigger"])
    for name, count in sorted(stats.fired_by_trigger.items()):
        fires.add_metric([name], count)
    connected = GaugeMetricFamily("overlay_ib_mcp_connected", "1 while the IB_MCP session is open")
    connected.add_metric([], 1.0 if overlay.broker.connected else 0.0)
    return [latency, cycles, failed, missed, running, fires, connected]


async def _workflow_metrics(overlay: Overlay) -> list[Metric]:
    runs = await overlay.store.list_runs(limit=RUNS_CONSIDERED)
    by_outcome = Counter((run.workflow, run.status) for run in runs)
    outcomes = CounterMetricFamily("overlay_workflow_runs", "Workflow runs by outcome", labels=["workflow", "status"])
    for (workflow, status), count in sorted(by_outcome.items()):
        outcomes.add_metric([workflow, status], count)
    durations: defaultdict[str, list[float]] = defaultdict(list)
    for run in runs:
        if run.status in FINISHED:
            durations[run.workflow].append((as_utc(run.updated_at) - as_utc(run.created_at)).total_seconds())
    duration = SummaryMetricFamily(
        "overlay_workflow_duration_seconds",
        "Time from start to finish of finished runs (includes the wait for approval)",
        labels=["workflow"],
    )
    for workflow, seconds in sorted(durations.items()):
        duration.add_metric([workflow], count_value=len(seconds), sum_value=sum(seconds))
    pending = GaugeMetricFamily("overlay_pending_approvals", "Proposals waiting for the user's decision")
    pending.add_metric([], len(await overlay.store.pending_approvals()))
    return [outcomes, duration, pending]


async def _claude_metrics(overlay: Overlay) -> list[Metric]:
    tokens = CounterMetricFamily("overlay_claude_tokens", "Claude tokens billed", labels=["workflow", "direction"])
    cost = CounterMetricFamily("overlay_claude_cost_usd", "Claude cost in USD", labels=["workflow"])
    calls = CounterMetricFamily("overlay_claude_calls", "Claude calls", labels=["workflow", "outcome"])
    for spend in await overlay.usage.by_workflow():
        tokens.add_metric([spend.workflow, "input"], spend.input_tokens)
        tokens.add_metric([spend.workflow, "output"], spend.output_tokens)
        cost.add_metric([spend.workflow], spend.cost_usd)
        calls.add_metric([spend.workflow, "ok"], spend.calls - spend.failed_calls)
        calls.add_metric([spend.workflow, "failed"], spend.failed_calls)
    today = GaugeMetricFamily("overlay_claude_spent_today_usd", "Claude spend on the current New York trading day")
    today.add_metric([], await overlay.usage.spent_today_usd())
    budget = GaugeMetricFamily("overlay_claude_daily_budget_usd", "Configured daily Claude budget")
    budget.add_metric([], overlay.settings.claude_daily_budget_usd)
    return [tokens, cost, calls, today, budget]


async def _order_metrics(overlay: Overlay) -> list[Metric]:
    orders = await overlay.store.orders(limit=ORDERS_CONSIDERED)
    by_status = Counter((order.side, order.status) for order in orders)
    counts = CounterMetricFamily("overlay_orders", "Orders in the ledger by side and status", labels=["side", "status"])
    for (side, status), count in sorted(by_status.items()):
        counts.add_metric([side, status], count)
    report = await build_performance_report(overlay.store)
    fill_rate = GaugeMetricFamily("overlay_order_fill_rate", "Filled / sent orders", labels=["workflow"])
    slippage = GaugeMetricFamily(
        "overlay_order_slippage_bps", "Average slippage vs the proposal price (positive = worse)", labels=["workflow"]
    )
    pnl = GaugeMetricFamily("overlay_realized_pnl_usd", "Realised P&L of the overlay's own fills", labels=["workflow"])
    for line in report.workflows:
        if line.fill_rate is not None:
            fill_rate.add_metric([line.workflow], line.fill_rate)
        if line.avg_slippage_bps is not None:
            slippage.add_metric([line.workflow], line.avg_slippage_bps)
        pnl.add_metric([line.workflow], line.realized_pnl_usd)
    return [counts, fill_rate, slippage, pnl]


async def render_metrics(overlay: Overlay) -> bytes:
    """The Prometheus text exposition of every overlay metric, computed now."""
    metrics = [
        *_poller_metrics(overlay),
        *await _workflow_metrics(overlay),
        *await _claude_metrics(overlay),
        *await _order_metrics(overlay),
    ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(metrics))
    return generate_latest(registry)
