"""Streamable HTTP: /mcp behind a bearer token, plus /healthz. Bound to 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import hmac
import json
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.shared._httpx_utils import create_mcp_http_client
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_overlay_server.app import Overlay

PUBLIC_PATHS = frozenset({"/healthz"})


def load_or_create_token(token_file: Path) -> str:
    """The bearer token: read from `token_file`, or generated once and stored there with mode 0600."""
    if token_file.exists():
        return token_file.read_text().strip()
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    return token


class BearerAuth:
    """Refuses every request but the public paths unless it carries `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self._expected):
            body = json.dumps(
                {
                    "error": "unauthorized",
                    "detail": "send 'Authorization: Bearer <token>' (see data/http_token)",
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def build_http_app(overlay: Overlay, server: MCPServer, token: str, host: str) -> ASGIApp:
    @server.custom_route("/healthz", methods=["GET"])
    async def healthz(_: Request) -> Response:
        stats = overlay.poller.stats
        body = {
            "status": "ok" if overlay.broker.last_error is None else "degraded",
            "ib_mcp": {
                "target": overlay.broker.target_label,
                "connected": overlay.broker.connected,
                "error": overlay.broker.last_error,
            },
            "poller": {
                "running": overlay.poller.running,
                "cycles": stats.cycles,
                "last_error": stats.last_error,
            },
        }
        return JSONResponse(body)

    return BearerAuth(server.streamable_http_app(host=host), token)


@asynccontextmanager
async def serve_http(app: ASGIApp, host: str, port: int) -> AsyncIterator[str]:
    """Run `app` with uvicorn on host:port (0 = a free port) until the block exits; yields the /mcp URL."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve)
        while not server.started:
            if server.should_exit:
                raise RuntimeError(f"could not serve HTTP on {host}:{port}")
            await anyio.sleep(0.02)
        bound_port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"http://{host}:{bound_port}/mcp"
        finally:
            server.should_exit = True


def overlay_client(url: str, token: str, **client_options: Any) -> Client:
    """An MCP client session to the overlay's HTTP endpoint, carrying the bearer token."""
    http_client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    return Client(streamable_http_client(url, http_client=http_client), **client_options)
