"""Claude token and cost accounting: one row per Messages API call, priced from a per-model table.

Spending is counted per *trading day*: the calendar day in America/New_York, so the daily budget resets
at midnight New York time (outside every US session) rather than at 19:00/20:00 ET in the after-hours
session, which is where a UTC midnight falls.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cache
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from pydantic import BaseModel
from sqlalchemy import Column, DateTime, case, func
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

log = logging.getLogger(__name__)

TRADING_TZ = ZoneInfo("America/New_York")
RESPONSE_TEXT_MAX_CHARS = 4000
LONG_PROMPT_THRESHOLD_TOKENS = 100_000
# Cache writes are priced as multiples of the model's base input price on every current model.
CACHE_WRITE_5M_INPUT_MULTIPLIER = 1.25
CACHE_WRITE_1H_INPUT_MULTIPLIER = 2.0


@dataclass(frozen=True)
class TokenUsage:
    """The `usage` block of one Messages API response, with cache writes split by cache lifetime."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        """Every token of the prompt, cached or not: what a prompt-length price tier is judged on."""
        cache_tokens = self.cache_write_5m_tokens + self.cache_write_1h_tokens + self.cache_read_tokens
        return self.input_tokens + cache_tokens


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens. `long_prompt` applies to a whole request whose prompt exceeds 100k tokens."""

    input_usd_per_mtok: float
    output_usd_per_mtok: float
    cache_read_usd_per_mtok: float
    long_prompt: ModelPrice | None = None

    def cost_usd(self, usage: TokenUsage) -> float:
        if self.long_prompt is not None and usage.prompt_tokens > LONG_PROMPT_THRESHOLD_TOKENS:
            return self.long_prompt.cost_usd(usage)
        input_usd = self.input_usd_per_mtok * (
            usage.input_tokens
            + CACHE_WRITE_5M_INPUT_MULTIPLIER * usage.cache_write_5m_tokens
            + CACHE_WRITE_1H_INPUT_MULTIPLIER * usage.cache_write_1h_tokens
        )
        cache_read_usd = self.cache_read_usd_per_mtok * usage.cache_read_tokens
        output_usd = self.output_usd_per_mtok * usage.output_tokens
        return (input_usd + cache_read_usd + output_usd) / 1_000_000


_OPUS_4_5_TO_5 = ModelPrice(5.0, 25.0, 0.50)
_SONNET_4 = ModelPrice(3.0, 15.0, 0.30)

# Standard-tier API prices, checked 2026-11-24 against https://platform.claude.com/docs/en/about-claude/pricing
# and the model pages (https://platform.claude.com/docs/en/models/sonnet-5-5/overview and siblings).
# Sonnet 5.5 cache reads are $0.10 since 2026-10-07 (Sonnet 5.5 migration guide: "half the Claude Sonnet 5
# rate"). Haiku 5.5 is priced by prompt length (≤ 100k tokens: $0.10/$0.50; above: $0.50/$2.50).
# Keys are model-id prefixes, so dated ids ("claude-haiku-4-5-20251001") find their family.
PRICES_USD_PER_MTOK: dict[str, ModelPrice] = {
    "claude-fable-5-1": ModelPrice(10.0, 50.0, 0.25),
    "claude-mythos-5-1": ModelPrice(10.0, 50.0, 0.25),
    "claude-fable-5": ModelPrice(10.0, 50.0, 1.00),
    "claude-mythos-5": ModelPrice(10.0, 50.0, 1.00),
    "claude-opus-5-5": ModelPrice(4.0, 20.0, 0.20),
    "claude-opus-5": _OPUS_4_5_TO_5,
    "claude-opus-4-8": _OPUS_4_5_TO_5,
    "claude-opus-4-7": _OPUS_4_5_TO_5,
    "claude-opus-4-6": _OPUS_4_5_TO_5,
    "claude-opus-4-5": _OPUS_4_5_TO_5,
    "claude-sonnet-5-5": ModelPrice(2.0, 10.0, 0.10),
    "claude-sonnet-5": ModelPrice(2.0, 10.0, 0.20),
    "claude-sonnet-4-6": _SONNET_4,
    "claude-sonnet-4-5": _SONNET_4,
    "claude-haiku-5-5": ModelPrice(0.10, 0.50, 0.01, long_prompt=ModelPrice(0.50, 2.50, 0.05)),
    "claude-haiku-4-5": ModelPrice(1.0, 5.0, 0.10),
}


