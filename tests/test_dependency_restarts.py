"""Every background loop survives its dependency going away and coming back: IB_MCP restarted, PostgreSQL
restarted, the Claude API failing. Health shows the degraded part; work resumes without duplicates.
(Redis going away and coming back is covered in tests/test_bus.py with a private redis-server.)"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import psycopg
import pytest
import respx

from broker.sim.server import build_sim_server, serve_sim_http
from mcp_overlay_server.app import open_overlay
from mcp_overlay_server.health import check_health
from poller.events import TriggerEvent
from tests.anthropic_mock import MESSAGES_URL, error_response, mock_anthropic_client, without_retry_backoff
from tests.test_walking_skeleton import POLLER, make_market, settings_for
from workflows.analyst import ClaudeAnalyst

pytestmark = pytest.mark.anyio

PG_BIN = next(Path("/usr/lib/postgresql").glob("*/bin"), Path("/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    with anyio.fail_after(timeout_s):
        while True:
            if await predicate():
                return
            await anyio.sleep(0.05)


async def test_ib_mcp_restart_degrades_then_recovers(tmp_path: Path) -> None:
    market = make_market()
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp/"
    settings = settings_for(tmp_path)
    async with open_overlay(settings, poller_config=POLLER, target=url, run_poller=False) as overlay:
        async with serve_sim_http(market, port=port):
            assert await overlay.poller.poll_once() == []
            assert (await check_health(overlay)).status == "ok"

        with pytest.raises(Exception, match="IB_MCP"):
            await overlay.poller.poll_once()
        degraded = await check_health(overlay)
        assert degraded.status != "ok"

        async with serve_sim_http(market, port=port):
            market.set_price("AAPL", "200.40")
            events = await overlay.poller.poll_once()
            assert [e.trigger_name for e in events] == ["AAPL price alert"]

            async def proposed() -> bool:
                return bool(await overlay.runner.pending())

            await wait_until(proposed)
            [pending] = await overlay.runner.pending()
            result = await overlay.runner.decide(pending.approval_id, "approve")
            assert result.accepted
            assert (await check_health(overlay)).status == "ok"
    assert len(market.orders) == 1


@pytest.fixture
def private_postgres() -> Iterator[tuple[str, Path, int]]:
    """A PostgreSQL cluster of this test's own, so it can be stopped and started without touching others."""
    folder = Path(tempfile.mkdtemp(prefix="overlay-pg-"))
    shutil.chown(folder, "postgres")
    data = folder / "data"
    port = free_port()

    def as_postgres(*args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120)

    as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    start = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", f"-p {port} -k {folder} -h 127.0.0.1", "-w"]
    as_postgres(*start, "-l", str(folder / "log"), "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", data, port
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(folder, ignore_errors=True)


def pg_ctl(data: Path, port: int, action: str) -> None:
    options = f"-p {port} -k {data.parent} -h 127.0.0.1"
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-w",
            "-m",
            "immediate",
            "-l",
            str(data.parent / "log"),
            action,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


def aapl_event(price: float) -> TriggerEvent:
    return TriggerEvent(trigger_name="AAPL price alert", symbol="AAPL", price=price, condition="price > 200")


@pytest.mark.postgres
async def test_postgres_restart_loses_no_event_and_doubles_none(
    tmp_path: Path, private_postgres: tuple[str, Path, int]
) -> None:
    url, data, port = private_postgres
    market = make_market()
    settings = settings_for(tmp_path, database_url=url)
    async with open_overlay(
        settings, poller_config=POLLER, target=build_sim_server(market), run_poller=False
    ) as overlay:
        before = aapl_event(200.4)
        assert (await overlay.runner.handle_event(before)) is not None

        pg_ctl(data, port, "stop")
        during = aapl_event(200.5)
        with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises while the server is down
            await overlay.runner.handle_event(during)
        pg_ctl(data, port, "start")

        redelivered = await overlay.runner.handle_event(during, redelivered=True)
        again = await overlay.runner.handle_event(before, redelivered=True)
        assert redelivered is not None and again is not None

        runs = await overlay.store.list_runs(limit=10)
    with psycopg.connect(url) as connection:
        per_event = connection.execute("SELECT trigger_event_id, count(*) FROM workflow_run GROUP BY 1").fetchall()
    assert sorted(count for _, count in per_event) == [1, 1]
    assert {run.trigger_event_id for run in runs} == {before.event_id, during.event_id}
    assert all(run.status == "awaiting_approval" for run in runs)


async def test_claude_failing_becomes_hold_and_health_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    without_retry_backoff(monkeypatch)
    market = make_market()
    async with open_overlay(
        settings_for(tmp_path), poller_config=POLLER, target=build_sim_server(market), run_poller=False
    ) as overlay:
        with respx.mock(assert_all_called=False) as router:
            route = router.post(MESSAGES_URL).mock(return_value=error_response(529))
            overlay.runner.deps.analyst = ClaudeAnalyst(
                mock_anthropic_client(router, max_retries=1), usage=overlay.usage
            )
            run = await overlay.runner.start("price_alert", event=aapl_event(200.4))
        health = await check_health(overlay)
    assert route.call_count >= 1
    assert run.status == "completed" and run.summary.startswith("hold")
    assert health.status == "degraded" and any("Claude API failing" in p for p in health.problems)
    assert market.orders == []
