"""Strategy refinement: review a replay's outcomes by workflow and trigger, propose parameter changes, and
replay each proposal on the same history so the user sees before and after side by side.

The offline reviewer's rules (deliberately few, each one a sentence a person can check):
- a `price < X` / `price > X` trigger that never fired on this history: move X to the 10th (for `<`) or 90th
  (for `>`) percentile of the replayed closes, so it fires on the rarest tenth of prices;
- a dip-buying trigger (`price < X`) whose round trips lost money overall (the workflow's realised P&L < 0):
  buy 2% lower;
- a profit-taking trigger (`price > X`) whose sells won less than half the time: take profit 2% higher;
- a trigger whose runs were denied by the risk engine at least twice: a cooldown of one day (or double the
  current one), so it stops firing into the same denial;
- a max drawdown above 5% of equity: halve `max_order_notional_usd` (smaller orders).
Nothing is applied here: `SuggestionBook` keeps each proposal pending until the user approves it.
"""

from __future__ import annotations

import re
import statistics
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from broker.sim.prices import load_bars_csv
from mcp_overlay_server.settings import OverlaySettings
from poller.triggers import TriggerSpec
from replay.market import parse_commission
from replay.policy import ApprovalPolicy
from replay.report import ReplayReport
from workflows.risk import RiskLimits
from workflows.times import utc_now

if TYPE_CHECKING:
    from mcp_overlay_server.app import Overlay
    from replay.claude_reviewer import ClaudeReviewer
    from replay.engine import ReplayConfig
    from workflows.store import WorkflowStore

PRICE_THRESHOLD = re.compile(r"^\s*price\s*(<=|<|>=|>)\s*([0-9]+(?:\.[0-9]+)?)\s*$")
STEP_PCT = Decimal(2)
DRAWDOWN_LIMIT_PCT = 5.0
DENIALS_FOR_COOLDOWN = 2
ONE_DAY_S = 86_400.0
KEY_PREFIX = "strategy_suggestion:"

ChangeKind = Literal["trigger_condition", "trigger_cooldown", "risk_limit"]


class ParameterChange(BaseModel):
    kind: ChangeKind
    target: str
    """The trigger's name, or the risk limit's field name."""
    before: str | float
    after: str | float
    reason: str


class Outcome(BaseModel):
    """One replay in a line: what the side-by-side comparison shows."""

    total_pnl_usd: Decimal
    realized_pnl_usd: Decimal
    trades: int
    win_rate: float | None
    max_drawdown_usd: Decimal
    max_drawdown_pct: float
    commissions_usd: Decimal

    @classmethod
    def of(cls, report: ReplayReport) -> Outcome:
        return cls(
            total_pnl_usd=report.total_pnl_usd,
            realized_pnl_usd=report.realized_pnl_usd,
            trades=len(report.trades),
            win_rate=report.win_rate,
            max_drawdown_usd=report.drawdown.max_drawdown_usd,
            max_drawdown_pct=report.drawdown.max_drawdown_pct,
            commissions_usd=report.commissions_usd,
        )


class StrategySuggestion(BaseModel):
    suggestion_id: str
    change: ParameterChange
    before: Outcome
    after: Outcome
    status: Literal["pending", "applied", "rejected"] = "pending"
    created_at: datetime
    how_to_answer: str


class SuggestionSet(BaseModel):
    reviewer: str
    history: str
    baseline: Outcome
    by_workflow: list[dict[str, Any]]
    by_trigger: list[dict[str, Any]]
    suggestions: list[StrategySuggestion]
    message: str