@cache
def price_of(model: str) -> ModelPrice:
    """The price of the longest matching model-id prefix. An unknown model is priced like the most
    expensive known one, so the daily budget can overcount but never undercount."""
    matches = [prefix for prefix in PRICES_USD_PER_MTOK if model.startswith(prefix)]
    if matches:
        return PRICES_USD_PER_MTOK[max(matches, key=len)]
    log.warning("no price known for Claude model %r; counting it at the most expensive known rate", model)
    return max(PRICES_USD_PER_MTOK.values(), key=lambda price: price.output_usd_per_mtok)


def cost_usd(model: str, usage: TokenUsage) -> float:
    return price_of(model).cost_usd(usage)


def trading_day_of(ts: datetime) -> date:
    """The New York calendar day of an aware timestamp: the day a Claude call's cost counts against."""
    return ts.astimezone(TRADING_TZ).date()


class ClaudeCall(SQLModel, table=True):
    """One Messages API call (or attempt): what it cost and whether its answer was used.

    `ok` is False when the call failed or its answer was rejected; `error` says why. A rejected answer
    still has its tokens and cost: Anthropic bills them.
    """

    __tablename__ = "claude_calls"

    id: int | None = Field(default=None, primary_key=True)
    ts: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    trading_day: date = Field(index=True)
    workflow: str = Field(index=True)
    workflow_id: str = Field(index=True)
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float = 0.0
    prompt_sha256: str
    response_text: str = ""
    ok: bool
    error: str | None = None


class Spend(BaseModel):
    calls: int
    failed_calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


class WorkflowSpend(Spend):
    workflow: str


class DaySpend(Spend):
    trading_day: date


def _spend_columns() -> tuple:
    return (
        func.count(ClaudeCall.id),
        func.coalesce(func.sum(case((ClaudeCall.ok.is_(False), 1), else_=0)), 0),
        func.coalesce(func.sum(ClaudeCall.input_tokens), 0),
        func.coalesce(func.sum(ClaudeCall.output_tokens), 0),
        func.coalesce(func.sum(ClaudeCall.cost_usd), 0.0),
    )


def _spend_fields(row: tuple) -> dict[str, int | float]:
    calls, failed_calls, input_tokens, output_tokens, cost = row
    return {
        "calls": calls,
        "failed_calls": failed_calls,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost_usd": cost,
    }


class AuditSink(Protocol):
    async def append(self, event: str, **fields: Any) -> Any: ...


AUDIT_RESPONSE_CHARS = 2000


