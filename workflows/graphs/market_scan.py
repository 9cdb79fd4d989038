"""market_scan (the seed's "Workflow 3"): what moved overnight on the watchlist, ranked. Places no order.

watchlist -> overnight -> headlines -> rank -> record
The symbols come from the run's params (`symbols`), else the `watchlist` preference, else `fallback_symbols`
(the scheduler passes the poller's). Overnight facts come from one batched snapshot (prior close, open, last,
volume) plus daily history bars (average volume; prior close when the snapshot lacks it). The ranked
ScanResult is the run's result (get_workflow_status); `latest_scan(store)` reads the newest one back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol, TypedDict

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, Field
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.errors import BrokerError
from broker.market_data import HistoryBar, history_bars
from broker.models import Quote
from workflows.deps import WorkflowDeps
from workflows.scan_analyst import OfflineScanRanker, ScanCandidate, ScanRanker, ScanRanking
from workflows.store import WorkflowRun, WorkflowStore
from workflows.times import utc_now

WORKFLOW = "market_scan"
WATCHLIST_PREFERENCE = "watchlist"
MAX_SYMBOLS = 30
HISTORY_PERIOD = "1m"
HISTORY_BAR = "1d"
TOP_IN_SUMMARY = 3

log = logging.getLogger(__name__)


class HeadlineSource(Protocol):
    """Recent news headlines for a symbol, newest first. IB_MCP's gateway has none without a news
    subscription, and the simulator offers none: the default source answers empty."""

    async def headlines(self, symbol: str) -> list[str]: ...


class NoHeadlines:
    async def headlines(self, symbol: str) -> list[str]:
        return []


class ScanResult(BaseModel):
    workflow_id: str
    scanned_at: datetime
    symbols: list[str]
    candidates: list[ScanCandidate]
    ranking: ScanRanking
    slot: str | None = Field(default=None, description="the scheduled slot this scan ran for, if any")
    skipped: dict[str, str] = Field(default_factory=dict, description="symbol -> why it was not scanned")


ScanHook = Callable[[ScanResult], Awaitable[None]]


class ScanState(TypedDict, total=False):
    workflow_id: str
    event: dict[str, Any]
    symbols: list[str]
    skipped: dict[str, str]
    candidates: list[dict[str, Any]]
    ranking: dict[str, Any]
    outcome: str
    summary: str


def _pct(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return round((value / base - 1) * 100, 3)


def candidate_from(quote: Quote, daily: list[HistoryBar]) -> ScanCandidate:
    """Overnight facts of one symbol. The last daily bar is today's (a session in progress); the ones
    before it give the prior close (when the snapshot lacks it) and the average daily volume."""
    earlier = daily[:-1]
    prior_close = quote.prior_close or (earlier[-1].close if earlier else None)
    average_volume = sum(b.volume for b in earlier) / len(earlier) if earlier else None
    today_volume = quote.volume if quote.volume is not None else (daily[-1].volume if daily else None)
    relative_volume = round(today_volume / average_volume, 3) if today_volume is not None and average_volume else None
    return ScanCandidate(
        symbol=quote.symbol,
        last=quote.price,
        prior_close=prior_close,
        open=quote.open,
        change_pct=_pct(quote.price, prior_close),
        gap_pct=_pct(quote.open, prior_close),
        volume=today_volume,
        relative_volume=relative_volume,
    )


def summary_of(ranking: ScanRanking, scanned: int) -> str:
    top = ranking.opportunities[:TOP_IN_SUMMARY]
    if not top:
        return f"scanned {scanned} symbol(s): no opportunities ({ranking.source})"
    lines = "; ".join(f"{o.rank}. {o.symbol} ({o.bias}): {o.rationale}" for o in top)
    return f"scanned {scanned} symbol(s), top {len(top)} ({ranking.source}): {lines}"


def build(
    deps: WorkflowDeps,
    *,
    ranker: ScanRanker | None = None,
    headlines: HeadlineSource | None = None,
    on_scan: ScanHook | None = None,
) -> StateGraph:
    ranker = ranker or OfflineScanRanker()
    headline_source = headlines or NoHeadlines()

    async def watchlist(state: ScanState) -> ScanState:
        event = state.get("event") or {}
        preferred = (await deps.store.preferences()).get(WATCHLIST_PREFERENCE)
        chosen = event.get("symbols") or preferred or event.get("fallback_symbols") or []
        symbols = list(dict.fromkeys(str(s).strip().upper() for s in chosen if str(s).strip()))
        await deps.store.update_run(state["workflow_id"], status="running")
        return {"symbols": symbols[:MAX_SYMBOLS], "skipped": {}}

    async def overnight(state: ScanState) -> ScanState:
        skipped = dict(state.get("skipped") or {})
        known: list[str] = []
        for symbol in state["symbols"]:
            try:
                await deps.broker.resolve_conids([symbol])
                known.append(symbol)
            except BrokerError as exc:
                skipped[symbol] = str(exc)
        quotes = await deps.broker.quotes(known) if known else {}
        candidates = []
        for symbol in known:
            try:
                daily = await history_bars(deps.broker, symbol, period=HISTORY_PERIOD, bar=HISTORY_BAR)
            except BrokerError as exc:
                log.info("scan: no history for %s: %s", symbol, exc)
                daily = []
            candidates.append(candidate_from(quotes[symbol], daily).model_dump())
        return {"candidates": candidates, "skipped": skipped}

    async def gather_headlines(state: ScanState) -> ScanState:
        candidates = []
        for raw in state["candidates"]:
            candidate = ScanCandidate.model_validate(raw)
            candidate.headlines = await headline_source.headlines(candidate.symbol)
            candidates.append(candidate.model_dump())
        return {"candidates": candidates}

    async def rank(state: ScanState) -> ScanState:
        candidates = [ScanCandidate.model_validate(c) for c in state["candidates"]]
        ranking = (
            await ranker.rank(candidates, workflow_id=state["workflow_id"])
            if candidates
            else ScanRanking(opportunities=[], source="none", note="nothing to rank")
        )
        await deps.audit.append(
            "analysis",
            workflow=WORKFLOW,
            workflow_id=state["workflow_id"],
            source=ranking.source,
            claude_reasoning=summary_of(ranking, len(candidates)),
        )
        return {"ranking": ranking.model_dump()}

    async def record(state: ScanState) -> ScanState:
        event = state.get("event") or {}
        ranking = (
            ScanRanking.model_validate(state["ranking"])
            if state.get("ranking")
            else ScanRanking(opportunities=[], source="none", note="nothing to rank")
        )
        skipped = state.get("skipped") or {}
        if not state.get("symbols"):
            summary = (
                "no symbols to scan: pass symbols, set the 'watchlist' preference (set_preferences), "
                "or give the poller symbols"
            )
        else:
            summary = summary_of(ranking, len(state["candidates"]))
            if skipped:
                summary += f" (skipped: {', '.join(sorted(skipped))})"
        result = ScanResult(
            workflow_id=state["workflow_id"],
            scanned_at=utc_now(),
            symbols=state.get("symbols") or [],
            candidates=[ScanCandidate.model_validate(c) for c in state.get("candidates") or []],
            ranking=ranking,
            slot=event.get("slot"),
            skipped=skipped,
        )
        await deps.store.update_run(
            state["workflow_id"],
            status="completed",
            summary=summary,
            result={"outcome": "scanned", "scan": result.model_dump(mode="json")},
        )
        await deps.audit.append(
            "workflow_finished", workflow=WORKFLOW, workflow_id=state["workflow_id"], outcome="scanned"
        )
        if on_scan is not None:
            try:
                await on_scan(result)
            except Exception:  # a failing notifier must not fail the scan, which is already stored
                log.exception("scan notification hook failed for %s", state["workflow_id"])
        return {"outcome": "scanned", "summary": summary}

    def after_watchlist(state: ScanState) -> str:
        return "overnight" if state.get("symbols") else "record"

    graph = StateGraph(ScanState)
    graph.add_node("watchlist", watchlist)
    graph.add_node("overnight", overnight)
    graph.add_node("headlines", gather_headlines)
    graph.add_node("rank", rank)
    graph.add_node("record", record)
    graph.add_edge(START, "watchlist")
    graph.add_conditional_edges("watchlist", after_watchlist, ["overnight", "record"])
    graph.add_edge("overnight", "headlines")
    graph.add_edge("headlines", "rank")
    graph.add_edge("rank", "record")
    graph.add_edge("record", END)
    return graph


async def latest_scan(store: WorkflowStore) -> dict[str, Any] | None:
    """The newest completed scan's ScanResult (JSON-ready), or None before the first scan."""
    async with AsyncSession(store.workflow_engine) as session:
        query = (
            select(WorkflowRun)
            .where(WorkflowRun.workflow == WORKFLOW, WorkflowRun.status == "completed")
            .order_by(col(WorkflowRun.created_at).desc())
            .limit(1)
        )
        run = (await session.exec(query)).first()
    if run is None:
        return None
    return json.loads(run.result_json or "{}").get("scan")
