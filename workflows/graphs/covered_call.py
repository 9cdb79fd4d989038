"""covered_call (the seed's "Workflow 2"): sell calls against shares held, with the human's approval.

gather -> chain -> analyse -> check_risk -> propose -> await_approval -> execute -> monitor -> record
Fewer than 100 shares per contract finishes at once ("needs N shares"), with no proposal; a hold, a risk
denial or a rejection goes straight to record. `monitor` writes the position memory of the short call
(workflows/short_calls.ShortCallWatch, keyed "AAPL 20260116 200 C"): alert when the underlying comes within
`alert_within_pct` of the strike; if `buy_to_close`, propose buying the calls back
`close_days_before_expiry` days before expiry. position_monitor's periodic check acts on it (see there).
Risk: workflows/option_risk.OptionRiskGate (the shares must cover every short call).

params: symbol, contracts (default: all the shares cover), target_dte (30), max_delta (0.30),
limit_at ("mid" or "bid"), alert_within_pct (2), buy_to_close (true), close_days_before_expiry (2),
risk_free_rate_pct (4).
"""

from __future__ import annotations

import dataclasses
from datetime import date
from typing import Any

from langgraph.graph import END, START, StateGraph

from broker import black_scholes
from broker.options import (
    ListedOption,
    listed_options,
    new_york_date,
    option_months,
    option_quotes,
    option_strikes,
)
from workflows.deps import WorkflowDeps
from workflows.graphs.common import (
    TradeState,
    after_approval,
    after_propose,
    after_risk,
    await_approval,
    make_check_risk,
    make_execute,
    make_propose,
    make_record,
)
from workflows.models import OptionContract, OrderIntent, Recommendation
from workflows.option_analyst import CallCandidate, CoveredCallChoice, CoveredCallRequest, covered_call_analyst
from workflows.option_risk import OptionRiskGate
from workflows.short_calls import ShortCallWatch
from workflows.store import PositionMemory
from workflows.times import utc_now

WORKFLOW = "covered_call"
SHARES_PER_CONTRACT = 100
EXPIRY_MONTHS = 3
STRIKES_PER_MONTH = 6
MAX_OTM_PCT = 20.0
DAYS_PER_YEAR = 365


class CoveredCallState(TradeState, total=False):
    shares_held: float
    contracts: int
    candidates: list[dict[str, Any]]
    choice: dict[str, Any]
    position_memory: dict[str, Any]


def _param(state: CoveredCallState, key: str, default: Any) -> Any:
    value = state["event"].get(key)
    return default if value is None else value


def _flag(state: CoveredCallState, key: str, default: bool) -> bool:
    value = _param(state, key, default)
    return value if isinstance(value, bool) else str(value).strip().lower() not in ("false", "0", "no", "off")


def _today() -> date:
    """Today in New York, where expiries are counted (the clock is workflows.times.utc_now)."""
    return new_york_date(utc_now())


def candidate_for(
    option: ListedOption, bid: float | None, ask: float | None, spot: float, limit_at: str, rate_pct: float
) -> CallCandidate | None:
    """A listed call with its premium (the limit price), implied-volatility delta and strike distance."""
    mid = round((bid + ask) / 2, 2) if bid and ask else None
    premium = bid if limit_at == "bid" else mid
    if not premium or premium <= 0:
        return None
    days = option.days_to_expiry(_today())
    years = max(days, 1) / DAYS_PER_YEAR
    iv_pct = black_scholes.implied_volatility_pct("C", mid or premium, spot, option.strike, years, rate_pct)
    delta = black_scholes.delta("C", spot, option.strike, years, iv_pct, rate_pct) if iv_pct else None
    return CallCandidate(
        conid=option.conid,
        expiry=option.expiry,
        days_to_expiry=days,
        strike=option.strike,
        bid=bid,
        ask=ask,
        premium_per_share_usd=premium,
        delta=round(delta, 4) if delta is not None else None,
        strike_distance_pct=round((option.strike / spot - 1) * 100, 2),
    )