def _money(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def _threshold(spec: TriggerSpec) -> tuple[str, Decimal] | None:
    match = PRICE_THRESHOLD.match(spec.condition)
    return (match.group(1), Decimal(match.group(2))) if match else None


def _percentile(values: Sequence[Decimal], pct: int) -> Decimal:
    cuts = statistics.quantiles([float(value) for value in values], n=100, method="inclusive")
    return _money(Decimal(str(cuts[pct - 1])))


class OfflineReviewer:
    """The rules in the module docstring; no model involved."""

    name = "offline"

    def review(
        self, report: ReplayReport, triggers: Sequence[TriggerSpec], limits: RiskLimits
    ) -> list[ParameterChange]:
        changes: list[ParameterChange] = []
        fired = Counter(decision.trigger for decision in report.decisions)
        denied = Counter(decision.trigger for decision in report.decisions if decision.status == "denied")
        by_trigger = {line.name: line for line in report.by_trigger}
        by_workflow = {line.name: line for line in report.by_workflow}
        for spec in triggers:
            threshold = _threshold(spec)
            if threshold is not None:
                changes.extend(self._threshold_change(spec, threshold, report, fired, by_trigger, by_workflow))
            if denied[spec.name] >= DENIALS_FOR_COOLDOWN:
                after = max(ONE_DAY_S, spec.cooldown_s * 2)
                changes.append(
                    ParameterChange(
                        kind="trigger_cooldown",
                        target=spec.name,
                        before=spec.cooldown_s,
                        after=after,
                        reason=f"the risk engine denied {denied[spec.name]} of its {fired[spec.name]} runs; "
                        f"wait {after:g} s after a fire",
                    )
                )
        if report.drawdown.max_drawdown_pct > DRAWDOWN_LIMIT_PCT:
            changes.append(
                ParameterChange(
                    kind="risk_limit",
                    target="max_order_notional_usd",
                    before=limits.max_order_notional_usd,
                    after=round(limits.max_order_notional_usd / 2, 2),
                    reason=f"max drawdown {report.drawdown.max_drawdown_pct:.2f}% > {DRAWDOWN_LIMIT_PCT:g}%: "
                    "halve the order size",
                )
            )
        return changes

    @staticmethod
    def _threshold_change(
        spec: TriggerSpec,
        threshold: tuple[str, Decimal],
        report: ReplayReport,
        fired: Counter[str],
        by_trigger: dict[str, Any],
        by_workflow: dict[str, Any],
    ) -> list[ParameterChange]:
        from replay.engine import workflow_of

        operator, level = threshold
        below = operator.startswith("<")
        closes = [point.prices_usd[spec.symbol] for point in report.equity_curve if spec.symbol in point.prices_usd]
        if not fired[spec.name] and len(closes) >= 2:
            after = _percentile(closes, 10 if below else 90)
            why = f"it never fired on {len(closes)} bars; the {'10th' if below else '90th'} percentile close"
        elif below and (line := by_workflow.get(workflow_of(spec))) is not None and line.realized_pnl_usd < 0:
            after = _money(level * (1 - STEP_PCT / 100))
            why = f"its workflow realised {line.realized_pnl_usd} USD; buy {STEP_PCT}% lower"
        elif (
            not below
            and (line := by_trigger.get(spec.name)) is not None
            and line.win_rate is not None
            and line.win_rate < 0.5
        ):
            after = _money(level * (1 + STEP_PCT / 100))
            why = f"its sells won {line.win_rate:.0%} of the time; take profit {STEP_PCT}% higher"
        else:
            return []
        if after == level:
            return []
        return [
            ParameterChange(
                kind="trigger_condition",
                target=spec.name,
                before=spec.condition,
                after=f"price {operator} {after}",
                reason=why,
            )
        ]


def with_change(
    triggers: Sequence[TriggerSpec], limits: RiskLimits, change: ParameterChange
) -> tuple[list[TriggerSpec], RiskLimits]:
    """The triggers and limits with one change made (validated as a new TriggerSpec / RiskLimits)."""
    if change.kind == "risk_limit":
        return list(triggers), RiskLimits.model_validate(limits.model_dump() | {change.target: change.after})
    field = "condition" if change.kind == "trigger_condition" else "cooldown_s"
    if not any(spec.name == change.target for spec in triggers):
        raise ValueError(f"no trigger named {change.target!r}")
    changed = [
        TriggerSpec.model_validate(spec.model_dump() | {field: change.after}) if spec.name == change.target else spec
        for spec in triggers
    ]
    return changed, limits


async def suggest(
    config: ReplayConfig,
    limits: RiskLimits,
    settings: OverlaySettings,
    *,
    history: str,
    reviewer: OfflineReviewer | ClaudeReviewer | None = None,
) -> tuple[SuggestionSet, list[StrategySuggestion]]:
    """Replay as things are, review, and replay each proposed change on the same bars."""
    from replay.engine import run_replay

    reviewer = reviewer or OfflineReviewer()
    baseline_config = replace(config, risk_limits=limits)
    baseline = await run_replay(baseline_config, settings)
    suggestions = []
    if isinstance(reviewer, OfflineReviewer):
        changes = reviewer.review(baseline, list(config.triggers), limits)
    else:
        changes = await reviewer.review(baseline, list(config.triggers), limits)
    for change in changes:
        triggers, changed_limits = with_change(config.triggers, limits, change)
        after = await run_replay(replace(config, triggers=triggers, risk_limits=changed_limits), settings)
        suggestion_id = f"sugg-{uuid.uuid4().hex[:10]}"
        suggestions.append(
            StrategySuggestion(
                suggestion_id=suggestion_id,
                change=change,
                before=Outcome.of(baseline),
                after=Outcome.of(after),
                created_at=utc_now(),
                how_to_answer=f'call decide_strategy_change(suggestion_id="{suggestion_id}", '
                'decision="approve" or "reject") after showing the user before and after',
            )
        )
    message = (
        f"{len(suggestions)} proposal(s), each replayed on the same history; nothing is applied until the user "
        "approves it with decide_strategy_change"
        if suggestions
        else "no rule suggests a change on this history"
    )
    result = SuggestionSet(
        reviewer=reviewer.name,
        history=history,
        baseline=Outcome.of(baseline),
        by_workflow=[line.model_dump(mode="json") for line in baseline.by_workflow],
        by_trigger=[line.model_dump(mode="json") for line in baseline.by_trigger],
        suggestions=suggestions,
        message=message,
    )
    return result, suggestions


class SuggestionBook:
    """Pending suggestions, kept as preferences (`strategy_suggestion:<id>`) so they survive a restart."""

    def __init__(self, store: WorkflowStore) -> None:
        self.store = store

    async def save(self, suggestion: StrategySuggestion) -> None:
        await self.store.set_preference(KEY_PREFIX + suggestion.suggestion_id, suggestion.model_dump(mode="json"))

    async def get(self, suggestion_id: str) -> StrategySuggestion | None:
        saved = (await self.store.preferences()).get(KEY_PREFIX + suggestion_id)
        return StrategySuggestion.model_validate(saved) if saved is not None else None


class SuggestionDecision(BaseModel):
    suggestion_id: str
    applied: bool
    message: str
    suggestion: StrategySuggestion | None = None


class SuggestionError(Exception):
    """A suggestion cannot be made or decided; the message says what to do."""


def reviewer_for(overlay: Overlay) -> OfflineReviewer | ClaudeReviewer:
    """Claude when an API key is configured (within the same daily budget as the analyst), else the rules."""
    settings = overlay.settings
    if settings.anthropic_api_key is None:
        return OfflineReviewer()
    import anthropic

    from replay.claude_reviewer import ClaudeReviewer

    client = anthropic.AsyncAnthropic(api_key=settings.anthropic_api_key.get_secret_value())
    return ClaudeReviewer(
        client, usage=overlay.usage, model=settings.claude_model, daily_budget_usd=settings.claude_daily_budget_usd
    )


async def suggest_for_overlay(
    overlay: Overlay,
    data_path: Path,
    *,
    symbol: str | None = None,
    policy: str = "all",
    commission: str = "ib",
    slippage_bps: float = 0.0,
) -> SuggestionSet:
    """Review the overlay's own triggers and risk limits on recorded bars; every proposal is saved as pending."""
    from replay.engine import ReplayConfig, ReplayError

    try:
        bars = load_bars_csv(data_path, symbol)
    except (OSError, KeyError, ValueError) as exc:
        raise SuggestionError(f"cannot read bars from {data_path}: {exc}") from exc
    symbols = {name.upper() for name in bars}
    triggers = [spec for spec in overlay.triggers.specs() if spec.symbol in symbols and spec.enabled]
    if not triggers:
        raise SuggestionError(
            f"no enabled trigger watches {', '.join(sorted(symbols))}, the symbols in {data_path}; add_trigger first"
        )
    config = ReplayConfig(
        bars=bars,
        triggers=triggers,
        policy=ApprovalPolicy.parse(policy),
        commission=parse_commission(commission),
        slippage_bps=Decimal(str(slippage_bps)),
    )
    try:
        result, suggestions = await suggest(
            config,
            overlay.risk.engine.limits,
            overlay.settings,
            history=str(data_path),
            reviewer=reviewer_for(overlay),
        )
    except ReplayError as exc:
        raise SuggestionError(str(exc)) from exc
    book = SuggestionBook(overlay.store)
    for suggestion in suggestions:
        await book.save(suggestion)
    await overlay.audit.append("strategy_suggested", count=len(suggestions), history=str(data_path))
    return result


async def decide_suggestion(
    overlay: Overlay, suggestion_id: str, decision: Literal["approve", "reject"]
) -> SuggestionDecision:
    """Apply (to the trigger store or the risk limits) or reject one pending suggestion, once."""
    book = SuggestionBook(overlay.store)
    suggestion = await book.get(suggestion_id)
    if suggestion is None:
        raise SuggestionError(f"no suggestion with id {suggestion_id!r}; suggest_strategy_changes lists them")
    if suggestion.status != "pending":
        return SuggestionDecision(
            suggestion_id=suggestion_id,
            applied=False,
            message=f"suggestion {suggestion_id} is already {suggestion.status}; nothing was done",
            suggestion=suggestion,
        )
    change = suggestion.change
    if decision == "reject":
        suggestion.status = "rejected"
        await book.save(suggestion)
        await overlay.audit.append("strategy_change_rejected", suggestion_id=suggestion_id, target=change.target)
        return SuggestionDecision(suggestion_id=suggestion_id, applied=False, message="rejected", suggestion=suggestion)
    limits = overlay.risk.engine.limits
    if change.kind == "risk_limit":
        current: object = getattr(limits, change.target)
    else:
        spec = next((spec for spec in overlay.triggers.specs() if spec.name == change.target), None)
        if spec is None:
            raise SuggestionError(f"trigger {change.target!r} no longer exists; nothing was done")
        current = spec.condition if change.kind == "trigger_condition" else spec.cooldown_s
    if current != change.before:
        raise SuggestionError(
            f"{change.target} is now {current!r}, not {change.before!r} as when this was suggested; nothing was "
            "done. Ask suggest_strategy_changes again."
        )
    if change.kind == "risk_limit":
        _, changed_limits = with_change([], limits, change)
        await overlay.risk.set_limits(changed_limits)
    else:
        [changed], _ = with_change([spec], limits, change)
        await overlay.add_trigger(changed)
    suggestion.status = "applied"
    await book.save(suggestion)
    await overlay.audit.append(
        "strategy_change_applied",
        suggestion_id=suggestion_id,
        kind=change.kind,
        target=change.target,
        before=str(change.before),
        after=str(change.after),
    )
    return SuggestionDecision(
        suggestion_id=suggestion_id,
        applied=True,
        message=f"applied: {change.target} {change.before} -> {change.after}",
        suggestion=suggestion,
    )
