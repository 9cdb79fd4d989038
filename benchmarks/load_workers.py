"""Scale-out load: N trigger events through W overlay worker processes on Redis Streams and PostgreSQL.

    python -m benchmarks.load_workers --events 1000 --workers 2 --kill-after 300

Starts a simulated IB_MCP process and W `ib-overlay serve --http` workers (EVENT_BUS=redis,
DATABASE_URL=postgresql), publishes the events, optionally SIGKILLs worker 1 once `--kill-after` runs
exist, and reports handled / duplicated / lost counts and event -> proposal latency percentiles. Then it
approves, through a surviving worker, every proposal the killed worker left pending (and a few others),
and counts the orders at the simulated broker: each approved proposal must be exactly one order.
Needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (trust auth).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
import psycopg
import redis.asyncio as aioredis
from mcp import Client

from broker import ib_mcp_tools as ib
from mcp_overlay_server.http import overlay_client
from poller.events import TriggerEvent
from poller.redis_bus import RedisStreamBus

ADMIN_URL = os.environ.get("TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# Approving hundreds of proposals in a minute is the point of the test, not a mistake the limits should stop.
LOAD_TEST_LIMITS = {"max_orders_per_minute": 100_000, "max_orders_per_hour": 1_000_000}
URL_PATTERN = re.compile(r"(http://127\.0\.0\.1:\d+/mcp/?)")


@dataclass
class LoadReport:
    events: int
    workers: int
    killed_worker: str | None
    handled: int
    duplicated: int
    lost: int
    stuck: int
    by_worker: dict[str, int]
    latency_ms_p50: float
    latency_ms_p99: float
    elapsed_s: float
    approved: int = 0
    approved_of_killed_worker: int = 0
    orders_at_broker: int = 0
    duplicate_orders: int = 0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"events {self.events}, workers {self.workers}, killed {self.killed_worker or 'none'}",
            f"handled {self.handled}, duplicated {self.duplicated}, lost {self.lost}, stuck {self.stuck}",
            f"runs by worker {self.by_worker}",
            f"event -> proposal latency p50 {self.latency_ms_p50:.0f} ms, p99 {self.latency_ms_p99:.0f} ms; "
            f"all handled in {self.elapsed_s:.1f} s ({self.handled / max(self.elapsed_s, 1e-9):.1f} events/s)",
            f"approved {self.approved} (of the killed worker: {self.approved_of_killed_worker}), orders at the "
            f"broker {self.orders_at_broker}, duplicate orders {self.duplicate_orders}",
        ]


@contextmanager
def throwaway_database() -> Iterator[str]:
    name = f"overlay_load_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _read_url(stream: IO[str], process: subprocess.Popen[str], deadline_s: float = 60.0) -> str:
    started = time.monotonic()
    for line in stream:
        if match := URL_PATTERN.search(line):
            return match.group(1)
        if time.monotonic() - started > deadline_s:
            break
    raise RuntimeError(f"process {process.args} printed no URL (exit code {process.poll()})")


def _drain(stream: IO[str]) -> None:
    for _ in stream:
        pass


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


@asynccontextmanager
async def _process(
    args: list[str], env: dict[str, str], *, url_on: str
) -> AsyncIterator[tuple[subprocess.Popen[str], str]]:
    """Start a process, wait for the URL it prints, keep its pipes drained, stop it on exit."""
    process = _spawn(args, env)
    stream = process.stdout if url_on == "stdout" else process.stderr
    other = process.stderr if url_on == "stdout" else process.stdout
    assert stream is not None and other is not None
    try:
        url = await anyio.to_thread.run_sync(_read_url, stream, process)
        for pipe in (stream, other):
            threading.Thread(target=_drain, args=(pipe,), daemon=True).start()
        yield process, url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await anyio.to_thread.run_sync(process.wait, 20)
            except subprocess.TimeoutExpired:
                process.kill()


def _worker_env(name: str, database_url: str, sim_url: str, prefix: str, token: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "CLAUDE_API_KEY")}
    env.update(
        EVENT_BUS="redis",
        REDIS_URL=REDIS_URL,
        EVENT_STREAM_PREFIX=prefix,
        EVENT_CLAIM_IDLE_MS="3000",
        DATABASE_URL=database_url,
        IB_MCP_URL=sim_url,
        IB_PACING="off",
        MARKET_CALENDAR="always",
        OVERLAY_TOKEN=token,
        WORKER_NAME=name,
        OVERLAY_DATA_DIR=str(data_dir / name),
        APPROVAL_TTL_S="3600",
        MAX_ORDER_NOTIONAL_USD="100000",
        SCAN_CRON="",
    )
    return env


def _runs(database_url: str) -> list[tuple[str, str, str, Any, Any, str | None]]:
    with psycopg.connect(database_url) as connection:
        return connection.execute(
            "SELECT trigger_event_id, status, coalesce(worker, ''), created_at, updated_at, workflow_id "
            "FROM workflow_run WHERE trigger_event_id IS NOT NULL"
        ).fetchall()


async def _count_runs(database_url: str) -> int:
    def count() -> int:
        try:
            with psycopg.connect(database_url) as connection:
                row = connection.execute(
                    "SELECT count(*) FROM workflow_run WHERE trigger_event_id IS NOT NULL AND status <> 'running'"
                ).fetchone()
                return int(row[0]) if row else 0
        except psycopg.errors.UndefinedTable:
            return 0

    return await anyio.to_thread.run_sync(count)


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, int(pct) - 1))]


async def run_load(
    *, events: int, workers: int = 2, kill_after: int | None = None, approve_extra: int = 5, timeout_s: float = 600
) -> LoadReport:
    token = secrets.token_urlsafe(24)
    prefix = f"overlay:load:{uuid.uuid4().hex[:8]}"
    python = sys.executable
    with throwaway_database() as database_url, tempfile.TemporaryDirectory(prefix="overlay-load-") as folder:
        data_dir = Path(folder)
        # A still market: this measures the workers, and approvals minutes later must not drift into re-proposals.
        sim_args = [
            *(python, "-m", "broker.sim", "--port", "0", "--symbols", "AAPL", "--position", "AAPL=100000@150"),
            *("--tick-interval", "0"),
        ]
        async with _process(sim_args, dict(os.environ), url_on="stdout") as (_, sim_url):
            names = [f"w{i + 1}" for i in range(workers)]
            async with _workers(names, database_url, sim_url, prefix, token, data_dir) as running:
                report = await _drive(running, database_url, prefix, events, kill_after, timeout_s)
                survivor_url = next(url for name, (process, url) in running.items() if process.poll() is None)
                await _approve(report, database_url, survivor_url, token, approve_extra)
            async with Client(sim_url, mode="legacy") as broker:
                live = (await broker.call_tool(ib.LIVE_ORDERS, {})).structured_content or {}
        refs = [o.get("order_ref") for o in live.get("orders", [])]
        report.orders_at_broker = len(refs)
        report.duplicate_orders = len(refs) - len(set(refs))
        await _delete_streams(prefix)
        return report


@asynccontextmanager
async def _workers(
    names: list[str], database_url: str, sim_url: str, prefix: str, token: str, data_dir: Path
) -> AsyncIterator[dict[str, tuple[subprocess.Popen[str], str]]]:
    running: dict[str, tuple[subprocess.Popen[str], str]] = {}
    async with anyio.create_task_group() as tasks:

        async def hold(name: str, ready: anyio.Event, done: anyio.Event) -> None:
            args = [sys.executable, "-m", "mcp_overlay_server", "serve", "--http", "--port", "0", "--no-poller"]
            env = _worker_env(name, database_url, sim_url, prefix, token, data_dir)
            async with _process(args, env, url_on="stderr") as started:
                running[name] = started
                ready.set()
                await done.wait()

        done = anyio.Event()
        for name in names:
            ready = anyio.Event()
            tasks.start_soon(hold, name, ready, done)
            await ready.wait()
        try:
            yield running
        finally:
            done.set()


async def _drive(
    running: dict[str, tuple[subprocess.Popen[str], str]],
    database_url: str,
    prefix: str,
    events: int,
    kill_after: int | None,
    timeout_s: float,
) -> LoadReport:
    bus = RedisStreamBus(REDIS_URL, stream_prefix=prefix)
    published: dict[str, float] = {}
    started = time.time()
    for index in range(events):
        event = TriggerEvent(trigger_name="load", symbol="AAPL", price=200.0 + index * 1e-3, condition="price > 200")
        published[event.event_id] = event.ts.timestamp()
        await bus.publish(event)
    await bus.aclose()
    killed: str | None = None
    with anyio.move_on_after(timeout_s):
        while (handled := await _count_runs(database_url)) < events:
            if kill_after is not None and killed is None and handled >= kill_after:
                killed = "w1"
                running[killed][0].send_signal(signal.SIGKILL)
            await anyio.sleep(0.25)
    elapsed_s = time.time() - started
    runs = await anyio.to_thread.run_sync(_runs, database_url)
    per_event: dict[str, int] = {}
    by_worker: dict[str, int] = {}
    latencies: list[float] = []
    stuck = 0
    for event_id, status, worker, _created, updated, _ in runs:
        per_event[event_id] = per_event.get(event_id, 0) + 1
        by_worker[worker] = by_worker.get(worker, 0) + 1
        stuck += status == "running"
        if event_id in published and status == "awaiting_approval":
            latencies.append((updated.timestamp() - published[event_id]) * 1000)
    return LoadReport(
        events=events,
        workers=len(running),
        killed_worker=killed,
        handled=sum(1 for e in published if e in per_event),
        duplicated=sum(count - 1 for count in per_event.values()),
        lost=sum(1 for e in published if e not in per_event),
        stuck=stuck,
        by_worker=by_worker,
        latency_ms_p50=_percentile(latencies, 50),
        latency_ms_p99=_percentile(latencies, 99),
        elapsed_s=elapsed_s,
    )


async def _approve(report: LoadReport, database_url: str, survivor_url: str, token: str, extra: int) -> None:
    def pending_by_worker() -> list[tuple[str, str]]:
        with psycopg.connect(database_url) as connection:
            return connection.execute(
                "SELECT a.approval_id, coalesce(r.worker, '') FROM approval a JOIN workflow_run r "
                "ON r.workflow_id = a.workflow_id WHERE a.status = 'pending' ORDER BY a.created_at"
            ).fetchall()

    pending = await anyio.to_thread.run_sync(pending_by_worker)
    of_killed = [a for a, w in pending if w == report.killed_worker]
    others = [a for a, w in pending if w != report.killed_worker][:extra]
    async with overlay_client(survivor_url, token) as client:
        loosened = await client.call_tool("set_risk_limits", {"limits": LOAD_TEST_LIMITS})
        if loosened.is_error:
            report.notes.append(f"set_risk_limits: {loosened.content[0].text if loosened.content else loosened}")
        for approval_id in of_killed + others:
            result = await client.call_tool("approve_trade", {"approval_id": approval_id, "decision": "approve"})
            if not result.is_error and (result.structured_content or {}).get("accepted"):
                report.approved += 1
                report.approved_of_killed_worker += approval_id in of_killed
            else:
                report.notes.append(f"{approval_id}: {result.content[0].text if result.content else result}")


async def _delete_streams(prefix: str) -> None:
    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load_workers", description=__doc__)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-after", type=int, default=None, help="SIGKILL worker w1 once this many runs exist")
    args = parser.parse_args()
    report = anyio.run(lambda: run_load(events=args.events, workers=args.workers, kill_after=args.kill_after))
    for line in report.lines():
        print(line)
    for note in report.notes[:10]:
        print("note:", note)


if __name__ == "__main__":
    main()
