"""Audit entries written in the same transaction as the store write they accompany, on SQLite and on a real
PostgreSQL: the chain stays one intact chain whatever interleaves with them, the row and its entry commit
together or not at all, and an entry is written once however often the write is repeated."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from workflows.audit import AuditLog
from workflows.store import Approval, WorkflowRun, WorkflowStore, make_engine
from workflows.times import utc_now

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'workflows.db'}"


@pytest.fixture
async def store_and_log(database_url: str) -> AsyncIterator[tuple[WorkflowStore, AuditLog]]:
    engine = make_engine(database_url)
    store, log = WorkflowStore(engine), AuditLog(engine)
    await store.init()
    await log.init()
    yield store, log
    await store.close()


def approval(approval_id: str, workflow_id: str = "wf-1", proposal_json: Any = "{}") -> Approval:
    return Approval(
        approval_id=approval_id,
        workflow_id=workflow_id,
        proposal_json=proposal_json,
        expires_at=utc_now() + timedelta(minutes=5),
    )


async def entries(log: AuditLog) -> list[dict[str, Any]]:
    async with log.engine.connect() as conn:
        result = await conn.execute(text("SELECT event, payload FROM audit_log ORDER BY id"))
        return [{"event": row.event, **json.loads(row.payload)} for row in result]


async def test_an_approval_its_entry_and_its_run_status_commit_together(
    store_and_log: tuple[WorkflowStore, AuditLog],
) -> None:
    store, log = store_and_log
    await store.create_run(WorkflowRun(workflow_id="wf-1", workflow="price_alert"))
    stored, created = await store.add_approval(
        approval("wf-1-a1"),
        run_status="awaiting_approval",
        audit=log.record("approval_requested", workflow_id="wf-1", approval_id="wf-1-a1"),
    )
    assert created and stored.approval_id == "wf-1-a1"
    run = await store.get_run("wf-1")
    assert run is not None and run.status == "awaiting_approval"
    assert await entries(log) == [{"event": "approval_requested", "approval_id": "wf-1-a1"}]

    again, created_again = await store.add_approval(
        approval("wf-1-a1"),
        run_status="awaiting_approval",
        audit=log.record("approval_requested", workflow_id="wf-1", approval_id="wf-1-a1"),
    )
    assert not created_again and again.approval_id == "wf-1-a1"
    assert len(await entries(log)) == 1
    assert (await log.verify()).ok


async def test_a_run_and_its_start_entry_commit_together_once_per_event(
    store_and_log: tuple[WorkflowStore, AuditLog],
) -> None:
    store, log = store_and_log
    for attempt in ("wf-1", "wf-2"):  # the second run is for the same trigger event: not created
        run, created = await store.create_run(
            WorkflowRun(workflow_id=attempt, workflow="price_alert", trigger_event_id="event-1"),
            audit=log.record("workflow_started", workflow_id=attempt),
        )
        assert run.workflow_id == "wf-1" and created == (attempt == "wf-1")
    assert await entries(log) == [{"event": "workflow_started"}]
    assert (await log.verify()).ok


async def test_a_write_that_fails_leaves_neither_row_nor_entry(store_and_log: tuple[WorkflowStore, AuditLog]) -> None:
    store, log = store_and_log
    await store.create_run(WorkflowRun(workflow_id="wf-1", workflow="price_alert"))
    await log.append("before")
    with pytest.raises(IntegrityError):
        await store.add_approval(
            # NOT NULL: the INSERT fails at commit, after the run's status and the entry were written
            approval("wf-1-a1", proposal_json=None),
            run_status="awaiting_approval",
            audit=log.record("approval_requested", approval_id="wf-1-a1"),
        )
    assert await store.get_approval("wf-1-a1") is None
    run = await store.get_run("wf-1")
    assert run is not None and run.status == "running"
    assert [e["event"] for e in await entries(log)] == ["before"]
    await log.append("after")
    result = await log.verify()
    assert (result.ok, result.checked) == (True, 2)


async def test_shared_transactions_and_plain_appends_interleave_into_one_chain(
    store_and_log: tuple[WorkflowStore, AuditLog],
) -> None:
    store, log = store_and_log

    async def propose(i: int) -> None:
        await store.add_approval(
            approval(f"wf-{i}-a1", workflow_id=f"wf-{i}"),
            audit=log.record("approval_requested", workflow_id=f"wf-{i}", step=i),
        )

    async def note(i: int) -> None:
        await log.append("tick", step=i)

    async def batch(i: int) -> None:
        await log.write([log.record("risk_check", step=i), log.record("analysis", step=i)])

    await asyncio.gather(*(job(i) for i in range(15) for job in (propose, note, batch)))
    result = await log.verify()
    assert (result.ok, result.checked) == (True, 15 * 4)
    written = await entries(log)
    assert sorted(e["step"] for e in written if e["event"] == "approval_requested") == list(range(15))
    # A batch's two entries are written one after the other, in the order given.
    for position, entry in enumerate(written):
        if entry["event"] == "risk_check":
            assert written[position + 1] == {"event": "analysis", "step": entry["step"]}
    assert len(await store.pending_approvals()) == 15


async def test_an_audit_log_on_another_database_still_gets_the_entry_once(tmp_path: Path) -> None:
    store = WorkflowStore(make_engine(f"sqlite:///{tmp_path / 'workflows.db'}"))
    log = AuditLog(make_engine(f"sqlite:///{tmp_path / 'audit.db'}"))
    await store.init()
    await log.init()
    try:
        assert not log.shares_database(store.workflow_engine)
        for _ in range(2):
            await store.add_approval(approval("wf-1-a1"), audit=log.record("approval_requested", n=1))
        assert await entries(log) == [{"event": "approval_requested", "n": 1}]
        assert (await log.verify()).ok
    finally:
        await store.close()
        await log.engine.dispose()
