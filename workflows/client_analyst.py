"""The analyst answer the user's own MCP client gave through sampling (`sampling/createMessage`).

A user-started workflow may ask the connected client's model instead of the overlay's analyst: the
`start_strategy` tool sends the prompt built here, and the run's event carries the answer as
`client_analysis`. The graph then checks that answer exactly as it checks Claude's (same schema, same
limits against its own fresh quote and position): a malformed or out-of-range answer becomes a hold with
the reason, never an order. The client pays for its model, so the call is recorded at zero cost and does
not count against the overlay's daily Claude budget.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel

from workflows.analyst import SYSTEM_PROMPT, AnalysisRequest, Analyst, ClaudeAnswer, interpret_answer, user_prompt
from workflows.models import Recommendation
from workflows.usage import TokenUsage, UsageLedger

SOURCE = "client-sampling"
EVENT_KEY = "client_analysis"
MAX_TOKENS = 1024
_FENCED_JSON = re.compile(r"^```(?:json)?\s*\n(?P<body>.*)\n```$", re.DOTALL)


class ClientAnalysis(BaseModel):
    """What the client's model answered, as carried in a run's event."""

    text: str
    model: str
    prompt_sha256: str


class SamplingPrompt(BaseModel):
    system: str
    user: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()


def sampling_prompt(request: AnalysisRequest) -> SamplingPrompt:
    """The Claude analyst's prompt, plus the answer schema in words: sampling has no structured-output mode."""
    schema = json.dumps(ClaudeAnswer.model_json_schema(), indent=1)
    return SamplingPrompt(
        system=f"{SYSTEM_PROMPT}\n\nThe JSON object must match this JSON Schema; write nothing before or after "
        f"it:\n{schema}",
        user=user_prompt(request),
    )


def unfenced(text: str) -> str:
    """Client models often wrap JSON in a Markdown code fence; the object inside is the answer."""
    stripped = text.strip()
    match = _FENCED_JSON.match(stripped)
    return match.group("body") if match else stripped


class ClientSampledAnalyst:
    """Replays the client's recorded answer for one run; checked and recorded like a Claude answer."""

    name = SOURCE

    def __init__(self, analysis: ClientAnalysis, usage: UsageLedger) -> None:
        self._analysis = analysis
        self._usage = usage

    async def recommend(self, request: AnalysisRequest) -> Recommendation:
        who = f"The client's model ({self._analysis.model})"
        recommendation, rejection = interpret_answer(unfenced(self._analysis.text), request, source=SOURCE, who=who)
        await self._usage.record(
            workflow=request.workflow,
            workflow_id=request.workflow_id,
            model=f"{SOURCE}:{self._analysis.model}",
            usage=TokenUsage(),
            prompt_sha256=self._analysis.prompt_sha256,
            response_text=self._analysis.text,
            error=rejection,
            cost_usd=0.0,
        )
        return recommendation


def analyst_for(event: dict[str, Any], default: Analyst, usage: UsageLedger) -> Analyst:
    """The client's sampled answer when the run was started with one, else the overlay's analyst."""
    carried = event.get(EVENT_KEY)
    if carried is None:
        return default
    return ClientSampledAnalyst(ClientAnalysis.model_validate(carried), usage)
