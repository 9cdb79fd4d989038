"""The composition root: settings -> broker -> poller -> workflows, and the background loops that join them."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from functools import partial
from importlib import import_module
from typing import TYPE_CHECKING

import anyio

from broker.errors import BrokerError
from mcp_overlay_server.settings import OverlaySettings
from workflows.graphs import WORKFLOW_NAMES
from workflows.run_types import WorkflowError

# The MCP server imports this module before it answers `initialize`: LangGraph, the graphs, the analysts
# (anthropic), SQLAlchemy, Redis and the poller are imported by open_overlay, when the overlay opens.
if TYPE_CHECKING:
    from broker.client import BrokerClient, BrokerTarget
    from broker.pacing import Pacer
    from mcp_overlay_server.broker_snapshot import BrokerSnapshotKeeper
    from poller.bus import EventBus
    from poller.config import PollerConfig
    from poller.price_cache import PriceCache
    from poller.service import Poller
    from poller.trigger_store import TriggerStore
    from poller.triggers import TriggerEngine, TriggerSpec
    from workflows.audit import AuditLog
    from workflows.retention import CheckpointRetention
    from workflows.risk_gate import BrokerRiskGate, PriceHistory
    from workflows.runner import WorkflowRunner
    from workflows.store import WorkflowStore
    from workflows.usage import UsageLedger

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 5.0
EVENT_HANDLING_BOUND_S = 60.0
POSITION_CHECK_INTERVAL_S = 30.0
RECOVERY_RETRY_S = 5.0


# What open_overlay imports that takes time (LangGraph through the runner and the graphs, SQLAlchemy through
# the stores): see preload_overlay_modules.
HEAVY_MODULES = (
    "broker.client",
    "poller.price_cache",
    "poller.service",
    "poller.sources",
    "poller.trigger_store",
    "workflows.analyst",
    "workflows.audit",
    "workflows.checkpoint",
    "workflows.execution",
    "workflows.market_hours",
    "workflows.retention",
    "workflows.risk_gate",
    "workflows.runner",
    "workflows.scan_analyst",
    "workflows.store",
    "workflows.usage",
    "langgraph.checkpoint.sqlite.aio",
    *(f"workflows.graphs.{name}" for name in WORKFLOW_NAMES),
)


def preload_overlay_modules(extra: Sequence[str] = ()) -> None:
    """Import what open_overlay needs, and `extra`. Blocking: call it on a worker thread while the MCP server
    answers."""
    for name in (*HEAVY_MODULES, *extra):
        import_module(name)


def broker_target(settings: OverlaySettings) -> BrokerTarget:
    if settings.ib_mcp_command:
        from mcp import StdioServerParameters

        command, *args = settings.ib_mcp_command.split()
        return StdioServerParameters(command=command, args=args)
    return settings.ib_mcp_url


@asynccontextmanager
async def open_pacer(settings: OverlaySettings) -> AsyncIterator[Pacer | None]:
    from broker.pacing import LocalPacer, RedisPacer

    if settings.ib_pacing == "off":
        yield None
    elif settings.ib_pacing == "local":
        yield LocalPacer()
    else:
        import redis.asyncio as aioredis

        client = aioredis.from_url(settings.redis_url)
        try:
            yield RedisPacer(client)
        finally:
            await client.aclose()


def open_event_bus(settings: OverlaySettings) -> EventBus:
    if settings.event_bus == "redis":
        from poller.redis_bus import RedisStreamBus

        return RedisStreamBus(
            settings.redis_url,
            stream_prefix=settings.event_stream_prefix,
            consumer=settings.worker_name,
            claim_idle_ms=settings.event_claim_idle_ms,
        )
    from poller.bus import InProcessBus

    return InProcessBus()


CIRCUIT_BREAKER_HISTORY_POINTS = 600


def price_history_from(cache: PriceCache) -> PriceHistory:
    """The circuit breaker's view of recent prices, read from the poller's price cache."""

    from workflows.risk import PricePoint

    async def recent(symbol: str) -> list[PricePoint]:
        points = await cache.recent(symbol, CIRCUIT_BREAKER_HISTORY_POINTS)
        return [PricePoint(ts=ts if ts.tzinfo else ts.replace(tzinfo=UTC), price_usd=price) for ts, price in points]

    return recent


@dataclass
class Overlay:
    """Everything the MCP tools and the REST endpoints act on."""

    settings: OverlaySettings
    broker: BrokerClient
    store: WorkflowStore
    audit: AuditLog
    usage: UsageLedger
    runner: WorkflowRunner
    risk: BrokerRiskGate
    triggers: TriggerEngine
    trigger_store: TriggerStore
    poller: Poller
    bus: EventBus
    retention: CheckpointRetention
    broker_snapshot: BrokerSnapshotKeeper
    """The account and positions get_context shows, refreshed in the background (never used for risk)."""
    background_errors: list[str] = field(default_factory=list)

    async def add_trigger(self, spec: TriggerSpec) -> None:
        self.triggers.add(spec)
        await self.trigger_store.save(spec)

    async def remove_trigger(self, name: str) -> bool:
        removed = self.triggers.remove(name)
        await self.trigger_store.delete(name)
        return removed

    async def set_trigger_enabled(self, name: str, enabled: bool) -> bool:
        changed = self.triggers.set_enabled(name, enabled)
        if changed:
            await self.trigger_store.set_enabled(name, enabled)
        return changed

    async def consume_events(self) -> None:
        """Hand each event to the runner; ack once the run is recorded. Shutting down stops the intake but
        lets the event in hand finish (bounded), so a run is never cut between two of its steps by us."""
        async for delivery in self.bus.deliveries():
            with anyio.CancelScope(shield=True), anyio.move_on_after(EVENT_HANDLING_BOUND_S):
                try:
                    await self.runner.handle_event(delivery.event, redelivered=delivery.redelivered)
                except Exception:  # one bad event must not stop the consumer
                    log.exception("event %s could not be handled", delivery.event.event_id)
                await delivery.ack()

    async def watch_positions(self) -> None:
        """Every POSITION_CHECK_INTERVAL_S: propose exits for positions whose remembered criteria are met."""
        from workflows.graphs.position_monitor import monitor_positions

        while True:
            await anyio.sleep(POSITION_CHECK_INTERVAL_S)
            try:
                await monitor_positions(self.runner)
            except (BrokerError, WorkflowError) as exc:
                log.warning("position check: %s", exc)

    async def recover(self) -> bool:
        """After a restart: reconcile orders left "sent" with the broker, then continue the runs cut short.
        Nothing is resumed while IB_MCP cannot be reached (a resumed step would fail and end its run): False,
        and `recover_when_reachable` tries again."""
        from workflows.execution import reconcile_ledger

        try:
            await self.broker.accounts()
            await reconcile_ledger(self.broker, self.store)
        except BrokerError as exc:
            log.warning("start-up recovery waits for IB_MCP (%s); retrying every %g s", exc, RECOVERY_RETRY_S)
            return False
        await self.runner.resume_unfinished()
        return True

    async def recover_when_reachable(self) -> None:
        while True:
            if await self.recover():
                return
            await anyio.sleep(RECOVERY_RETRY_S)

    async def sweep_approvals(self) -> None:
        while True:
            await anyio.sleep(SWEEP_INTERVAL_S)
            try:
                await self.runner.expire_overdue()
            except (BrokerError, WorkflowError) as exc:
                log.warning("approval sweep: %s", exc)


@asynccontextmanager
async def open_overlay(
    settings: OverlaySettings,
    *,
    poller_config: PollerConfig | None = None,
    target: BrokerTarget | None = None,
    run_poller: bool = True,
) -> AsyncIterator[Overlay]:
    """Open every part, start the background loops, and close it all in reverse order on exit."""
    from broker.client import BrokerClient
    from mcp_overlay_server.broker_snapshot import BrokerSnapshotKeeper
    from poller.price_cache import build_price_cache
    from poller.service import Poller
    from poller.sources import IBMCPSource
    from poller.trigger_store import TriggerStore
    from poller.triggers import TriggerEngine
    from workflows.analyst import build_analyst
    from workflows.audit import AuditLog
    from workflows.checkpoint import open_checkpointer
    from workflows.deps import TradingSettings, WorkflowDeps
    from workflows.graphs import GRAPHS, graph_builder
    from workflows.market_hours import market_clock
    from workflows.option_risk import OptionRiskGate
    from workflows.retention import CheckpointRetention
    from workflows.risk import RiskEngine, RiskLimits
    from workflows.risk_gate import BrokerRiskGate
    from workflows.runner import WorkflowRunner
    from workflows.scan_analyst import build_desk
    from workflows.store import WorkflowStore, make_engine
    from workflows.usage import UsageLedger

    async with AsyncExitStack() as stack:
        broker = await stack.enter_async_context(
            BrokerClient(
                target or broker_target(settings),
                pacer=await stack.enter_async_context(open_pacer(settings)),
                **({"reply_allow_list": settings.ib_reply_allow_list} if settings.ib_reply_allow_list else {}),
            )
        )
        workflow_engine = make_engine(settings.workflows_db_url)
        context_engine = (
            workflow_engine
            if settings.context_db_url == settings.workflows_db_url
            else make_engine(settings.context_db_url)
        )
        store = WorkflowStore(workflow_engine, context_engine)
        stack.push_async_callback(store.close)
        await store.init()
        audit = AuditLog(workflow_engine)
        await audit.init()
        usage = UsageLedger(workflow_engine, audit=audit)
        await usage.create_table()
        api_key = settings.anthropic_api_key.get_secret_value() if settings.anthropic_api_key else None
        analyst = build_analyst(
            api_key, usage, model=settings.claude_model, daily_budget_usd=settings.claude_daily_budget_usd
        )
        trading = TradingSettings(
            mode=settings.trading_mode,
            live_trading_enabled=settings.live_trading_enabled,
            account_ids=tuple(settings.ib_account_ids),
            approval_ttl_s=settings.approval_ttl_s,
            max_order_notional_usd=settings.max_order_notional_usd,
            max_price_drift_pct=settings.max_price_drift_pct,
            auto_approve_under_usd=dict(settings.auto_approve_under_usd),
            resume_wait_s=settings.resume_wait_s,
            brackets=settings.brackets,
        )
        limits = RiskLimits(
            max_order_notional_usd=settings.max_order_notional_usd,
            trading_mode=settings.trading_mode,
            allowed_accounts=list(settings.ib_account_ids),
        )
        risk = BrokerRiskGate(RiskEngine(limits), broker, store, trading, clock=market_clock(settings.market_calendar))
        await risk.load()
        checkpointer = await stack.enter_async_context(open_checkpointer(settings.checkpoint_url))
        deps = WorkflowDeps(
            broker=broker,
            store=store,
            analyst=analyst,
            # options: covered calls must stay covered, a buy to close is judged as reducing (at approval too)
            risk=OptionRiskGate(risk, broker),
            audit=audit,
            usage=usage,
            trading=trading,
        )
        ranker, request_parser = build_desk(
            api_key, usage, model=settings.claude_model, daily_budget_usd=settings.claude_daily_budget_usd
        )
        graphs = {
            **GRAPHS,
            "market_scan": partial(graph_builder("market_scan"), ranker=ranker),
            "vwap_order": partial(graph_builder("vwap_order"), parser=request_parser),
        }
        runner = WorkflowRunner(deps, checkpointer, graphs, worker_name=settings.worker_name)

        trigger_store = TriggerStore(settings.triggers_db_url)
        config_triggers = poller_config.triggers if poller_config else []
        triggers = TriggerEngine(config_triggers)
        for spec in await trigger_store.load():
            triggers.add(spec)
        bus = open_event_bus(settings)
        stack.push_async_callback(bus.aclose)
        price_cache = build_price_cache(
            redis_url=settings.redis_url if settings.event_bus == "redis" else None,
            sqlite_path=settings.price_cache_path,
        )
        stack.push_async_callback(price_cache.aclose)
        risk.price_history = price_history_from(price_cache)
        poller = Poller(
            IBMCPSource(broker),
            triggers,
            bus,
            interval_s=poller_config.interval_seconds if poller_config else 2.0,
            symbols=poller_config.symbols if poller_config else (),
            price_cache=price_cache,
        )
        overlay = Overlay(
            settings=settings,
            broker=broker,
            store=store,
            audit=audit,
            usage=usage,
            runner=runner,
            risk=risk,
            triggers=triggers,
            trigger_store=trigger_store,
            poller=poller,
            bus=bus,
            retention=CheckpointRetention(checkpointer, store, keep=timedelta(days=settings.checkpoint_retention_days)),
            broker_snapshot=BrokerSnapshotKeeper(broker, deps.trading_account),
        )
        async with anyio.create_task_group() as tasks:
            runner.background = tasks
            if not await overlay.recover():
                tasks.start_soon(overlay.recover_when_reachable)
            tasks.start_soon(overlay.consume_events)
            tasks.start_soon(overlay.sweep_approvals)
            store.order_listeners.append(overlay.broker_snapshot.invalidate)
            tasks.start_soon(overlay.broker_snapshot.run)
            if run_poller and settings.runs_embedded_poller:
                tasks.start_soon(poller.run)
            if settings.scan_cron:
                from workflows.scheduler import ScanScheduler

                scheduler = ScanScheduler(
                    runner,
                    market_clock(settings.market_calendar),
                    cron=settings.scan_cron,
                    fallback_symbols=lambda: poller.symbols,
                )
                tasks.start_soon(scheduler.run_forever)
            tasks.start_soon(overlay.watch_positions)
            if settings.checkpoint_retention_days > 0:
                tasks.start_soon(overlay.retention.run_forever)
            try:
                yield overlay
            finally:
                tasks.cancel_scope.cancel()
        await trigger_store.close()