class UsageLedger:
    """Claude calls and their cost, in the `claude_calls` table of any SQLAlchemy async engine."""

    def __init__(self, engine: AsyncEngine, *, owns_engine: bool = False, audit: AuditSink | None = None) -> None:
        # Every call is also written to the audit log (prompt hash, response, tokens, cost) when given.
        self.audit = audit
        self._engine = engine
        self._owns_engine = owns_engine
        self._reserved_usd = 0.0

    @property
    def reserved_usd(self) -> float:
        """The worst-case cost of the Claude calls under way in this process, not yet recorded."""
        return self._reserved_usd

    @contextmanager
    def reservation(self, usd: float) -> Iterator[None]:
        """Hold `usd` against the budget while a call is under way, so concurrent calls see each other."""
        self._reserved_usd += usd
        try:
            yield
        finally:
            self._reserved_usd -= usd

    @classmethod
    async def in_memory(cls) -> UsageLedger:
        """A ledger in a private in-memory SQLite database (tests, replays, the demo); `close()` it."""
        ledger = cls(create_async_engine("sqlite+aiosqlite://", poolclass=StaticPool), owns_engine=True)
        await ledger.create_table()
        return ledger

    async def close(self) -> None:
        """Dispose of the engine if this ledger created it; an engine passed in belongs to the caller."""
        if self._owns_engine:
            await self._engine.dispose()

    async def create_table(self) -> None:
        async with self._engine.begin() as connection:
            await connection.run_sync(lambda sync: ClaudeCall.__table__.create(sync, checkfirst=True))

    async def record(
        self,
        *,
        workflow: str,
        workflow_id: str,
        model: str,
        usage: TokenUsage,
        prompt_sha256: str,
        response_text: str = "",
        error: str | None = None,
        now: datetime | None = None,
        cost_usd: float | None = None,
    ) -> ClaudeCall:
        """Record one call. `cost_usd` overrides the price list (0 for a call the MCP client paid for)."""
        ts = now or datetime.now(UTC)
        call = ClaudeCall(
            ts=ts,
            trading_day=trading_day_of(ts),
            workflow=workflow,
            workflow_id=workflow_id,
            model=model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_write_tokens=usage.cache_write_5m_tokens + usage.cache_write_1h_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cost_usd=price_of(model).cost_usd(usage) if cost_usd is None else cost_usd,
            prompt_sha256=prompt_sha256,
            response_text=response_text[:RESPONSE_TEXT_MAX_CHARS],
            ok=error is None,
            error=error,
        )
        async with AsyncSession(self._engine, expire_on_commit=False) as session:
            session.add(call)
            await session.commit()
        if self.audit is not None:
            await self.audit.append(
                "claude_call",
                workflow=workflow,
                workflow_id=workflow_id,
                claude_reasoning=call.response_text[:AUDIT_RESPONSE_CHARS],
                model=model,
                prompt_sha256=prompt_sha256,
                input_tokens=call.input_tokens,
                output_tokens=call.output_tokens,
                cost_usd=call.cost_usd,
                ok=call.ok,
                error=error,
            )
        return call

    async def spent_today_usd(self, now: datetime | None = None) -> float:
        """What Claude calls cost so far on the current New York trading day."""
        day = trading_day_of(now or datetime.now(UTC))
        query = select(func.coalesce(func.sum(ClaudeCall.cost_usd), 0.0)).where(ClaudeCall.trading_day == day)
        async with AsyncSession(self._engine) as session:
            return float((await session.exec(query)).one())

    async def last_call(self) -> ClaudeCall | None:
        """The most recent Claude call, for health: did the last one fail?"""
        query = select(ClaudeCall).order_by(col(ClaudeCall.ts).desc()).limit(1)
        async with AsyncSession(self._engine) as session:
            return (await session.exec(query)).first()

    async def by_workflow(self) -> list[WorkflowSpend]:
        """All-time spend per workflow, most expensive first."""
        query = (
            select(ClaudeCall.workflow, *_spend_columns())
            .group_by(ClaudeCall.workflow)
            .order_by(func.sum(ClaudeCall.cost_usd).desc())
        )
        async with AsyncSession(self._engine) as session:
            rows = (await session.exec(query)).all()
        return [WorkflowSpend(workflow=row[0], **_spend_fields(row[1:])) for row in rows]

    async def by_day(self) -> list[DaySpend]:
        """Spend per New York trading day, oldest first."""
        query = (
            select(ClaudeCall.trading_day, *_spend_columns())
            .group_by(ClaudeCall.trading_day)
            .order_by(ClaudeCall.trading_day)
        )
        async with AsyncSession(self._engine) as session:
            rows = (await session.exec(query)).all()
        return [DaySpend(trading_day=row[0], **_spend_fields(row[1:])) for row in rows]
