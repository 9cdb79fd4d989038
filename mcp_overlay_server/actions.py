"""Starting a workflow by hand, the same way from the start_strategy tool and from POST /workflows/execute."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workflows.run_types import RunView

if TYPE_CHECKING:
    from mcp_overlay_server.app import Overlay

MANUAL_TRIGGER = "manual"


async def manual_event(overlay: Overlay, symbol: str, condition: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The event a hand-started run begins with: `params` (the workflow's own inputs, e.g. notional_usd for
    vwap_order) plus the symbol, its current price and the condition, which always win."""
    symbol = symbol.strip().upper()
    quote = (await overlay.broker.quotes([symbol]))[symbol]
    return {
        **(params or {}),
        "symbol": symbol,
        "price": quote.price,
        "condition": condition,
        "trigger_name": MANUAL_TRIGGER,
    }


async def start_workflow(
    overlay: Overlay, workflow: str, symbol: str, condition: str, params: dict[str, Any] | None = None
) -> RunView:
    """Quote `symbol`, then run `workflow` until it finishes or waits for approval."""
    return await overlay.runner.start(workflow, params=await manual_event(overlay, symbol, condition, params))
