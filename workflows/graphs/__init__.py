"""The workflow graphs the runner can start, by name. Each module has WORKFLOW and build(deps)."""

from collections.abc import Callable

from langgraph.graph import StateGraph

from workflows.deps import WorkflowDeps
from workflows.graphs import covered_call, market_scan, momentum_trade, position_monitor, price_alert, vwap_order

GraphBuilder = Callable[[WorkflowDeps], StateGraph]

GRAPHS: dict[str, GraphBuilder] = {
    price_alert.WORKFLOW: price_alert.build,
    covered_call.WORKFLOW: covered_call.build,
    momentum_trade.WORKFLOW: momentum_trade.build,
    market_scan.WORKFLOW: market_scan.build,
    vwap_order.WORKFLOW: vwap_order.build,
    position_monitor.WORKFLOW: position_monitor.build,
}
