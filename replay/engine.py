"""Run a replay: recorded bars drive the real poller, bus, workflow runner, risk engine and simulated IB_MCP.

One step per bar (symbols move in lockstep, bar i of each together): the simulated market moves to the bar,
the poller polls a `ReplaySource` of the same bars (so triggers see the bar's close at the bar's time),
each event goes through the bus to `WorkflowRunner.handle_event`, a proposal is answered by the
`ApprovalPolicy` through `WorkflowRunner.decide` (which re-checks risk and places the order once), and the
market fills it at that bar's price. Every run uses fresh state in a temporary directory.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import anyio

from broker.sim.accounting import CommissionSchedule
from broker.sim.prices import Bar
from broker.sim.server import build_sim_server
from mcp_overlay_server.app import Overlay, open_overlay
from mcp_overlay_server.settings import OverlaySettings
from poller.bus import Delivery, InProcessBus
from poller.config import PollerConfig
from poller.events import TriggerEvent
from poller.sources import ReplaySource
from poller.triggers import TriggerSpec
from replay import metrics
from replay.clock import ReplayClock
from replay.market import ReplayMarket
from replay.policy import ApprovalPolicy
from replay.report import (
    ClaudeUsage,
    Decision,
    EquityPoint,
    OpenPosition,
    ReplayReport,
    ReplaySettingsView,
    Trade,
)
from replay.sim_time_risk import SimulatedTimeRiskGate
from workflows.graphs import GRAPHS
from workflows.models import Proposal
from workflows.risk import RiskLimits
from workflows.run_types import WorkflowError

DEFAULT_CASH_USD = Decimal(100_000)
EVENT_BOUND_S = 60.0


class ReplayError(Exception):
    """The replay cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class ReplayConfig:
    bars: Mapping[str, Sequence[Bar]]
    triggers: Sequence[TriggerSpec]
    workflows: frozenset[str] | None = None
    """Only triggers whose action runs one of these; None = every trigger."""
    policy: ApprovalPolicy = field(default_factory=ApprovalPolicy)
    commission: CommissionSchedule = field(default_factory=CommissionSchedule)
    slippage_bps: Decimal = Decimal(0)
    cash_usd: Decimal = DEFAULT_CASH_USD
    bars_per_second: float | None = None
    """None replays as fast as possible."""
    risk_limits: RiskLimits | None = None
    """None = the limits the settings give a fresh overlay."""


def workflow_of(spec: TriggerSpec) -> str:
    """The workflow a trigger's action starts (as `TriggerEvent.workflow` reads it)."""
    if spec.action.startswith("execute_workflow:"):
        return spec.action.split(":", 1)[1].strip()
    return "price_alert"


def replay_settings(settings: OverlaySettings, data_dir: Path) -> OverlaySettings:
    """The caller's settings (analyst, budget, limits) with everything else made local, fresh and simulated."""
    return settings.model_copy(
        update={
            "data_dir": data_dir,
            "database_url": None,
            "market_calendar": "always",
            "ib_pacing": "off",
            "scan_cron": None,
            "event_bus": "memory",
            "embedded_poller": False,
            "ib_account_ids": [],
            "trading_mode": "paper",
            "live_trading_enabled": False,
            "poller_config": None,
        }
    )


def _check(config: ReplayConfig, available: Sequence[str]) -> list[TriggerSpec]:
    if not config.bars or not any(config.bars.values()):
        raise ReplayError("the replay has no bars; give a CSV with date, open, high, low, close, volume")
    unknown = sorted((config.workflows or frozenset()) - set(available))
    if unknown:
        raise ReplayError(f"unknown workflow(s) {', '.join(unknown)}; available: {', '.join(available)}")
    kept = [spec for spec in config.triggers if config.workflows is None or workflow_of(spec) in config.workflows]
    missing = sorted({spec.symbol for spec in kept} - {symbol.upper() for symbol in config.bars})
    if missing:
        raise ReplayError(f"triggers watch {', '.join(missing)} but the data has bars only for {sorted(config.bars)}")
    not_runnable = sorted({workflow_of(spec) for spec in kept} - set(available))
    if not_runnable:
        raise ReplayError(f"triggers start unknown workflow(s) {', '.join(not_runnable)}")
    if not kept:
        raise ReplayError("no trigger left to replay; check --workflows against the triggers' actions")
    return kept


