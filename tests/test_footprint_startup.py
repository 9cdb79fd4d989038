"""`serve` answers `initialize` and `tools/list` before the overlay has opened, without importing LangGraph,
anthropic, pandas, redis, SQLAlchemy or the graphs; tools wait for the overlay opening in the background and say why
when it could not open."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import import_module
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from broker.sim.server import build_sim_server
from mcp_overlay_server.app import Overlay, open_overlay
from mcp_overlay_server.server import build_server
from mcp_overlay_server.startup import LazyOverlay, WaitForOverlay, open_in_background
from tests.test_walking_skeleton import POLLER, make_market, settings_for
from workflows.graphs import GRAPHS, WORKFLOW_NAMES

pytestmark = pytest.mark.anyio

HEAVY = (
    "langgraph",
    "langchain_core",
    "anthropic",
    "pandas",
    "numpy",
    "redis",
    "exchange_calendars",
    "talib",
    "sqlalchemy",
    "sqlmodel",
)
REPO_ROOT = Path(__file__).resolve().parents[1]
LIST_TOOLS_IN_A_FRESH_INTERPRETER = """
import json, sys
import anyio
from mcp import Client
import mcp_overlay_server.cli
from mcp_overlay_server.server import build_server
from mcp_overlay_server.startup import LazyOverlay

async def main():
    async with Client(build_server(LazyOverlay())) as client:
        tools = (await client.list_tools()).tools
    print(json.dumps({"tools": [t.name for t in tools], "modules": sorted(sys.modules)}))

anyio.run(main)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def closed_postgres_url() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/nothing_listens_here"


def test_tools_are_listed_without_importing_the_heavy_parts() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LIST_TOOLS_IN_A_FRESH_INTERPRETER],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"get_context", "start_strategy", "approve_trade", "list_pending_approvals"} <= set(listed["tools"])
    heavy = [m for m in listed["modules"] if m.split(".")[0] in HEAVY or m.startswith("workflows.graphs.")]
    assert heavy == []


def test_graph_names_match_their_modules() -> None:
    assert sorted(GRAPHS) == sorted(WORKFLOW_NAMES)
    for name in WORKFLOW_NAMES:
        assert name == import_module(f"workflows.graphs.{name}").WORKFLOW


@asynccontextmanager
async def opening_after(gate: anyio.Event, tmp_path: Path) -> AsyncIterator[Overlay]:
    await gate.wait()
    async with open_overlay(
        settings_for(tmp_path), poller_config=POLLER, target=build_sim_server(make_market()), run_poller=False
    ) as overlay:
        yield overlay


async def test_a_tool_called_while_opening_waits_and_then_answers(tmp_path: Path) -> None:
    gate = anyio.Event()
    answers: list[Any] = []
    async with open_in_background(lambda: opening_after(gate, tmp_path)) as lazy, Client(build_server(lazy)) as client:
        assert "get_context" in {tool.name for tool in (await client.list_tools()).tools}

        async def ask() -> None:
            answers.append(await client.call_tool("get_context", {}))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ask)
            await anyio.sleep(0.2)
            assert answers == [] and not lazy.is_open  # the opening cannot go on before the gate opens
            gate.set()
        [result] = answers
        assert not result.is_error, result.content
        assert result.structured_content["mode"] == "paper"
        assert result.structured_content["account_id"].startswith("DU")


@asynccontextmanager
async def failing_overlay(tmp_path: Path) -> AsyncIterator[LazyOverlay]:
    settings = settings_for(tmp_path, database_url=closed_postgres_url())
    async with open_in_background(
        lambda: open_overlay(settings, poller_config=POLLER, target=build_sim_server(make_market()), run_poller=False)
    ) as lazy:
        yield lazy


async def test_a_failed_opening_is_what_tools_and_resources_answer(tmp_path: Path) -> None:
    async with failing_overlay(tmp_path) as lazy, Client(build_server(lazy)) as client:
        assert len((await client.list_tools()).tools) > 10
        result = await client.call_tool("list_pending_approvals", {})
        assert result.is_error
        [text] = result.content
        assert "could not start" in text.text and "OperationalError" in text.text and "doctor" in text.text
        with pytest.raises(Exception, match="could not start"):
            await client.read_resource("overlay://approvals/pending")


async def test_rest_requests_answer_503_with_the_reason_when_opening_failed(tmp_path: Path) -> None:
    reached: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        reached.append(scope["path"])

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async with failing_overlay(tmp_path) as lazy:
        await lazy.wait_settled()
        gate = WaitForOverlay(app, lazy)
        await gate({"type": "http", "path": "/healthz", "headers": []}, receive, send)
        await gate({"type": "http", "path": "/mcp", "headers": []}, receive, send)
    assert sent[0]["status"] == 503
    assert "could not start" in json.loads(sent[1]["body"])["detail"]
    assert reached == ["/mcp"]  # MCP itself is served: initialize and tools/list need no overlay


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "ANTHROPIC_API_KEY", "CLAUDE_API_KEY")}
    return env | {"OVERLAY_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO_ROOT), **extra}


@pytest.mark.slow
async def test_serve_with_ib_mcp_unreachable_lists_tools_and_says_so(tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_overlay_server", "serve", "--no-poller"],
        env=_env(tmp_path, IB_MCP_URL=f"http://127.0.0.1:{free_port()}/mcp/", SCAN_CRON=""),
        cwd=tmp_path,
    )
    with anyio.fail_after(90):
        async with Client(params) as client:
            assert "get_context" in {tool.name for tool in (await client.list_tools()).tools}
            result = await client.call_tool("get_context", {})
    assert not result.is_error, result.content
    assert "IB_MCP" in result.structured_content["broker_error"]


@pytest.mark.slow
def test_http_serve_stops_with_exit_code_1_when_opening_fails(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcp_overlay_server", "serve", "--http", "--port", "0", "--log-format", "text"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(tmp_path, DATABASE_URL=closed_postgres_url()),
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    assert "overlay MCP server on" in done.stderr and "could not start" in done.stderr
