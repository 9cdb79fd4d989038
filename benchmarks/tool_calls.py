"""Tool call overhead: `get_context` and `list_pending_approvals` against a bare server's `echo`.

Over three transports (in-memory, stdio, streamable HTTP), each measured in the same run as the bare `mcp`
server over the same transport. The overlay is backed by the simulated IB_MCP in-process (the `serve --demo`
set-up) with one proposal pending, and its poller is off, so only tool calls are measured. `get_context`
shows the account from the background snapshot (no IB_MCP call of its own) and reads the store once, or not
at all while nothing was written since its last call.

A third server shows the floor: a bare server returning the very result `get_context` returned, recorded,
as it is. Its cost over the echo is what any tool with that output pays (transport, serialisation, and the
client's validation against the output schema, which the `mcp` client does on every call).

    python -m benchmarks.tool_calls [--repeats 300] [--transports memory,stdio,http]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from benchmarks.bare_server import build_bare_server
from benchmarks.context_floor import build_context_floor_server
from benchmarks.figures import Figure, p50_p99, print_figures, time_async_ms
from benchmarks.harness import PYTHON, REPO_ROOT, open_sim_overlay, subprocess_env
from mcp_overlay_server.context import TradingContext

TRANSPORTS = ("memory", "stdio", "http")
OVERLAY_TOOLS = ("get_context", "list_pending_approvals")
GET_CONTEXT_TARGET_RATIO = 1.3
FLOOR_NOTE = (
    "the floor, over each transport: get_context's result, recorded, returned as it is by a bare server "
    "(transport, serialisation, and the mcp client's jsonschema validation of it against the output schema)"
)


@asynccontextmanager
async def overlay_session(transport: str, data_dir: Path) -> AsyncIterator[Client]:
    async with AsyncExitStack() as stack:
        if transport == "stdio":
            params = StdioServerParameters(
                command=PYTHON,
                args=["-m", "mcp_overlay_server", "serve", "--demo", "--no-poller"],
                env=subprocess_env(data_dir),
                cwd=str(data_dir),
            )
            yield await stack.enter_async_context(Client(params))
            return
        from mcp_overlay_server.server import build_server

        overlay, _ = await stack.enter_async_context(open_sim_overlay(data_dir))
        server = build_server(overlay)
        if transport == "memory":
            yield await stack.enter_async_context(Client(server))
            return
        from mcp_overlay_server.http import build_http_app, overlay_client, serve_http

        token = "benchmark-token"
        url = await stack.enter_async_context(
            serve_http(build_http_app(overlay, server, token, "127.0.0.1"), "127.0.0.1", 0)
        )
        yield await stack.enter_async_context(overlay_client(url, token))


@asynccontextmanager
async def bare_session(
    transport: str, context: TradingContext | None = None, data_dir: Path | None = None
) -> AsyncIterator[Client]:
    """A session with the bare echo server, or (`context`) with the server returning that context (over stdio
    handed to the server process in a file under `data_dir`)."""
    async with AsyncExitStack() as stack:
        if transport == "stdio":
            module = ["benchmarks.bare_server"]
            if context is not None:
                context_file = anyio.Path(data_dir or ".") / "context.json"
                await context_file.write_text(context.model_dump_json())
                module = ["benchmarks.context_floor", str(context_file)]
            params = StdioServerParameters(command=PYTHON, args=["-m", *module], env={"PYTHONPATH": str(REPO_ROOT)})
            yield await stack.enter_async_context(Client(params))
            return
        server = build_context_floor_server(context) if context is not None else build_bare_server()
        if transport == "memory":
            yield await stack.enter_async_context(Client(server))
            return
        from mcp_overlay_server.http import serve_http

        url = await stack.enter_async_context(serve_http(server.streamable_http_app(), "127.0.0.1", 0))
        http_client = create_mcp_http_client()
        yield await stack.enter_async_context(Client(streamable_http_client(url, http_client=http_client)))


async def _timed_tool(client: Client, tool: str, arguments: dict[str, Any], repeats: int) -> list[float]:
    async def call() -> None:
        result = await client.call_tool(tool, arguments)
        if result.is_error:
            raise RuntimeError(f"{tool} failed: {result.content}")

    return await time_async_ms(call, repeats)


async def measure_transport(transport: str, repeats: int) -> dict[str, list[float]]:
    """Round-trip samples (ms) of each overlay tool, of the bare echo and of the recorded context over
    `transport`."""
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tools-") as data_dir:
        async with overlay_session(transport, Path(data_dir)) as client:
            started = await client.call_tool(
                "start_strategy", {"workflow": "price_alert", "symbol": "AAPL", "condition": "price > 200"}
            )
            if started.is_error:
                raise RuntimeError(f"start_strategy failed: {started.content}")
            for tool in OVERLAY_TOOLS:
                samples[tool] = await _timed_tool(client, tool, {}, repeats)
            context = TradingContext.model_validate((await client.call_tool("get_context", {})).structured_content)
        async with bare_session(transport) as client:
            samples["echo"] = await _timed_tool(client, "echo", {"text": "ping"}, repeats)
        async with bare_session(transport, context, Path(data_dir)) as client:
            samples["floor"] = await _timed_tool(client, "recorded_context", {}, repeats)
    return samples


def figures_for(transport: str, samples: dict[str, list[float]]) -> list[Figure]:
    echo_p50, echo_p99 = p50_p99(samples["echo"])
    figures: list[Figure] = []
    for tool in OVERLAY_TOOLS:
        p50, p99 = p50_p99(samples[tool])
        with_target = tool == "get_context"
        figures.append(
            Figure(
                f"{tool} p50 ({transport})",
                "ms",
                p50,
                echo_p50,
                "ratio" if with_target else "info",
                GET_CONTEXT_TARGET_RATIO if with_target else None,
            )
        )
        figures.append(Figure(f"{tool} p99 ({transport})", "ms", p99, echo_p99))
    floor_p50, _ = p50_p99(samples["floor"])
    figures.append(Figure(f"get_context's result from a bare tool p50 ({transport})", "ms", floor_p50, echo_p50))
    return figures


async def run(repeats: int = 300, transports: tuple[str, ...] = TRANSPORTS) -> list[Figure]:
    figures: list[Figure] = []
    for transport in transports:
        figures.extend(figures_for(transport, await measure_transport(transport, repeats)))
    first_floor = next((i for i, f in enumerate(figures) if f.name.startswith("get_context's result")), None)
    if first_floor is not None:
        figures[first_floor] = replace(figures[first_floor], note=FLOOR_NOTE)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=300, help="timed calls per tool and transport")
    parser.add_argument("--transports", default=",".join(TRANSPORTS), help="comma-separated: memory,stdio,http")
    args = parser.parse_args()
    transports = tuple(t.strip() for t in args.transports.split(",") if t.strip())
    print_figures(
        f"tool calls (baseline: bare mcp echo, {args.repeats} calls)", anyio.run(run, args.repeats, transports)
    )


if __name__ == "__main__":
    main()