class _Replay:
    def __init__(self, config: ReplayConfig, overlay: Overlay, market: ReplayMarket, clock: ReplayClock) -> None:
        self.config = config
        self.overlay = overlay
        self.market = market
        self.clock = clock
        self.decisions: list[Decision] = []
        self.curve: list[EquityPoint] = []
        self.trigger_of_run: dict[str, str] = {}

    async def run(self, bars: dict[str, list[Bar]], deliveries: AsyncIterator[Delivery]) -> None:
        steps = max(len(recorded) for recorded in bars.values())
        for index in range(steps):
            self.clock.set_ms(max(recorded[index].ts_ms for recorded in bars.values() if index < len(recorded)))
            if index:
                self.market.step()
            for _ in await self.overlay.poller.poll_once():
                delivery = await anext(deliveries)
                with anyio.fail_after(EVENT_BOUND_S):
                    await self._handle(delivery.event)
                await delivery.ack()
            self._mark()
            if self.config.bars_per_second:
                await anyio.sleep(1 / self.config.bars_per_second)

    async def _handle(self, event: TriggerEvent) -> None:
        runner, store = self.overlay.runner, self.overlay.store
        view = await runner.handle_event(event)
        run = view or (
            await runner.status(found.workflow_id) if (found := await store.run_for_event(event.event_id)) else None
        )
        approval_answer: str | None = None
        notional: float | None = None
        if run is not None:
            self.trigger_of_run[run.workflow_id] = event.trigger_name
            if run.status == "awaiting_approval" and run.pending_approval_id:
                approval = await store.get_approval(run.pending_approval_id)
                assert approval is not None
                notional = Proposal.model_validate_json(approval.proposal_json).intent.notional_usd
                approve = self.config.policy.approves(notional)
                approval_answer = "approve" if approve else "reject"
                try:
                    decided = await runner.decide(
                        run.pending_approval_id,
                        approval_answer,
                        note=f"replay approval policy {self.config.policy.describe()}",
                    )
                except WorkflowError as exc:  # recorded as the run's outcome; the replay goes on
                    run = run.model_copy(update={"status": "failed", "summary": str(exc)})
                else:
                    run = decided.run or run
        self.decisions.append(
            Decision(
                ts=self.clock.now,
                trigger=event.trigger_name,
                symbol=event.symbol,
                workflow=event.workflow or "",
                workflow_id=run.workflow_id if run else None,
                status=run.status if run else "not started",
                approval=approval_answer,
                notional_usd=round(notional, 2) if notional is not None else None,
                summary=run.summary if run else "the runner did not start a workflow for this event",
            )
        )

    def _mark(self) -> None:
        positions = self.market.positions()
        self.curve.append(
            EquityPoint(
                ts=self.clock.now,
                equity_usd=self.market.net_liquidation(),
                cash_usd=self.market.cash(),
                exposure_usd=sum((abs(view.market_value) for view in positions), Decimal(0)),
                prices_usd={inst.symbol: self.market.quote(inst.symbol).last for inst in self.market.instruments},
            )
        )

    async def trades(self) -> list[Trade]:
        store = self.overlay.store
        trades = []
        for execution in self.market.executions:
            record = await store.get_order(execution.client_order_id) if execution.client_order_id else None
            run = await store.get_run(record.workflow_id) if record else None
            trades.append(
                Trade(
                    ts=datetime.fromtimestamp(execution.ts_ms / 1000, UTC),
                    symbol=execution.instrument.symbol,
                    side=execution.side,
                    quantity=execution.quantity,
                    price_usd=execution.price,
                    commission_usd=execution.commission,
                    realized_pnl_usd=execution.realized_pnl,
                    workflow=run.workflow if run else metrics.UNATTRIBUTED,
                    trigger=self.trigger_of_run.get(run.workflow_id, metrics.UNATTRIBUTED)
                    if run
                    else metrics.UNATTRIBUTED,
                    workflow_id=run.workflow_id if run else "",
                    client_order_id=execution.client_order_id,
                )
            )
        return trades


def fills_of(trades: Sequence[Trade]) -> list[metrics.Fill]:
    """Trades as metric fills; a fill is closing when it trades against the position held before it."""
    held: dict[str, Decimal] = {}
    fills = []
    for trade in trades:
        before = held.get(trade.symbol, Decimal(0))
        signed = trade.quantity if trade.side == "BUY" else -trade.quantity
        held[trade.symbol] = before + signed
        fills.append(
            metrics.Fill(
                ts=trade.ts,
                symbol=trade.symbol,
                side=trade.side,
                quantity=trade.quantity,
                price_usd=trade.price_usd,
                commission_usd=trade.commission_usd,
                realized_pnl_usd=trade.realized_pnl_usd,
                closing=before != 0 and (before > 0) != (signed > 0),
                workflow=trade.workflow,
                trigger=trade.trigger,
            )
        )
    return fills