def proposal_details(
    candidate: CallCandidate, contracts: int, spot: float, alert_within_pct: float, close_days: int | None
) -> dict[str, Any]:
    """The proposal's facts; `close_days` None means no buy to close (alerts only)."""
    premium_usd = candidate.premium_per_share_usd * SHARES_PER_CONTRACT * contracts
    yield_pct = candidate.premium_per_share_usd / spot * 100
    days = max(candidate.days_to_expiry, 1)
    return {
        "option": f"{candidate.expiry} {candidate.strike:g} C (conid {candidate.conid})",
        "contracts": contracts,
        "shares_covered": contracts * SHARES_PER_CONTRACT,
        "spot_usd": spot,
        "premium_per_share_usd": candidate.premium_per_share_usd,
        "premium_usd": round(premium_usd, 2),
        "yield_pct": round(yield_pct, 3),
        "annualized_yield_pct": round(yield_pct * DAYS_PER_YEAR / days, 2),
        "days_to_expiry": candidate.days_to_expiry,
        "strike_distance_pct": candidate.strike_distance_pct,
        "delta": candidate.delta,
        "assignment_probability_pct": round(candidate.delta * 100, 1) if candidate.delta is not None else None,
        "if_assigned_gain_usd": round((candidate.strike - spot) * SHARES_PER_CONTRACT * contracts + premium_usd, 2),
        "monitor": {
            "alert_when_underlying_within_pct_of_strike": alert_within_pct,
            "buy_to_close": close_days is not None,
            "buy_to_close_days_before_expiry": close_days,
        },
    }


