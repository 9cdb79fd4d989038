"""Checkpoint retention: the LangGraph threads of runs that finished more than `keep` ago are deleted.

A run's checkpoints (the graph state after every step) are what lets a run waiting for approval, or cut
short by a restart, carry on. Once the run has finished nothing reads them again, yet they are most of what
the overlay writes to disk. The run rows, approvals, the order ledger and the audit log are the record and
stay; only the threads go. A sweep runs a minute after start-up and then every hour; several workers
sharing one PostgreSQL may sweep at once (deleting a thread twice is harmless).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import anyio
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from workflows.checkpoint import checkpoint_threads, compact_checkpoints
from workflows.store import WorkflowRun, WorkflowStore
from workflows.times import utc_now

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver

log = logging.getLogger(__name__)

FINISHED_STATUSES = ("completed", "rejected", "denied", "failed", "cancelled")
SWEEP_INTERVAL_S = 3600.0
FIRST_SWEEP_AFTER_S = 60.0
IDS_PER_QUERY = 500


@dataclass(frozen=True)
class RetentionSweep:
    threads_kept: int
    threads_deleted: list[str]


async def finished_before(store: WorkflowStore, workflow_ids: Sequence[str], cutoff: datetime) -> list[str]:
    """Of `workflow_ids`, the runs that finished (a final status) and last changed before `cutoff`."""
    finished: list[str] = []
    async with AsyncSession(store.workflow_engine) as session:
        for start in range(0, len(workflow_ids), IDS_PER_QUERY):
            query = select(WorkflowRun.workflow_id).where(
                col(WorkflowRun.workflow_id).in_(workflow_ids[start : start + IDS_PER_QUERY]),
                col(WorkflowRun.status).in_(FINISHED_STATUSES),
                col(WorkflowRun.updated_at) < cutoff,
            )
            finished.extend((await session.exec(query)).all())
    return finished


class CheckpointRetention:
    """Deletes the checkpoints of runs finished more than `keep` ago, and keeps the SQLite files compact."""

    def __init__(
        self,
        saver: BaseCheckpointSaver,
        store: WorkflowStore,
        *,
        keep: timedelta,
        interval_s: float = SWEEP_INTERVAL_S,
        first_after_s: float = FIRST_SWEEP_AFTER_S,
    ) -> None:
        self.saver = saver
        self.store = store
        self.keep = keep
        self.interval_s = interval_s
        self.first_after_s = first_after_s

    async def sweep(self, now: datetime | None = None) -> RetentionSweep:
        cutoff = (now or utc_now()) - self.keep
        threads = await checkpoint_threads(self.saver)
        stale = await finished_before(self.store, threads, cutoff)
        for thread_id in stale:
            await self.saver.adelete_thread(thread_id)
        await compact_checkpoints(self.saver)
        return RetentionSweep(threads_kept=len(threads) - len(stale), threads_deleted=stale)

    async def run_forever(self) -> None:
        await anyio.sleep(self.first_after_s)
        while True:
            try:
                swept = await self.sweep()
                if swept.threads_deleted:
                    log.info(
                        "checkpoint retention: deleted %d finished run(s), %d kept",
                        len(swept.threads_deleted),
                        swept.threads_kept,
                    )
            except Exception:  # a database hiccup must not end retention for good; the next sweep retries
                log.exception("checkpoint retention sweep failed")
            await anyio.sleep(self.interval_s)
