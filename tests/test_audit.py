"""The hash-chained audit log on SQLite and on a real PostgreSQL: concurrent appends stay one chain, and
editing or deleting any row is named by verify()."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from workflows.audit import GENESIS_HASH, AuditLog, entry_hash, verify_entries

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _sqlite_engine(tmp_path: Path) -> AsyncEngine:
    return create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}")


async def _postgres_engine() -> AsyncEngine:
    engine = create_async_engine(POSTGRES_URL)
    await AuditLog(engine).init()
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE audit_log RESTART IDENTITY"))
    return engine


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A fresh, empty audit table. PostgreSQL being down fails the test: it is not skipped."""
    db = await (_postgres_engine() if request.param == "postgres" else _sqlite_engine(tmp_path))
    yield db
    await db.dispose()


@pytest.fixture
async def log(engine: AsyncEngine) -> AuditLog:
    audit = AuditLog(engine)
    await audit.init()
    return audit


async def _append_rows(log: AuditLog, count: int, **fields: Any) -> None:
    for i in range(count):
        await log.append("order_placed", workflow="price_alert", symbol="AAPL", quantity=i + 1, price=101.5, **fields)


async def _rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(text("SELECT * FROM audit_log ORDER BY id"))
        return [dict(row) for row in result.mappings()]


async def test_concurrent_appends_form_one_chain(log: AuditLog, engine: AsyncEngine) -> None:
    await asyncio.gather(*(log.append("tick", workflow_id=f"wf-{i % 7}", quantity=i, step=i) for i in range(100)))
    result = await log.verify()
    assert (result.ok, result.checked, result.first_bad_id) == (True, 100, None)
    rows = await _rows(engine)
    assert [row["id"] for row in rows] == list(range(1, 101))
    assert rows[0]["prev_hash"] == GENESIS_HASH
    assert len({row["prev_hash"] for row in rows}) == 100


@pytest.mark.postgres
async def test_writers_on_two_engines_share_one_chain_on_postgres() -> None:
    """Two AuditLogs over two engines have two asyncio locks: only the advisory lock keeps them in line."""
    first, second = await _postgres_engine(), create_async_engine(POSTGRES_URL)
    try:
        writers = [AuditLog(first), AuditLog(second)]
        await asyncio.gather(*(writers[i % 2].append("tick", quantity=i) for i in range(100)))
        result = await writers[0].verify()
        assert (result.ok, result.checked) == (True, 100)
        assert len({row["prev_hash"] for row in await _rows(first)}) == 100
    finally:
        await first.dispose()
        await second.dispose()


async def test_the_database_refuses_a_fork(log: AuditLog, engine: AsyncEngine) -> None:
    first = await log.append("tick")
    fork = "INSERT INTO audit_log (ts, service, event, payload, prev_hash, hash) VALUES ('t', 's', 'e', '{}', :p, :h)"
    async with engine.begin() as conn:
        with pytest.raises(IntegrityError):
            await conn.execute(text(fork), {"p": first.prev_hash, "h": "a" * 64})


async def test_an_empty_log_verifies(log: AuditLog) -> None:
    assert await log.verify() == verify_entries([])
    assert (await log.verify()).ok


@pytest.mark.parametrize(
    "assignment",
    ["quantity = 999", "price = 0.01", "symbol = 'TSLA'", "payload = '{}'", "ts = '2020-01-01T00:00:00+00:00'"],
)
async def test_editing_a_row_is_named(log: AuditLog, engine: AsyncEngine, assignment: str) -> None:
    await _append_rows(log, 10, reason="breakout")
    async with engine.begin() as conn:
        await conn.execute(text(f"UPDATE audit_log SET {assignment} WHERE id = 4"))
    result = await log.verify()
    assert (result.ok, result.checked, result.first_bad_id) == (False, 3, 4)
    assert result.reason == "row 4: its content does not match its hash: it was edited after it was written"


