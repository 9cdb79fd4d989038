"""The workflow graphs the runner can start, by name. Each module has WORKFLOW and build(deps).

A graph module (and LangGraph with it) is imported the first time its builder is called, not when this
package is imported: the MCP server lists its tools before any graph is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langgraph.graph import StateGraph

    from workflows.deps import WorkflowDeps

GraphBuilder = Callable[["WorkflowDeps"], "StateGraph"]

# workflow name == module name under workflows/graphs (each module's WORKFLOW; tests check they agree)
WORKFLOW_NAMES = ("price_alert", "covered_call", "momentum_trade", "market_scan", "vwap_order", "position_monitor")


def graph_builder(workflow: str) -> Callable[..., StateGraph]:
    """`workflow`'s build(deps, **options), importing its module on the first call."""
    if workflow not in WORKFLOW_NAMES:
        raise KeyError(f"no workflow graph named {workflow!r}; known: {', '.join(WORKFLOW_NAMES)}")

    def build(deps: WorkflowDeps, **options: Any) -> StateGraph:
        builder: Callable[..., StateGraph] = import_module(f"{__name__}.{workflow}").build
        return builder(deps, **options)

    build.__qualname__ = f"{workflow}.build"
    return build


GRAPHS: dict[str, GraphBuilder] = {name: graph_builder(name) for name in WORKFLOW_NAMES}
