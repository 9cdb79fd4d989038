"""Two worker processes on Redis Streams and PostgreSQL, 1,000 trigger events, one worker killed mid-way:
every event handled once, no order placed twice, the killed worker's proposals approvable on the other."""

from __future__ import annotations

import pytest

from benchmarks.load_workers import run_load

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]


async def test_thousand_events_two_workers_one_killed() -> None:
    report = await run_load(events=1000, workers=2, kill_after=300, approve_extra=5)
    print("\n".join(report.lines()))
    assert report.killed_worker == "w1"
    assert (report.handled, report.duplicated, report.lost, report.stuck) == (1000, 0, 0, 0)
    assert report.by_worker.get("w1", 0) > 0 and report.by_worker.get("w2", 0) > 0
    assert report.approved_of_killed_worker == report.by_worker["w1"], report.notes[:3]
    assert report.approved == report.by_worker["w1"] + 5
    assert report.orders_at_broker == report.approved
    assert report.duplicate_orders == 0
