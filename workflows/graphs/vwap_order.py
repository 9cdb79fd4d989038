"""vwap_order (the seed's interactive example: "Buy $1000 of AAPL using VWAP strategy").

parse -> gather -> plan -> check_risk -> propose -> await_approval -> execute (one slice per step) -> report -> record
Params: `request` (free text), or `symbol`, `side` (default BUY), `notional_usd`, `window_minutes`, `slices`;
`slice_interval_s` overrides the pause between slices (window / slices by default); `exit_criteria`
({stop_loss_pct, take_profit_pct, max_holding_hours}) is remembered for position_monitor after a buy fills.

One approval covers the whole parent order; its details show the child schedule. Each slice is its own
checkpointed step with a client order id derived from the approval and the slice index, so a restart in the
middle of the schedule resumes at the slice it was on and never sends a slice twice. Each slice re-checks
risk (a kill switch stops the rest of the schedule). The report compares the average fill with the VWAP of
the history bars over the execution window.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import anyio
from langgraph.graph import END, START, StateGraph
from pydantic import ValidationError

from broker.errors import BrokerError
from broker.market_data import HistoryBar, history_bars, vwap
from broker.models import OrderTicket
from workflows.deps import WorkflowDeps
from workflows.execution import client_order_id
from workflows.graphs.common import (
    TradeState,
    after_approval,
    after_propose,
    after_risk,
    await_approval,
    make_check_risk,
    make_propose,
    make_record,
    place_and_audit,
)
from workflows.graphs.position_monitor import ExitCriteria, remember_entry
from workflows.models import OrderIntent, Recommendation
from workflows.scan_analyst import GrammarOrderParser, OrderRequestIntent, OrderRequestParser

WORKFLOW = "vwap_order"
MAX_SLICES = 20  # each slice is one graph step; LangGraph's default recursion limit is 25 steps per run
PROFILE_PERIOD = "3d"
REPORT_PERIOD = "1d"
BAR_SIZE = "1min"
DAY_MS = 86_400_000
MINUTE_MS = 60_000

log = logging.getLogger(__name__)


class VwapState(TradeState, total=False):
    request: dict[str, Any]
    schedule: list[dict[str, Any]]
    schedule_basis: str
    slice_interval_s: float
    next_slice: int
    fills: list[dict[str, Any]]
    stopped: str
    window_start_ms: int
    report: dict[str, Any]


def allocate(total: int, weights: list[float]) -> list[int]:
    """Split `total` shares by `weights` into whole shares (largest remainder), at least one each."""
    count = len(weights)
    base = [1] * count
    spare = total - count
    weight_sum = sum(weights)
    exact = [spare * w / weight_sum for w in weights]
    shares = [b + math.floor(e) for b, e in zip(base, exact, strict=True)]
    leftover = total - sum(shares)
    by_remainder = sorted(range(count), key=lambda i: (-(exact[i] - math.floor(exact[i])), i))
    for index in by_remainder[:leftover]:
        shares[index] += 1
    return shares


def volume_profile_weights(
    bars: list[HistoryBar], window_start_ms: int, slice_ms: int, slices: int
) -> list[float] | None:
    """Each slice's share of the volume traded at the same time of day on earlier days; None when earlier
    days do not cover every slice (then the schedule is equal)."""
    earlier = [b for b in bars if b.ts_ms < window_start_ms - slice_ms * slices]
    totals = [0.0] * slices
    start_of_day = window_start_ms % DAY_MS
    for bar in earlier:
        offset = (bar.ts_ms % DAY_MS - start_of_day) % DAY_MS
        index = offset // slice_ms
        if index < slices:
            totals[int(index)] += bar.volume
    return totals if all(t > 0 for t in totals) else None


def read_request(event: dict[str, Any]) -> tuple[OrderRequestIntent | None, str]:
    """The structured params form; (None, why) when they do not make an order."""
    fields = {key: event[key] for key in ("symbol", "side", "notional_usd", "window_minutes", "slices") if key in event}
    fields["symbol"] = str(fields.get("symbol", "")).strip().upper()
    fields["side"] = str(fields.get("side") or "BUY").strip().upper()
    fields["source"] = "params"
    try:
        return OrderRequestIntent.model_validate(fields), ""
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:3])
        return None, f"vwap_order needs symbol, notional_usd (> 0), optional side/window_minutes/slices: {problems}"


def build(deps: WorkflowDeps, *, parser: OrderRequestParser | None = None) -> StateGraph:
    parser = parser or GrammarOrderParser()

    async def parse(state: VwapState) -> VwapState:
        event = state.get("event") or {}
        text = event.get("request")
        if text:
            outcome = await parser.parse(str(text), workflow_id=state["workflow_id"])
            intent, reason = outcome.intent, outcome.reason
            named = str(event.get("symbol") or "").upper()
            if intent is not None and named and named != intent.symbol:
                intent, reason = None, f"the request names {intent.symbol} but the symbol given is {named}"
        else:
            intent, reason = read_request(event)
        if intent is None:
            return {"outcome": "hold", "summary": f"not understood, no order: {reason}"}
        if intent.slices > MAX_SLICES:
            intent = intent.model_copy(update={"slices": MAX_SLICES})
        await deps.store.update_run(state["workflow_id"], symbol=intent.symbol)
        return {"request": intent.model_dump(), "symbol": intent.symbol}

    async def gather(state: VwapState) -> VwapState:
        symbol = state["symbol"]
        account_id = await deps.trading_account()
        quote = (await deps.broker.quotes([symbol]))[symbol]
        if quote.price is None:
            raise BrokerError(f"no price for {symbol} yet (market data not subscribed?); try again shortly")
        return {"account_id": account_id, "price": quote.price, "decision": {}}

    async def plan(state: VwapState) -> VwapState:
        request = OrderRequestIntent.model_validate(state["request"])
        price = state["price"]
        quantity = math.floor(request.notional_usd / price)
        if quantity < 1:
            return {
                "intent": None,
                "recommendation": Recommendation(
                    action="hold", rationale="under one share", source="rules"
                ).model_dump(),
                "outcome": "hold",
                "summary": f"${request.notional_usd:,.2f} buys less than one {request.symbol} share at "
                f"${price:,.2f}; no order",
            }
        slices = min(request.slices, quantity)
        window_ms = request.window_minutes * MINUTE_MS
        slice_ms = window_ms // slices
        weights, basis = await _weights(state["symbol"], slice_ms, slices)
        shares = allocate(quantity, weights)
        interval_s = float(state.get("event", {}).get("slice_interval_s", slice_ms / 1000))
        schedule = [{"slice": i, "quantity": q, "at_offset_s": round(i * interval_s, 3)} for i, q in enumerate(shares)]
        intent = OrderIntent(
            workflow=WORKFLOW, symbol=request.symbol, side=request.side, quantity=quantity, reference_price=price
        )
        rationale = (
            f"VWAP: {request.side} {quantity} {request.symbol} (${request.notional_usd:,.2f} at ${price:,.2f}) "
            f"in {slices} market orders over {request.window_minutes} min ({basis} schedule)."
        )
        return {
            "intent": intent.model_dump(),
            "recommendation": Recommendation(
                action="buy" if request.side == "BUY" else "sell",
                quantity=quantity,
                rationale=rationale,
                confidence=1.0,
                source=request.source,
            ).model_dump(),
            "schedule": schedule,
            "schedule_basis": basis,
            "slice_interval_s": interval_s,
            "next_slice": 0,
            "fills": [],
            "proposal_details": {
                "algo": "VWAP",
                "notional_usd": request.notional_usd,
                "window_minutes": request.window_minutes,
                "slices": slices,
                "slice_interval_s": interval_s,
                "schedule_basis": basis,
                "schedule": schedule,
                "request": (state.get("event") or {}).get("request"),
            },
        }

    async def _weights(symbol: str, slice_ms: int, slices: int) -> tuple[list[float], str]:
        try:
            bars = await history_bars(deps.broker, symbol, period=PROFILE_PERIOD, bar=BAR_SIZE)
        except BrokerError as exc:
            log.info("vwap %s: no history for a volume profile (%s); equal slices", symbol, exc)
            bars = []
        profile = volume_profile_weights(bars, bars[-1].ts_ms, slice_ms, slices) if bars else None
        return (profile, "volume-profile") if profile else ([1.0] * slices, "equal")

    async def execute(state: VwapState) -> VwapState:
        """Send the next slice (after the pause between slices); each pass of this node is one step."""
        index = state["next_slice"]
        update: VwapState = {}
        schedule = state["schedule"]
        if index == 0:
            schedule = _approved_schedule(state)
            update["schedule"] = schedule
            update["window_start_ms"] = await _last_bar_ms(state["symbol"])
            await deps.store.update_run(state["workflow_id"], status="running")
        else:
            await anyio.sleep(state["slice_interval_s"])
        planned = schedule[index]
        base = OrderIntent.model_validate(state["intent"])
        quote = (await deps.broker.quotes([base.symbol]))[base.symbol]
        limit_price = (state.get("decision") or {}).get("limit_price")
        slice_intent = base.model_copy(
            update={
                "quantity": planned["quantity"],
                "reference_price": quote.price or base.reference_price,
                "order_type": "LMT" if limit_price else "MKT",
                "limit_price": limit_price,
            }
        )
        coid = client_order_id(f"{state['approval_id']}-s{index}")
        # A slice already in the ledger (a restart after sending it) is only looked up, never re-checked.
        risk = None if await deps.store.get_order(coid) else await deps.risk.check(slice_intent, state["account_id"])
        if risk is not None and not risk.allowed:
            reason = f"stopped before slice {index + 1} of {len(schedule)}: risk denied: {risk.summary}"
            await deps.audit.append(
                "vwap_stopped", workflow=WORKFLOW, workflow_id=state["workflow_id"], symbol=base.symbol, reason=reason
            )
            return update | {"stopped": reason, "next_slice": len(schedule)}
        ticket = OrderTicket(
            account_id=state["account_id"],
            symbol=base.symbol,
            side=base.side,
            quantity=planned["quantity"],
            order_type=slice_intent.order_type,
            limit_price=limit_price,
            client_order_id=coid,
        )
        record = await place_and_audit(deps, WORKFLOW, state, ticket, slice=index)
        fill = {
            "slice": index,
            "client_order_id": record.client_order_id,
            "order_id": record.broker_order_id,
            "quantity": record.quantity,
            "filled_quantity": record.filled_quantity,
            "avg_fill_price": record.avg_fill_price,
            "status": record.status,
        }
        return update | {"fills": [*state.get("fills", []), fill], "next_slice": index + 1}

    def _approved_schedule(state: VwapState) -> list[dict[str, Any]]:
        """The schedule for the quantity approved: a human who lowered it gets every slice scaled down."""
        schedule = state["schedule"]
        approved = (state.get("decision") or {}).get("quantity")
        planned_total = sum(s["quantity"] for s in schedule)
        if not approved or approved >= planned_total:
            return schedule
        total = math.floor(approved)
        kept = schedule[: max(1, min(len(schedule), total))]
        shares = allocate(total, [s["quantity"] for s in kept])
        return [s | {"quantity": q} for s, q in zip(kept, shares, strict=True)]

    async def _last_bar_ms(symbol: str) -> int:
        bars = await history_bars(deps.broker, symbol, period="1h", bar=BAR_SIZE)
        return bars[-1].ts_ms if bars else 0

    async def report(state: VwapState) -> VwapState:
        fills = state.get("fills", [])
        filled = [f for f in fills if f["filled_quantity"] and f["avg_fill_price"]]
        filled_qty = sum(f["filled_quantity"] for f in filled)
        avg_fill = sum(f["filled_quantity"] * f["avg_fill_price"] for f in filled) / filled_qty if filled_qty else None
        bars = await history_bars(deps.broker, state["symbol"], period=REPORT_PERIOD, bar=BAR_SIZE)
        window = [b for b in bars if b.ts_ms >= state.get("window_start_ms", 0)]
        interval_vwap = vwap(window)
        side = OrderIntent.model_validate(state["intent"]).side
        slippage_bps = None
        if avg_fill is not None and interval_vwap:
            # Positive = worse than VWAP: paid more on a buy, received less on a sell.
            sign = 1 if side == "BUY" else -1
            slippage_bps = round(sign * (avg_fill / interval_vwap - 1) * 10_000, 2)
        planned_qty = sum(s["quantity"] for s in state["schedule"])
        result = {
            "slices_planned": len(state["schedule"]),
            "slices_sent": len(fills),
            "quantity_planned": planned_qty,
            "quantity_filled": filled_qty,
            "avg_fill_price": round(avg_fill, 4) if avg_fill is not None else None,
            "interval_vwap": round(interval_vwap, 4) if interval_vwap is not None else None,
            "vwap_bars": len(window),
            "slippage_bps": slippage_bps,
            "stopped": state.get("stopped"),
        }
        if side == "BUY" and filled_qty > 0:
            criteria = ExitCriteria.model_validate((state.get("event") or {}).get("exit_criteria") or {})
            rationale = (state.get("recommendation") or {}).get("rationale", "VWAP entry")
            await remember_entry(deps.store, state["symbol"], state["workflow_id"], rationale, criteria)
        complete = filled_qty >= planned_qty and not state.get("stopped")
        summary = (
            f"VWAP {side} {state['symbol']}: {filled_qty:g}/{planned_qty:g} shares in {len(fills)} slice(s)"
            + (f", avg ${avg_fill:,.4f}" if avg_fill is not None else "")
            + (f" vs interval VWAP ${interval_vwap:,.4f} ({slippage_bps:+.1f} bps)" if slippage_bps is not None else "")
            + (f"; {state['stopped']}" if state.get("stopped") else "")
        )
        return {"report": result, "outcome": "filled" if complete else "submitted", "summary": summary}

    write_record = make_record(deps, WORKFLOW, ("request", "schedule", "schedule_basis", "fills", "report"))

    async def record(state: VwapState) -> VwapState:
        # LangGraph hands a node only the keys its annotation declares: this one declares VwapState's.
        return await write_record(state)

    def after_parse(state: VwapState) -> str:
        return "gather" if state.get("request") else "record"

    def after_plan(state: VwapState) -> str:
        return "check_risk" if state.get("intent") else "record"

    def after_slice(state: VwapState) -> str:
        return "execute" if state["next_slice"] < len(state["schedule"]) else "report"

    graph = StateGraph(VwapState)
    graph.add_node("parse", parse)
    graph.add_node("gather", gather)
    graph.add_node("plan", plan)
    graph.add_node("check_risk", make_check_risk(deps, WORKFLOW))
    graph.add_node("propose", make_propose(deps, WORKFLOW))
    graph.add_node("await_approval", await_approval)
    graph.add_node("execute", execute)
    graph.add_node("report", report)
    graph.add_node("record", record)
    graph.add_edge(START, "parse")
    graph.add_conditional_edges("parse", after_parse, ["gather", "record"])
    graph.add_edge("gather", "plan")
    graph.add_conditional_edges("plan", after_plan, ["check_risk", "record"])
    graph.add_conditional_edges("check_risk", after_risk)
    graph.add_conditional_edges("propose", after_propose)
    graph.add_conditional_edges("await_approval", after_approval)
    graph.add_conditional_edges("execute", after_slice, ["execute", "report"])
    graph.add_edge("report", "record")
    graph.add_edge("record", END)
    return graph
