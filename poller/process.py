"""The poller as its own process: a price source, the trigger engine, a bus and the price cache, until a signal.

`python -m poller` (poller/__main__.py) and `ib-overlay poller` both call `run_poller`. Settings come from
the environment, as in docker-compose:

    POLLER_CONFIG        the YAML (poller/config.example.yaml); POLL_INTERVAL overrides its interval
    IB_MCP_URL           IB_MCP's streamable HTTP URL (source ib_mcp), default http://localhost:5002/mcp/
    IB_GATEWAY_HOST/PORT TWS or IB Gateway (source tws), default 127.0.0.1:4002; IB_CLIENT_ID (default 17)
    EVENT_BUS            memory | redis | webhook; default redis when REDIS_URL is set, else memory
    REDIS_URL            Redis for the bus (and the price cache)
    EVENT_STREAM_PREFIX  stream names (default overlay:events -> overlay:events:urgent / :info)
    LANGGRAPH_URL        the overlay's HTTP base URL (webhook bus); OVERLAY_TOKEN its bearer token
    PRICE_CACHE          sqlite | redis | off; default redis when REDIS_URL is set, else sqlite
    OVERLAY_DATA_DIR     data folder (default data): poller/price_cache.db, poller/dead_letters.jsonl

With the memory bus nothing outside this process sees the events: they are logged and dropped.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

import anyio

from broker.client import BrokerClient
from broker.sim.market import MarketSimulator
from poller.bus import BusKind, EventPublisher, InProcessBus, build_bus
from poller.config import PollerConfig
from poller.price_cache import DEFAULT_MAX_POINTS, PriceCache, RedisPriceCache, SQLitePriceCache
from poller.service import Poller, PollerStats
from poller.sources import IBMCPSource, QuoteSource, ReplaySource, SimulatorSource
from poller.triggers import TriggerEngine

log = logging.getLogger(__name__)

SourceKind = Literal["ib_mcp", "replay", "tws", "simulator"]
PriceCacheKind = Literal["sqlite", "redis", "off"]
DEFAULT_IB_MCP_URL = "http://localhost:5002/mcp/"


def _choice(value: str, allowed: tuple[str, ...], variable: str) -> str:
    if value not in allowed:
        raise ValueError(f"{variable}={value!r}: use one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class PollerProcessOptions:
    """Everything `run_poller` needs besides the trigger configuration."""

    source: SourceKind = "ib_mcp"
    bars_path: Path | None = None
    bars_symbol: str | None = None
    ib_mcp_url: str = DEFAULT_IB_MCP_URL
    tws_host: str = "127.0.0.1"
    tws_port: int = 4002
    tws_client_id: int = 17
    bus: BusKind = "memory"
    redis_url: str | None = None
    stream_prefix: str | None = None
    webhook_base_url: str | None = None
    token: str | None = None
    price_cache: PriceCacheKind = "sqlite"
    price_cache_points: int = DEFAULT_MAX_POINTS
    data_dir: Path = Path("data")

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        source: SourceKind = "ib_mcp",
        bars_path: Path | None = None,
        bars_symbol: str | None = None,
    ) -> PollerProcessOptions:
        """Options from environment variables (see the module docstring); raises ValueError naming a bad one."""
        redis_url = env.get("REDIS_URL") or None
        bus = _choice(env.get("EVENT_BUS") or ("redis" if redis_url else "memory"), get_args(BusKind), "EVENT_BUS")
        price_cache = _choice(
            env.get("PRICE_CACHE") or ("redis" if redis_url else "sqlite"), get_args(PriceCacheKind), "PRICE_CACHE"
        )
        try:
            tws_port = int(env.get("IB_GATEWAY_PORT") or 4002)
            tws_client_id = int(env.get("IB_CLIENT_ID") or 17)
        except ValueError as exc:
            raise ValueError(f"IB_GATEWAY_PORT and IB_CLIENT_ID must be whole numbers: {exc}") from exc
        return cls(
            source=source,
            bars_path=bars_path,
            bars_symbol=bars_symbol,
            ib_mcp_url=env.get("IB_MCP_URL") or DEFAULT_IB_MCP_URL,
            tws_host=env.get("IB_GATEWAY_HOST") or "127.0.0.1",
            tws_port=tws_port,
            tws_client_id=tws_client_id,
            bus=cast(BusKind, bus),
            redis_url=redis_url,
            stream_prefix=env.get("EVENT_STREAM_PREFIX") or None,
            webhook_base_url=env.get("LANGGRAPH_URL") or None,
            token=env.get("OVERLAY_TOKEN") or None,
            price_cache=cast(PriceCacheKind, price_cache),
            data_dir=Path(env.get("OVERLAY_DATA_DIR") or env.get("DATA_DIR") or "data"),
        )


@asynccontextmanager
async def open_source(options: PollerProcessOptions, config: PollerConfig) -> AsyncIterator[QuoteSource]:
    """The price source the options name, closed on exit."""
    if options.source == "ib_mcp":
        async with BrokerClient(options.ib_mcp_url) as broker:
            yield IBMCPSource(broker)
    elif options.source == "replay":
        if options.bars_path is None:
            raise ValueError("the replay source needs a CSV of bars (--bars FILE.csv)")
        yield ReplaySource.from_csv(options.bars_path, options.bars_symbol)
    elif options.source == "simulator":
        yield SimulatorSource(MarketSimulator(config.symbols or None))
    else:
        # ib_async is an optional extra: imported only when this source is asked for.
        from poller.tws_source import TWSSource

        tws = TWSSource(options.tws_host, options.tws_port, client_id=options.tws_client_id)
        try:
            yield tws
        finally:
            await tws.aclose()


def open_price_cache(options: PollerProcessOptions) -> PriceCache | None:
    if options.price_cache == "off":
        return None
    if options.price_cache == "redis":
        if not options.redis_url:
            raise ValueError("PRICE_CACHE=redis needs REDIS_URL")
        return RedisPriceCache(options.redis_url, max_points_per_symbol=options.price_cache_points)
    return SQLitePriceCache(
        options.data_dir / "poller" / "price_cache.db", max_points_per_symbol=options.price_cache_points
    )


def open_bus(options: PollerProcessOptions) -> EventPublisher:
    return build_bus(
        options.bus,
        redis_url=options.redis_url,
        webhook_base_url=options.webhook_base_url,
        token=options.token,
        dead_letter_path=str(options.data_dir / "poller" / "dead_letters.jsonl"),
        stream_prefix=options.stream_prefix,
    )


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s received: stopping the poller", signal.Signals(signum).name)
            scope.cancel()
            return


async def _discard(bus: InProcessBus) -> None:
    """No consumer lives in this process: events of the memory bus are acknowledged and dropped."""
    async for delivery in bus.deliveries():
        await delivery.ack()


async def run_poller(config: PollerConfig, options: PollerProcessOptions) -> PollerStats:
    """Poll, fire triggers and publish until SIGTERM or SIGINT (or cancellation); returns the final statistics."""
    async with AsyncExitStack() as stack:
        source = await stack.enter_async_context(open_source(options, config))
        bus = open_bus(options)
        stack.push_async_callback(bus.aclose)
        cache = open_price_cache(options)
        if cache is not None:
            stack.push_async_callback(cache.aclose)
        poller = Poller(
            source,
            TriggerEngine(config.triggers),
            bus,
            interval_s=config.interval_seconds,
            symbols=config.symbols,
            price_cache=cache,
        )
        log.info(
            "poller started: source %s, bus %s, price cache %s, %d trigger(s) on %s, every %g s",
            source.name,
            options.bus,
            options.price_cache,
            len(config.triggers),
            ", ".join(poller.symbols) or "no symbols",
            config.interval_seconds,
        )
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_stop_on_signal, tasks.cancel_scope)
            if isinstance(bus, InProcessBus):
                tasks.start_soon(_discard, bus)
            await poller.run()
        stats = poller.stats
        log.info(
            "poller stopped: %d poll(s), %d tick(s), %d event(s), %d failed and %d missed poll(s)",
            stats.cycles,
            stats.ticks,
            stats.events,
            stats.failed_polls,
            stats.missed_polls,
        )
        return stats