async def test_rewriting_a_row_and_its_hash_breaks_the_next_link(log: AuditLog, engine: AsyncEngine) -> None:
    await _append_rows(log, 5)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE audit_log SET hash = :fake WHERE id = 2"), {"fake": "f" * 64})
    assert (await log.verify()).first_bad_id == 2
    rows = await _rows(engine)
    forged = rows[1] | {"quantity": 999.0}
    forged["hash"] = entry_hash(forged)
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE audit_log SET quantity = 999, hash = :hash WHERE id = 2"), {"hash": forged["hash"]}
        )
    result = await log.verify()
    assert (result.ok, result.first_bad_id) == (False, 3)


async def test_deleting_a_middle_row_is_named(log: AuditLog, engine: AsyncEngine) -> None:
    await _append_rows(log, 10)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_log WHERE id = 5"))
    result = await log.verify()
    assert (result.ok, result.checked, result.first_bad_id) == (False, 4, 6)
    assert result.reason == (
        "row 6: prev_hash does not match row 4: a row before it was deleted, inserted or rewritten"
    )


async def test_deleting_the_first_row_is_named(log: AuditLog, engine: AsyncEngine) -> None:
    await _append_rows(log, 3)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_log WHERE id = 1"))
    result = await log.verify()
    assert (result.ok, result.first_bad_id) == (False, 2)
    assert "the genesis hash" in result.reason


async def test_export_jsonl_round_trips_and_verifies_offline(
    log: AuditLog, engine: AsyncEngine, tmp_path: Path
) -> None:
    await _append_rows(log, 12, claude_reasoning="RSI 28 — oversold, café", extra={"nested": [1, 2.5]})
    path = tmp_path / "audit.jsonl"
    assert await log.export_jsonl(path) == 12
    stream = io.StringIO()
    assert await log.export_jsonl(stream) == 12
    assert stream.getvalue() == path.read_text(encoding="utf-8")

    exported = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert exported == await _rows(engine)
    assert json.loads(exported[0]["payload"]) == {"extra": {"nested": [1, 2.5]}}
    assert verify_entries(exported).ok
    exported[7]["claude_reasoning"] = "edited"
    assert verify_entries(exported).first_bad_id == 8


async def test_tail_gives_the_seed_log_shape_oldest_first(log: AuditLog) -> None:
    await log.append("workflow_started", workflow="price_alert", workflow_id="wf-1", symbol="AAPL")
    await log.append("workflow_started", workflow="price_alert", workflow_id="wf-2", symbol="MSFT")
    await log.append(
        "order_placed",
        workflow="price_alert",
        workflow_id="wf-1",
        symbol="AAPL",
        action="BUY",
        quantity=10,
        price=187.25,
        order_id="1234",
        claude_reasoning="breakout above resistance",
        client_order_id="ovl-abc",
    )
    records = await log.tail(5, workflow_id="wf-1")
    assert [r["event"] for r in records] == ["workflow_started", "order_placed"]
    placed = records[-1]
    assert {
        key: placed[key]
        for key in (
            "service",
            "workflow",
            "event",
            "symbol",
            "action",
            "quantity",
            "price",
            "order_id",
            "claude_reasoning",
        )
    } == {
        "service": "overlay",
        "workflow": "price_alert",
        "event": "order_placed",
        "symbol": "AAPL",
        "action": "BUY",
        "quantity": 10.0,
        "price": 187.25,
        "order_id": "1234",
        "claude_reasoning": "breakout above resistance",
    }
    assert placed["timestamp"].endswith("+00:00")
    assert placed["payload"] == {"client_order_id": "ovl-abc"}
    assert [r["symbol"] for r in await log.tail(2)] == ["MSFT", "AAPL"]


async def test_non_finite_numbers_are_refused(log: AuditLog) -> None:
    with pytest.raises(ValueError, match="audit price must be a finite number"):
        await log.append("tick", price=float("nan"))
    assert (await log.verify()).checked == 0
