"""Analysis by the connected client's own model (MCP sampling) for workflows the user starts.

`start_strategy(analyst=...)` decides here whether to ask the client: "client" insists, "auto" asks when the
overlay has no Claude API key of its own and the client declared the sampling capability, "overlay" never
asks. The analyst modules (and SQLAlchemy with them) are imported when a sampled start first needs them.
The prompt is the Claude analyst's, built from the same inputs the workflow's own `gather` reads.

On protocol 2026-07-28 a sampled tool call takes two rounds (the client answers, then retries the call) and
the request must be identical in both, so a draft is kept for DRAFT_TTL_S under the call's arguments: the
retry finds the prompt it was asked, not one rebuilt from a quote that moved in between.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import Sample
from mcp_types import CreateMessageResult, ModelHint, ModelPreferences, SamplingMessage, TextContent

from mcp_overlay_server.actions import manual_event

if TYPE_CHECKING:
    from mcp_overlay_server.app import Overlay
    from workflows.analyst import AnalysisRequest
    from workflows.client_analyst import SamplingPrompt
    from workflows.deps import WorkflowDeps

AnalystChoice = Literal["auto", "overlay", "client"]
DRAFT_TTL_S = 300.0
MAX_DRAFTS = 64
RequestBuilder = Callable[["WorkflowDeps", dict[str, Any]], Awaitable["AnalysisRequest"]]


async def _price_alert_request(deps: WorkflowDeps, event: dict[str, Any]) -> AnalysisRequest:
    from workflows.graphs import price_alert

    inputs = await price_alert.gather_inputs(deps, event)
    return price_alert.analysis_request(deps, {**inputs, "event": event, "workflow_id": "sampling-draft"})


async def _momentum_request(deps: WorkflowDeps, event: dict[str, Any]) -> AnalysisRequest:
    from workflows.graphs import momentum_trade

    inputs = await momentum_trade.gather_inputs(deps, event)
    return momentum_trade.analysis_request(deps, {**inputs, "event": event, "workflow_id": "sampling-draft"})


SAMPLING_WORKFLOWS: dict[str, RequestBuilder] = {
    "price_alert": _price_alert_request,
    "momentum_trade": _momentum_request,
}


def client_can_sample(ctx: Context) -> bool:
    capabilities = ctx.client_capabilities
    return capabilities is not None and capabilities.sampling is not None


def wants_client_analysis(choice: AnalystChoice, workflow: str, ctx: Context, overlay_analyst: str) -> bool:
    """Whether this start asks the client's model. Raises when "client" was asked for and cannot be had."""
    if choice == "overlay":
        return False
    possible = client_can_sample(ctx) and workflow in SAMPLING_WORKFLOWS
    if choice == "client" and not possible:
        why = (
            "this MCP client does not offer sampling (its model cannot be asked)"
            if not client_can_sample(ctx)
            else f"{workflow} does not take a client analysis (only {', '.join(SAMPLING_WORKFLOWS)} do)"
        )
        raise ToolError(f"analyst='client' is not possible: {why}; use analyst='auto' or 'overlay'")
    return possible and (choice == "client" or overlay_analyst != "claude")


def draft_key(workflow: str, symbol: str, condition: str, params: dict[str, Any] | None) -> str:
    call = {"workflow": workflow, "symbol": symbol.strip().upper(), "condition": condition, "params": params}
    return hashlib.sha256(json.dumps(call, sort_keys=True, default=str).encode()).hexdigest()


class SamplingDrafts:
    """Prompts sent to the client, by call, for DRAFT_TTL_S (at most MAX_DRAFTS, oldest dropped first)."""

    def __init__(self, ttl_s: float = DRAFT_TTL_S, max_drafts: int = MAX_DRAFTS) -> None:
        self._ttl_s = ttl_s
        self._max_drafts = max_drafts
        self._drafts: OrderedDict[str, tuple[float, SamplingPrompt]] = OrderedDict()

    def get(self, key: str) -> SamplingPrompt | None:
        found = self._drafts.get(key)
        if found is None or time.monotonic() - found[0] > self._ttl_s:
            self._drafts.pop(key, None)
            return None
        return found[1]

    def put(self, key: str, prompt: SamplingPrompt) -> None:
        self._drafts[key] = (time.monotonic(), prompt)
        self._drafts.move_to_end(key)
        while len(self._drafts) > self._max_drafts:
            self._drafts.popitem(last=False)


async def draft_prompt(
    overlay: Overlay, drafts: SamplingDrafts, workflow: str, symbol: str, condition: str, params: dict[str, Any] | None
) -> SamplingPrompt:
    from workflows.client_analyst import sampling_prompt

    key = draft_key(workflow, symbol, condition, params)
    prompt = drafts.get(key)
    if prompt is None:
        event = await manual_event(overlay, symbol, condition, params)
        prompt = sampling_prompt(await SAMPLING_WORKFLOWS[workflow](overlay.runner.deps, event))
        drafts.put(key, prompt)
    return prompt


def sample_request(prompt: SamplingPrompt) -> Sample:
    from workflows.client_analyst import MAX_TOKENS

    return Sample(
        [SamplingMessage(role="user", content=TextContent(type="text", text=prompt.user))],
        max_tokens=MAX_TOKENS,
        system_prompt=prompt.system,
        temperature=0.0,
        model_preferences=ModelPreferences(hints=[ModelHint(name="claude")], intelligence_priority=0.8),
    )


def carried_analysis(answer: CreateMessageResult, prompt: SamplingPrompt) -> dict[str, Any]:
    """The client's answer as the run's event carries it (`EVENT_KEY`); non-text content counts as empty."""
    from workflows.client_analyst import EVENT_KEY, ClientAnalysis

    text = answer.content.text if isinstance(answer.content, TextContent) else ""
    return {EVENT_KEY: ClientAnalysis(text=text, model=answer.model, prompt_sha256=prompt.sha256).model_dump()}