async def run_replay(config: ReplayConfig, settings: OverlaySettings) -> ReplayReport:
    """Replay `config.bars` through a fresh overlay on simulated time; the report of what would have happened."""
    kept = _check(config, sorted(GRAPHS))
    bars = {symbol.upper(): sorted(recorded, key=lambda bar: bar.ts_ms) for symbol, recorded in config.bars.items()}
    with tempfile.TemporaryDirectory(prefix="ib-overlay-replay-") as data_dir:
        first_ms = min(recorded[0].ts_ms for recorded in bars.values() if recorded)
        clock = ReplayClock(datetime.fromtimestamp(first_ms / 1000, UTC))
        market = ReplayMarket(
            bars,
            clock=clock,
            cash_usd=config.cash_usd,
            commission=config.commission,
            slippage_bps=config.slippage_bps,
        )
        async with open_overlay(
            replay_settings(settings, Path(data_dir)),
            poller_config=PollerConfig(interval_seconds=1.0, symbols=sorted(bars), triggers=[]),
            target=build_sim_server(market),
            run_poller=False,
        ) as overlay:
            for spec in kept:
                overlay.triggers.add(spec)
            gate = SimulatedTimeRiskGate(overlay.risk, clock, market)
            if config.risk_limits is not None:
                await gate.set_limits(config.risk_limits)
            overlay.risk = gate
            overlay.runner.deps.risk = gate
            bus = InProcessBus()
            overlay.poller.bus = bus
            overlay.poller.source = ReplaySource(bars)
            replay = _Replay(config, overlay, market, clock)
            deliveries = bus.deliveries()
            await replay.run(bars, deliveries)
            trades = await replay.trades()
            spend = await overlay.usage.by_workflow()
            analyst = getattr(overlay.runner.deps.analyst, "name", type(overlay.runner.deps.analyst).__name__)
            settings_view = ReplaySettingsView(
                symbols=sorted(bars),
                bars=max(len(recorded) for recorded in bars.values()),
                first_bar=replay.curve[0].ts,
                last_bar=replay.curve[-1].ts,
                triggers=[spec.model_dump(mode="json") for spec in kept],
                workflows=sorted({workflow_of(spec) for spec in kept}),
                approval_policy=config.policy.describe(),
                commission={
                    "per_share_usd": str(config.commission.per_share_usd),
                    "minimum_usd": str(config.commission.minimum_usd),
                    "maximum_pct_of_value": str(config.commission.maximum_pct_of_value),
                },
                slippage_bps=config.slippage_bps,
                starting_cash_usd=config.cash_usd,
                analyst=analyst,
            )
            return build_report(
                settings_view,
                replay,
                trades,
                market,
                spend_by_workflow={
                    line.workflow: {"calls": float(line.calls), "cost_usd": line.cost_usd} for line in spend
                },
            )


def build_report(
    settings_view: ReplaySettingsView,
    replay: _Replay,
    trades: list[Trade],
    market: ReplayMarket,
    *,
    spend_by_workflow: dict[str, dict[str, float]],
) -> ReplayReport:
    fills = fills_of(trades)
    positions = [
        OpenPosition(
            symbol=view.symbol,
            quantity=view.quantity,
            avg_cost_usd=view.avg_cost,
            market_price_usd=view.market_price,
            market_value_usd=view.market_value,
            unrealized_pnl_usd=view.unrealized_pnl,
        )
        for view in market.positions()
    ]
    final_equity = market.net_liquidation()
    starting = settings_view.starting_cash_usd
    return ReplayReport(
        settings=settings_view,
        starting_equity_usd=starting,
        final_equity_usd=final_equity,
        total_pnl_usd=final_equity - starting,
        realized_pnl_usd=market.realized_pnl(),
        unrealized_pnl_usd=sum((position.unrealized_pnl_usd for position in positions), Decimal(0)),
        cash_usd=market.cash(),
        commissions_usd=sum((trade.commission_usd for trade in trades), Decimal(0)),
        trades=trades,
        win_rate=metrics.win_rate(fills),
        by_workflow=metrics.attribute(fills, lambda fill: fill.workflow),
        by_trigger=metrics.attribute(fills, lambda fill: fill.trigger),
        drawdown=metrics.max_drawdown([(point.ts, point.equity_usd) for point in replay.curve]),
        max_exposure_usd=max((point.exposure_usd for point in replay.curve), default=Decimal(0)),
        positions=positions,
        decisions=replay.decisions,
        equity_curve=replay.curve,
        claude=ClaudeUsage(
            calls=int(sum(line["calls"] for line in spend_by_workflow.values())),
            cost_usd=round(sum(line["cost_usd"] for line in spend_by_workflow.values()), 6),
            by_workflow=spend_by_workflow,
        ),
        definitions=(metrics.__doc__ or "").split("\n\n", 1)[1].strip(),
    )
