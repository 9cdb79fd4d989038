"""Streamable HTTP: /mcp and the REST endpoints behind a Host check, a body size limit and a bearer token.

Bound to 127.0.0.1 unless told otherwise. Only /healthz answers without the token (container health checks).
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared._httpx_utils import create_mcp_http_client
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_overlay_server.app import Overlay
from mcp_overlay_server.rest import register_rest

GRACEFUL_SHUTDOWN_S = 10
PUBLIC_PATHS = frozenset({"/healthz"})
LOCAL_BIND_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
LOCAL_HOST_PATTERNS = ("127.0.0.1:*", "localhost:*", "[::1]:*")


class HttpSettings(BaseSettings):
    """HTTP hardening knobs (environment): which Host headers are served, and how big a request may be."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=AliasChoices("OVERLAY_ALLOWED_HOSTS"),
        description="comma-separated Host header values (host:port, or host:* for any port) besides localhost; "
        "set it when binding 0.0.0.0, e.g. 'overlay:*' in compose",
    )
    max_request_bytes: int = Field(default=1_000_000, gt=0, validation_alias=AliasChoices("OVERLAY_MAX_REQUEST_BYTES"))

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


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


async def _refuse(send: Send, status: int, error: str, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


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
            await _refuse(
                send,
                401,
                "unauthorized",
                "send 'Authorization: Bearer <token>' (see data/http_token)",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        await self.app(scope, receive, send)


class HostGuard:
    """DNS-rebinding protection for every path (the SDK's covers /mcp only): the Host header must be allowed."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self._exact = {h for h in allowed_hosts if not h.endswith(":*")}
        self._any_port = tuple(h[:-1] for h in allowed_hosts if h.endswith(":*"))

    def allows(self, host: str) -> bool:
        return host in self._exact or (host.startswith(self._any_port) and host.rsplit(":", 1)[-1].isdigit())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not self.allows(host):
                await _refuse(send, 421, "misdirected_request", f"Host {host!r} is not served here")
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuses request bodies over `max_bytes` (413), whether announced by Content-Length or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _refuse(send, 413, "request_too_large", f"the body may be at most {self.max_bytes} bytes")
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestTooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except RequestTooLarge:
            await _refuse(send, 413, "request_too_large", f"the body may be at most {self.max_bytes} bytes")


class RequestTooLarge(Exception):
    """A streamed request body passed the limit."""


def allowed_hosts_for(bind_host: str, extra: Sequence[str]) -> list[str]:
    """Localhost (any port) plus `extra`; binding 0.0.0.0 without `extra` still serves localhost only."""
    hosts = [*LOCAL_HOST_PATTERNS, *extra]
    if bind_host not in LOCAL_BIND_HOSTS and bind_host not in ("0.0.0.0", "::"):
        hosts.append(f"{bind_host}:*")
    return hosts


def build_http_app(
    overlay: Overlay,
    server: MCPServer,
    token: str,
    host: str,
    *,
    http_settings: HttpSettings | None = None,
) -> ASGIApp:
    """/mcp, the REST endpoints, /healthz, /metrics and /openapi.json behind Host check, size limit and token."""
    http_settings = http_settings or HttpSettings()
    hosts = allowed_hosts_for(host, http_settings.allowed_hosts)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=[f"http://{h}" for h in hosts] + [f"https://{h}" for h in hosts],
    )
    register_rest(server, overlay)
    app = server.streamable_http_app(
        host=host, transport_security=security, max_request_body_size=http_settings.max_request_bytes
    )
    return HostGuard(BodyLimit(BearerAuth(app, token), http_settings.max_request_bytes), hosts)


@asynccontextmanager
async def serve_http(app: ASGIApp, host: str, port: int) -> AsyncIterator[str]:
    """Run `app` with uvicorn on host:port (0 = a free port) until the block exits; yields the /mcp URL."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S
    )
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
