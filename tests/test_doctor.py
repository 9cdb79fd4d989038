"""`ib-overlay doctor` against the simulated IB_MCP, one without order tools, and nothing at all."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp.server.mcpserver import MCPServer

from broker import ib_mcp_tools as ib
from broker.sim.server import build_sim_server
from mcp_overlay_server.doctor import ServiceSettings, exit_code, render_table, run_checks
from tests.test_walking_skeleton import make_market, settings_for

pytestmark = pytest.mark.anyio

NO_SERVICES = ServiceSettings(redis_url=None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def verdicts(checks: list) -> dict[str, str]:
    return {c.name: c.verdict for c in checks}


async def test_a_good_set_up_passes(tmp_path: Path) -> None:
    checks = await run_checks(settings_for(tmp_path), build_sim_server(make_market()), NO_SERVICES)
    found = verdicts(checks)
    assert found["IB_MCP reachable"] == found["tools: Orders"] == found["paper/live"] == "ok"
    assert found["data dir writable"] == "ok" and found["Redis"] == "skip"
    assert exit_code(checks) == 0 and "all checks passed" in render_table(checks)


async def test_missing_order_tools_fail_with_the_fix(tmp_path: Path) -> None:
    server: MCPServer = build_sim_server(make_market())
    for name in ib.ORDER_TOOLS:
        server.remove_tool(name)
    checks = await run_checks(settings_for(tmp_path), server, NO_SERVICES)
    orders = next(c for c in checks if c.name == "tools: Orders")
    assert orders.verdict == "FAIL" and "EXCLUDED_TAGS" in orders.detail
    assert exit_code(checks) == 1


async def test_unreachable_ib_mcp_and_services_fail(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, database_url="postgresql+psycopg://u:secret@127.0.0.1:9/db")
    checks = await run_checks(settings, "http://127.0.0.1:9/mcp/", ServiceSettings(redis_url="redis://127.0.0.1:9/0"))
    found = verdicts(checks)
    assert found["IB_MCP reachable"] == found["Redis"] == found["PostgreSQL"] == "FAIL"
    assert "secret" not in render_table(checks)
    assert exit_code(checks) == 1
