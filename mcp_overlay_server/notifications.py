"""Telling connected clients that something changed, in both protocol generations.

- 2026-07-28 clients open `subscriptions/listen`; a `ResourceUpdated` published on the server's subscription
  bus reaches them.
- Handshake-era clients (MCP Inspector's CLI, Claude Desktop today) send `resources/subscribe` and
  `logging/setLevel`. MCPServer does not serve those, so `install` registers them on the low-level server (the
  SDK migration guide's workaround) and keeps each subscribing session to notify it later on its standalone
  channel.

`ChangeWatcher` is the one place that notices changes: it compares cheap fingerprints of the pending approvals,
the triggers, recent runs, orders and market events, and the cached prices every `interval_s`, so a change made
by a tool, the poller or a background workflow is announced the same way without hooks in those parts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections import defaultdict
from typing import TYPE_CHECKING, Any, get_args

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated
from mcp.shared.exceptions import MCPDeprecationWarning

from workflows.times import as_utc

if TYPE_CHECKING:
    from mcp_overlay_server.app import Overlay

log = logging.getLogger(__name__)

LEVELS: tuple[types.LoggingLevel, ...] = get_args(types.LoggingLevel)
DEFAULT_LOG_LEVEL: types.LoggingLevel = "info"
WATCH_INTERVAL_S = 1.0
MARKET_SCAN = "market_scan"

CONTEXT_URI = "overlay://context"
PENDING_URI = "overlay://approvals/pending"
TRIGGERS_URI = "overlay://triggers"
SCANS_URI = "overlay://scans/latest"


def workflow_uri(workflow_id: str) -> str:
    return f"overlay://workflows/{workflow_id}"


def prices_uri(symbol: str) -> str:
    return f"overlay://prices/{symbol.upper()}"


class SessionHub:
    """Sessions that asked for resource updates or log messages, and the modern subscription bus."""

    def __init__(self) -> None:
        self.bus = InMemorySubscriptionBus()
        self._subscribers: defaultdict[str, list[ServerSession]] = defaultdict(list)
        self._log_levels: list[tuple[ServerSession, types.LoggingLevel]] = []

    def install(self, server: MCPServer) -> None:
        # MCPServer exposes no public hook for these two handshake-era methods; the low-level server does.
        lowlevel = server._lowlevel_server
        lowlevel.add_request_handler("resources/subscribe", types.SubscribeRequestParams, self._on_subscribe)
        lowlevel.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, self._on_unsubscribe)
        lowlevel.add_request_handler("logging/setLevel", types.SetLevelRequestParams, self._on_set_level)

    async def _on_subscribe(
        self, ctx: ServerRequestContext[Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        sessions = self._subscribers[str(params.uri)]
        if not any(s._connection is ctx.session._connection for s in sessions):
            sessions.append(ctx.session)
        return types.EmptyResult()

    async def _on_unsubscribe(
        self, ctx: ServerRequestContext[Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        uri = str(params.uri)
        self._subscribers[uri] = [s for s in self._subscribers[uri] if s._connection is not ctx.session._connection]
        return types.EmptyResult()

    async def _on_set_level(
        self, ctx: ServerRequestContext[Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        self._log_levels = [(s, lvl) for s, lvl in self._log_levels if s._connection is not ctx.session._connection]
        self._log_levels.append((ctx.session, params.level))
        return types.EmptyResult()

    def subscribed_uris(self) -> set[str]:
        return {uri for uri, sessions in self._subscribers.items() if sessions}

    async def resource_updated(self, uri: str) -> None:
        await self.bus.publish(ResourceUpdated(uri=uri))
        alive: list[ServerSession] = []
        for session in self._subscribers.get(uri, []):
            try:
                await session.send_resource_updated(uri)
                alive.append(session)
            except Exception as exc:  # a gone client must not stop the others' notifications
                log.debug("dropping subscriber of %s: %s", uri, exc)
        if uri in self._subscribers:
            self._subscribers[uri] = alive

    async def log(self, level: types.LoggingLevel, data: dict[str, Any], logger: str = "ib-overlay") -> None:
        """A background event as a `notifications/message` to every session that set a level at or below it."""
        alive: list[tuple[ServerSession, types.LoggingLevel]] = []
        for session, minimum in self._log_levels:
            try:
                if LEVELS.index(level) >= LEVELS.index(minimum):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", MCPDeprecationWarning)
                        await session.send_log_message(level, data, logger=logger)
                alive.append((session, minimum))
            except Exception as exc:  # a gone client must not stop the others' notifications
                log.debug("dropping log subscriber: %s", exc)
        self._log_levels = alive


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class ChangeWatcher:
    """Compares fingerprints of what the resources show and announces what changed."""

    def __init__(self, overlay: Overlay, hub: SessionHub, *, interval_s: float = WATCH_INTERVAL_S) -> None:
        self.overlay = overlay
        self.hub = hub
        self.interval_s = interval_s
        self._seen: dict[str, str] = {}
        self._order_status: dict[str, str] = {}
        self._events_seen: set[str] | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:  # a failed look must not end the notifications for good
                log.exception("change watcher")
            await anyio.sleep(self.interval_s)

    async def check_once(self) -> None:
        store = self.overlay.store
        snapshots: dict[str, Any] = {
            PENDING_URI: [a.approval_id for a in await store.pending_approvals()],
            TRIGGERS_URI: [t.model_dump(mode="json") for t in self.overlay.triggers.specs()],
        }
        runs = await store.list_runs(limit=20)
        for run in runs:
            snapshots[workflow_uri(run.workflow_id)] = (run.status, run.summary, as_utc(run.updated_at))
        snapshots[SCANS_URI] = [(r.workflow_id, r.status) for r in runs if r.workflow == MARKET_SCAN][:1]
        cache = self.overlay.poller.price_cache
        if cache is not None:
            for symbol in self.overlay.poller.symbols:
                snapshots[prices_uri(symbol)] = (await cache.recent(symbol, 1))[-1:]
        orders = await store.orders(limit=20)
        snapshots[CONTEXT_URI] = (snapshots[PENDING_URI], [(o.client_order_id, o.status) for o in orders])
        for uri, value in snapshots.items():
            digest = _digest(value)
            if self._seen.get(uri) not in (None, digest):
                await self.hub.resource_updated(uri)
            self._seen[uri] = digest
        await self._announce_fills(orders)
        await self._announce_triggers()

    async def _announce_fills(self, orders: list[Any]) -> None:
        first_look = not self._order_status
        previous, self._order_status = self._order_status, {o.client_order_id: o.status for o in orders}
        for order in orders:
            before = previous.get(order.client_order_id)
            if first_look or before == order.status or order.status not in ("filled", "cancelled", "rejected"):
                continue
            await self.hub.log(
                "notice",
                {
                    "event": f"order_{order.status}",
                    "workflow_id": order.workflow_id,
                    "symbol": order.symbol,
                    "action": order.side,
                    "quantity": order.filled_quantity or order.quantity,
                    "price": order.avg_fill_price,
                    "order_id": order.broker_order_id,
                },
            )

    async def _announce_triggers(self) -> None:
        events = await self.overlay.store.recent_market_events(limit=10)
        ids = {e.event_id for e in events}
        if self._events_seen is not None:
            for event in reversed(events):
                if event.event_id not in self._events_seen:
                    await self.hub.log(
                        "warning" if event.channel == "urgent" else "info",
                        {
                            "event": "trigger_fired",
                            "trigger": event.trigger_name,
                            "symbol": event.symbol,
                            "price": event.price,
                            "condition": event.condition,
                        },
                    )
        self._events_seen = ids
