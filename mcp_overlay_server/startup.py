"""The overlay opened in the background, so that `serve` answers `initialize` and `tools/list` at once.

`open_in_background` hands out a LazyOverlay straight away and opens the real Overlay (broker connection,
databases, LangGraph checkpointer and graphs, poller) in a task beside the MCP server. The server's tools,
resources and REST endpoints wait for it (at most OPEN_WAIT_S) before they run, and answer with the reason
when opening failed (a database that cannot be opened, a bad setting). An unreachable IB_MCP does not fail
the opening: the broker connects lazily and each call says so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from mcp_overlay_server.app import Overlay

log = logging.getLogger(__name__)

OPEN_WAIT_S = 60.0
OPENING_GRACE_S = 15.0
MCP_PATH = "/mcp"


class OverlayUnavailable(Exception):
    """The overlay is not open: still opening, or opening failed. The message says which, and what to do."""


class LazyOverlay:
    """Stands in for the Overlay while it opens: attribute reads go to the opened Overlay. Callers await
    `wait_open()` first; reading an attribute before the overlay is open raises OverlayUnavailable."""

    def __init__(self) -> None:
        self._overlay: Overlay | None = None
        self._failure: str | None = None
        self._settled = anyio.Event()

    @property
    def is_open(self) -> bool:
        return self._overlay is not None

    @property
    def failure(self) -> str | None:
        """Why opening failed, or None (open, or still opening)."""
        return self._failure

    async def wait_open(self, timeout_s: float = OPEN_WAIT_S) -> Overlay:
        """The opened Overlay, once it is open; OverlayUnavailable if opening failed or took over `timeout_s`."""
        with anyio.move_on_after(timeout_s):
            await self._settled.wait()
        if self._overlay is not None:
            return self._overlay
        if self._failure is not None:
            raise OverlayUnavailable(
                f"the overlay could not start: {self._failure}. Fix it and restart the overlay "
                "(`ib-overlay doctor` checks IB_MCP, the data directory, Redis and PostgreSQL)."
            )
        raise OverlayUnavailable(
            f"the overlay is still starting after {timeout_s:g} s (opening its databases and connecting); "
            "try again in a moment"
        )

    async def wait_settled(self) -> None:
        """Until the overlay is open or opening failed."""
        await self._settled.wait()

    def opened(self, overlay: Overlay) -> None:
        self._overlay = overlay
        self._settled.set()

    def failed(self, reason: str) -> None:
        self._failure = reason
        self._settled.set()

    def __getattr__(self, name: str) -> Any:
        if self._overlay is None:
            raise OverlayUnavailable(
                f"the overlay is not open ({self._failure or 'still starting'}); {name} is not available yet"
            )
        return getattr(self._overlay, name)


def _first_leaf(exc: BaseException) -> BaseException:
    """The error itself rather than the task groups it passed through."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def open_in_background(
    open_overlay: Callable[[], AbstractAsyncContextManager[Overlay]],
    *,
    preload: Callable[[], None] | None = None,
) -> AsyncIterator[LazyOverlay]:
    """Yield a LazyOverlay at once; open `open_overlay()` in a task and hold it open until the block exits.

    `preload` runs first on a worker thread: importing the heavy modules there (LangGraph, SQLAlchemy, the
    graphs) keeps the event loop free to answer the MCP client meanwhile. Leaving the block lets an opening in
    progress finish (at most OPENING_GRACE_S), then closes the overlay in order (in-flight steps finish, bounded)."""
    lazy = LazyOverlay()
    closing = anyio.Event()

    async def hold() -> None:
        is_open = False
        try:
            if preload is not None:
                await anyio.to_thread.run_sync(preload)
            async with open_overlay() as overlay:
                is_open = True
                lazy.opened(overlay)
                await closing.wait()
        except Exception as exc:
            if is_open:
                raise
            log.exception("the overlay could not start")
            cause = _first_leaf(exc)
            lazy.failed(f"{type(cause).__name__}: {cause}")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(hold)
        try:
            yield lazy
        finally:
            # An opening cut short leaves database connections half-open: let it finish first (bounded).
            with anyio.CancelScope(shield=True), anyio.move_on_after(OPENING_GRACE_S):
                await lazy.wait_settled()
            if lazy.is_open:
                closing.set()
            else:
                tasks.cancel_scope.cancel()


class WaitForOverlay:
    """ASGI: REST requests (every path but /mcp, whose tools wait on their own) wait for the overlay to open;
    503 with the reason if it could not, so /healthz says "starting" or "failed" instead of hanging."""

    def __init__(self, app: ASGIApp, overlay: LazyOverlay, *, timeout_s: float = OPEN_WAIT_S) -> None:
        self.app = app
        self.overlay = overlay
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(MCP_PATH):
            try:
                await self.overlay.wait_open(self.timeout_s)
            except OverlayUnavailable as exc:
                body = json.dumps({"error": "overlay_unavailable", "detail": str(exc)}).encode()
                await send(
                    {"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"application/json")]}
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
