"""The README's promises, run as a user would: `ib-overlay demo` and `ib-overlay serve --demo` as processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from broker import ib_mcp_tools as ib
from mcp_overlay_server.http import overlay_client

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

OVERLAY_TOOLS = {"start_strategy", "approve_trade", "list_pending_approvals", "get_context", "get_workflow_status"}


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "ANTHROPIC_API_KEY", "CLAUDE_API_KEY")}
    env["OVERLAY_DATA_DIR"] = str(tmp_path / "data")
    return env


@pytest.fixture
def demo_process(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mcp_overlay_server",
            "demo",
            "--port",
            "0",
            "--sim-port",
            "0",
            "--data-dir",
            str(tmp_path / "demo"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(tmp_path),
        cwd=tmp_path,
    )
    yield process
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def read_banner(process: subprocess.Popen[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    patterns = {
        "url": r"overlay MCP \(streamable HTTP\): (\S+)",
        "token": r"bearer token:\s+(\S+)",
        "sim_url": r"simulated IB_MCP:\s+(\S+)",
    }
    assert process.stdout is not None
    for line in process.stdout:
        for key, pattern in patterns.items():
            if match := re.search(pattern, line):
                found[key] = match.group(1)
        if len(found) == len(patterns):
            return found
    raise AssertionError(f"demo exited ({process.poll()}) before printing its URLs; got {found}")


async def structured(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    return result.structured_content or {}


async def wait_for_pending(client: Client) -> list[dict[str, Any]]:
    with anyio.fail_after(60):
        while True:
            pending = (await structured(client, "list_pending_approvals"))["approvals"]
            if pending:
                return pending
            await anyio.sleep(0.5)


async def test_demo_trigger_fires_and_an_approved_proposal_fills_once(demo_process: subprocess.Popen[str]) -> None:
    banner = await anyio.to_thread.run_sync(read_banner, demo_process)
    async with overlay_client(banner["url"], banner["token"]) as client:
        [proposal] = await wait_for_pending(client)
        assert (proposal["symbol"], proposal["side"], proposal["quantity"]) == ("AAPL", "SELL", 25)
        decision = await structured(client, "approve_trade", approval_id=proposal["approval_id"], decision="approve")
        assert decision["accepted"] is True
        again = await structured(client, "approve_trade", approval_id=proposal["approval_id"], decision="approve")
        assert again["accepted"] is False
        context = await structured(client, "get_context")
        [order] = context["recent_orders"]
        assert order["status"] == "filled" and order["filled_quantity"] == 25

    async with Client(banner["sim_url"], mode="legacy") as broker:
        live = (await broker.call_tool(ib.LIVE_ORDERS, {})).structured_content
        assert [o["order_ref"] for o in live["orders"]] == [order["client_order_id"]]


async def test_demo_refuses_http_without_the_token(demo_process: subprocess.Popen[str]) -> None:
    banner = await anyio.to_thread.run_sync(read_banner, demo_process)
    with pytest.raises(Exception):  # noqa: B017 - the transport raises its own error type for a 401
        async with overlay_client(banner["url"], "wrong-token") as client:
            await client.list_tools()


def test_demo_auto_approve_walks_the_whole_path(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mcp_overlay_server",
            "demo",
            "--port",
            "0",
            "--sim-port",
            "0",
            "--auto-approve",
            "--data-dir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(tmp_path),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"order \d+ SELL 25 AAPL: filled", done.stdout)


async def test_serve_demo_over_stdio_lists_and_calls_tools(tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_overlay_server", "serve", "--demo"], env=_env(tmp_path), cwd=tmp_path
    )
    with anyio.fail_after(60):
        async with Client(params) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert names >= OVERLAY_TOOLS
            context = await structured(client, "get_context")
            assert context["mode"] == "paper" and context["account_id"].startswith("DU")


def test_sigterm_shuts_the_http_server_down_cleanly(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mcp_overlay_server",
            "serve",
            "--demo",
            "--http",
            "--port",
            "0",
            "--log-format",
            "text",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmp_path),
        cwd=tmp_path,
    )
    assert process.stderr is not None
    try:
        for line in process.stderr:
            if "overlay MCP server on" in line:
                break
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, rest
    assert "received SIGTERM: shutting down" in rest
