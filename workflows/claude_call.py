"""One Claude Messages API call with everything around it that every Claude user here needs: the daily budget
checked first, the whole call (SDK retries included) bounded by `timeout_s`, the answer parsed into a pydantic
model and checked by the caller's rules, and the call recorded in the usage ledger whatever happened: a
rejected answer's tokens are billed too. The caller never sees an exception from the Claude API; it gets a
`ClaudeReply` whose `problem` says why there is no usable answer.

The answer is parsed here rather than by `messages.parse()`: parse raises inside the SDK on a malformed answer
and loses the response's `usage`. Before each call, the budget is checked against today's recorded spending
plus the worst-case cost of the calls under way in this process (`UsageLedger.reservation`), so
concurrent calls see each other; the last call started under the budget can still overshoot it by its own cost,
and separate worker processes do not see each other's calls in flight.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import anyio
from pydantic import BaseModel, ValidationError

from workflows.models import DEFAULT_CLAUDE_MODEL
from workflows.usage import TokenUsage, UsageLedger, price_of

if TYPE_CHECKING:
    import anthropic
    from anthropic.types import Usage

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
ProblemKind = Literal["budget", "api", "rejected"]
Effort = Literal["low", "medium", "high"]


@dataclass(frozen=True)
class ClaudeReply(Generic[M]):
    """Either a checked answer, or the problem: the budget was spent, the API failed, or the answer was
    rejected (stopped early, not valid JSON for the schema, or refused by the caller's check)."""

    answer: M | None
    problem: str | None = None
    kind: ProblemKind | None = None

    @property
    def hold_reason(self) -> str:
        """Why the caller holds instead of acting on an answer, in the words every analyst shows."""
        if self.kind == "budget":
            return f"{self.problem}; no analysis until midnight ET"
        if self.kind == "api":
            return f"No Claude analysis: {self.problem}. Holding."
        return f"Claude's answer was rejected: {self.problem}. Holding."


def token_usage(usage: Usage) -> TokenUsage:
    cache_write_total = usage.cache_creation_input_tokens or 0
    cache_write_1h = usage.cache_creation.ephemeral_1h_input_tokens if usage.cache_creation else 0
    return TokenUsage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_write_5m_tokens=cache_write_total - cache_write_1h,
        cache_write_1h_tokens=cache_write_1h,
        cache_read_tokens=usage.cache_read_input_tokens or 0,
    )


def describe_api_error(error: Exception) -> str:
    import anthropic

    if isinstance(error, TimeoutError | anthropic.APITimeoutError):
        return "Claude did not answer in time"
    if isinstance(error, anthropic.APIStatusError):
        kind = {429: "rate limited", 529: "overloaded", 401: "API key rejected", 403: "permission denied"}
        what = kind.get(error.status_code, "API error")
        return f"Claude {what} (HTTP {error.status_code}) after the SDK's retries"
    if isinstance(error, anthropic.APIConnectionError):
        return "could not connect to the Claude API"
    return f"Claude API call failed ({type(error).__name__})"


def worst_case_usd(body: dict[str, Any]) -> float:
    """An upper bound on a call's cost: every character of the request a token, and all of max_tokens."""
    prompt_chars = len(json.dumps(body))
    return price_of(body["model"]).cost_usd(TokenUsage(input_tokens=prompt_chars, output_tokens=body["max_tokens"]))


def schema_problems(error: ValidationError, limit: int = 3) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'answer'}: {e['msg']}" for e in error.errors()[:limit])


class ClaudeCaller:
    """The API client, model and limits one overlay's Claude users share (one budget, one usage ledger)."""

    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        *,
        usage: UsageLedger,
        model: str = DEFAULT_CLAUDE_MODEL,
        daily_budget_usd: float = 5.0,
        max_tokens: int = 1024,
        timeout_s: float = 30,
        effort: Effort | None = "low",
    ) -> None:
        import anthropic

        self.client = client
        self.usage = usage
        self.model = model
        self.daily_budget_usd = daily_budget_usd
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        # Current models think adaptively by default and thinking counts toward max_tokens; low effort keeps
        # a short answer from being cut off. None leaves the model's default (for models without effort).
        self.effort = effort
        self._api_errors: tuple[type[Exception], ...] = (anthropic.AnthropicError, TimeoutError)

    def body(
        self, system: str, prompt: str, schema: type[BaseModel], *, max_tokens: int | None = None
    ) -> dict[str, Any]:
        import anthropic

        output_config: dict[str, Any] = {
            "format": {"type": "json_schema", "schema": anthropic.transform_schema(schema)}
        }
        if self.effort is not None:
            output_config["effort"] = self.effort
        return {
            "model": self.model,
            "max_tokens": max_tokens or self.max_tokens,
            "system": system,
            "messages": [{"role": "user", "content": prompt}],
            "output_config": output_config,
        }

    async def ask(
        self,
        *,
        workflow: str,
        workflow_id: str,
        system: str,
        prompt: str,
        schema: type[M],
        check: Callable[[M], str | None] = lambda _: None,
        max_tokens: int | None = None,
    ) -> ClaudeReply[M]:
        body = self.body(system, prompt, schema, max_tokens=max_tokens)
        spent_usd = await self.usage.spent_today_usd()
        under_way_usd = self.usage.reserved_usd
        if spent_usd + under_way_usd >= self.daily_budget_usd:
            under_way = f", up to ${under_way_usd:,.2f} more in calls under way" if under_way_usd else ""
            return ClaudeReply(
                None,
                f"daily Claude budget ${self.daily_budget_usd:,.2f} spent (${spent_usd:,.2f} today{under_way}, "
                "New York time)",
                "budget",
            )
        with self.usage.reservation(worst_case_usd(body)):
            return await self._call(body, workflow, workflow_id, schema, check)

    async def _call(
        self,
        body: dict[str, Any],
        workflow: str,
        workflow_id: str,
        schema: type[M],
        check: Callable[[M], str | None],
    ) -> ClaudeReply[M]:
        prompt_sha256 = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

        async def record(model: str, usage: TokenUsage, text: str, error: str | None) -> None:
            await self.usage.record(
                workflow=workflow,
                workflow_id=workflow_id,
                model=model,
                usage=usage,
                prompt_sha256=prompt_sha256,
                response_text=text,
                error=error,
            )

        try:
            with anyio.fail_after(self.timeout_s):
                message = await self.client.messages.create(**body, timeout=self.timeout_s)
        except self._api_errors as error:
            reason = describe_api_error(error)
            log.warning("Claude call for %s %s failed: %s", workflow, workflow_id, reason)
            await record(self.model, TokenUsage(), "", reason)
            return ClaudeReply(None, reason, "api")
        text = "".join(block.text for block in message.content if block.type == "text")
        answer, rejection = self._checked(message.stop_reason, text, schema, check)
        if rejection is not None:
            log.warning("Claude answer for %s %s rejected: %s", workflow, workflow_id, rejection)
        await record(message.model or self.model, token_usage(message.usage), text, rejection)
        return ClaudeReply(answer, rejection, "rejected" if rejection else None)

    @staticmethod
    def _checked(
        stop_reason: str | None, text: str, schema: type[M], check: Callable[[M], str | None]
    ) -> tuple[M | None, str | None]:
        if stop_reason not in ("end_turn", "stop_sequence"):
            return None, f"Claude stopped early ({stop_reason}) without a complete answer"
        try:
            answer = schema.model_validate_json(text)
        except ValidationError as error:
            return None, f"Claude's answer was not valid JSON for the schema ({schema_problems(error)})"
        rejection = check(answer)
        return (None, rejection) if rejection else (answer, None)