def build(deps: WorkflowDeps) -> StateGraph:
    gated = dataclasses.replace(deps, risk=OptionRiskGate.around(deps.risk, deps.broker))

    async def gather(state: CoveredCallState) -> CoveredCallState:
        symbol = state["event"]["symbol"].upper()
        account_id = await deps.trading_account()
        quote = (await deps.broker.quotes([symbol]))[symbol]
        positions = await deps.broker.positions(account_id)
        shares = sum(p.quantity for p in positions if p.symbol == symbol and p.asset_class == "STK")
        short_calls = sum(
            -p.quantity for p in positions if p.symbol == symbol and p.asset_class == "OPT" and p.quantity < 0
        )
        free_shares = max(shares - short_calls * SHARES_PER_CONTRACT, 0)
        contracts = int(_param(state, "contracts", 0)) or int(free_shares // SHARES_PER_CONTRACT)
        update: CoveredCallState = {
            "symbol": symbol,
            "account_id": account_id,
            "price": quote.price or float(state["event"]["price"]),
            "shares_held": shares,
            "contracts": contracts,
            "decision": {},
        }
        needed = max(contracts, 1) * SHARES_PER_CONTRACT
        if free_shares < needed:
            update |= {
                "intent": None,
                "outcome": "hold",
                "summary": f"needs {needed:g} {symbol} shares for {max(contracts, 1)} covered call(s); "
                f"{shares:g} held, {free_shares:g} not yet covering a short call: no proposal",
            }
        return update

    async def chain(state: CoveredCallState) -> CoveredCallState:
        symbol, spot = state["symbol"], state["price"]
        months = await option_months(deps.broker, symbol)
        listed: list[ListedOption] = []
        for month in months.months[:EXPIRY_MONTHS]:
            calls = (await option_strikes(deps.broker, months.conid, month))["call"]
            otm = [s for s in calls if spot < s <= spot * (1 + MAX_OTM_PCT / 100)][:STRIKES_PER_MONTH]
            for strike in otm:
                listed += await listed_options(deps.broker, symbol, months.conid, month, strike, "C")
        quotes = await option_quotes(deps.broker, [o.conid for o in listed])
        limit_at = str(_param(state, "limit_at", "mid"))
        rate_pct = float(_param(state, "risk_free_rate_pct", 4.0))
        candidates = [
            candidate_for(option, quotes[option.conid].bid, quotes[option.conid].ask, spot, limit_at, rate_pct)
            for option in listed
        ]
        return {"candidates": [c.model_dump() for c in candidates if c is not None]}

    async def analyse(state: CoveredCallState) -> CoveredCallState:
        candidates = [CallCandidate.model_validate(c) for c in state["candidates"]]
        request = CoveredCallRequest(
            workflow=WORKFLOW,
            workflow_id=state["workflow_id"],
            symbol=state["symbol"],
            spot=state["price"],
            shares_held=state["shares_held"],
            contracts=state["contracts"],
            target_dte=int(_param(state, "target_dte", 30)),
            max_delta=float(_param(state, "max_delta", 0.30)),
            candidates=candidates,
        )
        choice = await covered_call_analyst(deps.analyst).choose(request)
        picked = next((c for c in candidates if c.conid == choice.conid), None)
        await deps.audit.append(
            "analysis",
            workflow=WORKFLOW,
            workflow_id=state["workflow_id"],
            symbol=state["symbol"],
            action="SELL" if picked else "HOLD",
            quantity=choice.contracts,
            price=picked.premium_per_share_usd if picked else None,
            claude_reasoning=choice.rationale,
            source=choice.source,
        )
        return {"choice": choice.model_dump(), **_proposal(state, choice, picked)}

    def _proposal(state: CoveredCallState, choice: CoveredCallChoice, picked: CallCandidate | None) -> CoveredCallState:
        if picked is None:
            recommendation = Recommendation(action="hold", rationale=choice.rationale, source=choice.source)
            return {"recommendation": recommendation.model_dump(), "intent": None}
        recommendation = Recommendation(
            action="sell",
            quantity=choice.contracts,
            order_type="LMT",
            limit_price=picked.premium_per_share_usd,
            rationale=choice.rationale,
            confidence=choice.confidence,
            source=choice.source,
        )
        intent = OrderIntent(
            workflow=WORKFLOW,
            symbol=state["symbol"],
            side="SELL",
            quantity=choice.contracts,
            order_type="LMT",
            limit_price=picked.premium_per_share_usd,
            reference_price=picked.premium_per_share_usd,
            option=OptionContract(
                underlying=state["symbol"], expiry=picked.expiry, strike=picked.strike, right="C", conid=picked.conid
            ),
        )
        details = proposal_details(
            picked,
            choice.contracts,
            state["price"],
            float(_param(state, "alert_within_pct", 2.0)),
            int(_param(state, "close_days_before_expiry", 2)) if _flag(state, "buy_to_close", True) else None,
        )
        return {
            "recommendation": recommendation.model_dump(),
            "intent": intent.model_dump(),
            "proposal_details": details,
        }

    async def monitor(state: CoveredCallState) -> CoveredCallState:
        """Position memory for the short call: why it was sold and when to act (read by position_monitor)."""
        intent = OrderIntent.model_validate(state["intent"])
        assert intent.option is not None
        watch_params = (state.get("proposal_details") or {}).get("monitor", {})
        close_days = watch_params.get("buy_to_close_days_before_expiry")
        watch = ShortCallWatch.sold(
            intent.option,
            contracts=intent.quantity,
            premium_per_share_usd=intent.limit_price,
            alert_within_pct=float(watch_params.get("alert_when_underlying_within_pct_of_strike", 2.0)),
            buy_to_close=close_days is not None,
            buy_to_close_days_before_expiry=int(close_days if close_days is not None else 0),
            order_status=(state.get("order") or {}).get("status"),
        )
        memory = PositionMemory(
            symbol=watch.key,
            workflow_id=state["workflow_id"],
            entry_logic=(state.get("recommendation") or {}).get("rationale", ""),
            exit_criteria_json=watch.model_dump_json(),
            updated_at=utc_now(),
        )
        await deps.store.remember_position(memory)
        return {"position_memory": {"key": memory.symbol, **watch.model_dump(mode="json")}}

    record_run = make_record(deps, WORKFLOW, result_keys=("proposal_details", "position_memory"))

    async def record(state: CoveredCallState) -> CoveredCallState:
        # LangGraph hands a node only the keys of its annotated state type: this one must see ours.
        return await record_run(state)

    def after_gather(state: CoveredCallState) -> str:
        return "record" if state.get("outcome") == "hold" else "chain"

    graph = StateGraph(CoveredCallState)
    graph.add_node("gather", gather)
    graph.add_node("chain", chain)
    graph.add_node("analyse", analyse)
    graph.add_node("check_risk", make_check_risk(gated, WORKFLOW))
    graph.add_node("propose", make_propose(deps, WORKFLOW))
    graph.add_node("await_approval", await_approval)
    graph.add_node("execute", make_execute(deps, WORKFLOW))
    graph.add_node("monitor", monitor)
    graph.add_node("record", record)
    graph.add_edge(START, "gather")
    graph.add_conditional_edges("gather", after_gather, ["chain", "record"])
    graph.add_edge("chain", "analyse")
    graph.add_edge("analyse", "check_risk")
    graph.add_conditional_edges("check_risk", after_risk)
    graph.add_conditional_edges("propose", after_propose)
    graph.add_conditional_edges("await_approval", after_approval)
    graph.add_edge("execute", "monitor")
    graph.add_edge("monitor", "record")
    graph.add_edge("record", END)
    return graph
