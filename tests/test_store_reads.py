"""The store's repeated reads (pending approvals, the context's rows) are answered from the last result only
while nothing was committed to the SQLite file since, by any connection: another store, another engine, or
another process."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import anyio.to_thread
import pytest
from sqlalchemy import update
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from workflows.store import Approval, OrderRecord, WorkflowStore, make_engine
from workflows.times import utc_now

pytestmark = pytest.mark.anyio


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[WorkflowStore, WorkflowStore]]:
    """Two stores on one SQLite file, as two processes (or a tool and a worker) would have."""
    url = f"sqlite:///{tmp_path / 'workflows.db'}"
    reader, writer = WorkflowStore(make_engine(url)), WorkflowStore(make_engine(url))
    await reader.init()
    yield reader, writer
    await reader.close()
    await writer.close()


def approval(approval_id: str) -> Approval:
    return Approval(
        approval_id=approval_id,
        workflow_id="wf-1",
        proposal_json="{}",
        expires_at=utc_now() + timedelta(minutes=5),
    )


async def test_a_repeated_read_is_the_last_result_until_someone_commits(
    stores: tuple[WorkflowStore, WorkflowStore],
) -> None:
    reader, writer = stores
    await writer.add_approval(approval("a1"))
    first, _, _ = await reader.context_rows(5, 10)
    again, _, _ = await reader.context_rows(5, 10)
    assert [a.approval_id for a in first] == ["a1"]
    assert again[0] is first[0]  # the same object: no query was made

    await writer.add_approval(approval("a2"))
    assert [a.approval_id for a in await reader.pending_approvals()] == ["a1", "a2"]
    assert [a.approval_id for a in (await reader.context_rows(5, 10))[0]] == ["a1", "a2"]

    assert await writer.decide_approval("a1", "rejected")
    assert [a.approval_id for a in await reader.pending_approvals()] == ["a2"]


async def test_a_commit_through_the_async_engine_is_seen(stores: tuple[WorkflowStore, WorkflowStore]) -> None:
    reader, writer = stores
    await writer.claim_order(
        OrderRecord(
            client_order_id="ovl-a1",
            workflow_id="wf-1",
            account_id="DU1",
            symbol="AAPL",
            side="BUY",
            quantity=1,
            order_type="MKT",
        )
    )
    assert [o.status for o in (await reader.context_rows(5, 10))[2]] == ["intent"]
    async with AsyncSession(writer.workflow_engine) as session:  # as execution.py takes the send right
        await session.exec(
            update(OrderRecord).where(col(OrderRecord.client_order_id) == "ovl-a1").values(status="sent")
        )
        await session.commit()
    assert [o.status for o in (await reader.context_rows(5, 10))[2]] == ["sent"]


async def test_a_commit_by_another_process_is_seen(stores: tuple[WorkflowStore, WorkflowStore], tmp_path: Path) -> None:
    reader, _ = stores
    assert await reader.pending_approvals() == []

    def other_process_inserts() -> None:
        with sqlite3.connect(tmp_path / "workflows.db") as db:
            db.execute(
                "INSERT INTO approval (approval_id, workflow_id, status, proposal_json, created_at, expires_at) "
                "VALUES ('b1', 'wf-2', 'pending', '{}', '2026-01-01 00:00:00', '2099-01-01 00:00:00')"
            )

    await anyio.to_thread.run_sync(other_process_inserts)
    assert [a.approval_id for a in await reader.pending_approvals()] == ["b1"]
