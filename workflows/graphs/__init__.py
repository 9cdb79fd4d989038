"""The workflow graphs the runner can start, by name. Each module has WORKFLOW and build(deps)."""

from collections.abc import Callable

from langgraph.graph import StateGraph

from workflows.deps import WorkflowDeps
from workflows.graphs import price_alert

GraphBuilder = Callable[[WorkflowDeps], StateGraph]

GRAPHS: dict[str, GraphBuilder] = {
    price_alert.WORKFLOW: price_alert.build,
}
