"""One proposal can never become two orders: lost broker answers, crashes between "sent" and "recorded",
concurrent approvals from two workers, and random fault sequences (hypothesis)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import ib_mcp_tools as ib
from broker.client import BrokerClient
from broker.errors import BrokerError
from broker.models import BracketTicket, OrderTicket
from broker.sim.market import MarketSimulator
from broker.sim.server import build_sim_server
from mcp_overlay_server.app import Overlay, open_overlay
from poller.events import TriggerEvent
from tests.test_walking_skeleton import POLLER, fire_aapl_trigger, make_market, settings_for
from workflows.execution import place_bracket_once, place_once, reconcile_ledger
from workflows.run_types import DecisionResult, WorkflowError
from workflows.store import WorkflowRun, WorkflowStore, make_engine

pytestmark = pytest.mark.anyio


class SimulatedCrash(BaseException):
    """Stands in for kill -9: nothing after it runs, nothing catches it."""


@pytest.fixture
def market() -> MarketSimulator:
    return make_market()


def open_worker(tmp_path: Path, market: MarketSimulator) -> Any:
    return open_overlay(settings_for(tmp_path), poller_config=POLLER, target=build_sim_server(market), run_poller=False)


@pytest.fixture
async def overlay(tmp_path: Path, market: MarketSimulator) -> AsyncIterator[Overlay]:
    async with open_worker(tmp_path, market) as opened:
        yield opened


async def pending_approval_id(overlay: Overlay) -> str:
    with anyio.fail_after(10):
        while True:
            pending = await overlay.runner.pending()
            if pending:
                return pending[0].approval_id
            await anyio.sleep(0.02)


async def test_broker_accepts_but_its_answer_is_lost(overlay: Overlay, market: MarketSimulator) -> None:
    await fire_aapl_trigger(overlay, market)
    approval_id = await pending_approval_id(overlay)
    market.faults.lose_next_order_answer()

    result = await overlay.runner.decide(approval_id, "approve")

    assert result.accepted and result.run is not None and result.run.status == "completed"
    assert len(market.orders) == 1
    [record] = await overlay.store.orders()
    assert record.status == "filled" and record.broker_order_id == str(market.orders[0].order_id)


async def test_broker_refusing_the_order_places_none_and_says_why(overlay: Overlay, market: MarketSimulator) -> None:
    await fire_aapl_trigger(overlay, market)
    approval_id = await pending_approval_id(overlay)
    market.faults.fail_next(ib.PLACE_ORDER, status_code=503)

    with pytest.raises(Exception, match="503"):
        await overlay.runner.decide(approval_id, "approve")

    assert market.orders == []
    [record] = await overlay.store.orders()
    assert record.status == "failed" and "503" in (record.error or "")
    assert (await overlay.runner.status(record.workflow_id)).status == "failed"


async def test_a_crash_between_sent_and_recorded_is_reconciled_at_restart(
    tmp_path: Path, market: MarketSimulator
) -> None:
    with pytest.RaisesGroup(SimulatedCrash, flatten_subgroups=True):
        async with open_worker(tmp_path, market) as first:
            await fire_aapl_trigger(first, market)
            approval_id = await pending_approval_id(first)
            record_order = first.store.update_order

            async def crash_once_sent(client_order_id: str, **changes: Any) -> None:
                if changes.get("status") == "submitted":
                    raise SimulatedCrash
                await record_order(client_order_id, **changes)

            first.store.update_order = crash_once_sent  # type: ignore[method-assign]
            await first.runner.decide(approval_id, "approve")
            await anyio.sleep_forever()
    assert len(market.orders) == 1
    store = WorkflowStore(make_engine(settings_for(tmp_path).workflows_db_url))
    [stuck] = await store.orders()
    await store.close()
    assert stuck.status == "sent"

    async with open_worker(tmp_path, market) as second:
        [record] = await second.store.orders()
        run = await second.runner.status(record.workflow_id)

    assert record.status == "filled" and record.broker_order_id == str(market.orders[0].order_id)
    assert run.status == "completed"
    assert len(market.orders) == 1


async def approve_at_once(workers: list[Overlay], approval_id: str) -> list[DecisionResult]:
    """Every worker approves the same proposal concurrently."""
    results: list[DecisionResult] = []

    async def approve(worker: Overlay) -> None:
        results.append(await worker.runner.decide(approval_id, "approve"))

    async with anyio.create_task_group() as tasks:
        for worker in workers:
            tasks.start_soon(approve, worker)
    return results


async def test_two_workers_approving_at_once_place_one_order(tmp_path: Path, market: MarketSimulator) -> None:
    async with open_worker(tmp_path, market) as one, open_worker(tmp_path, market) as two:
        await fire_aapl_trigger(one, market)
        results = await approve_at_once([one, two], await pending_approval_id(one))

    assert sorted(r.accepted for r in results) == [False, True]
    assert len(market.orders) == 1


async def test_an_approval_survives_a_restart(tmp_path: Path, market: MarketSimulator) -> None:
    async with open_worker(tmp_path, market) as first:
        await fire_aapl_trigger(first, market)
        approval_id = await pending_approval_id(first)
    async with open_worker(tmp_path, market) as second:
        result = await second.runner.decide(approval_id, "approve")
    assert result.accepted and result.run is not None and result.run.status == "completed"
    assert len(market.orders) == 1


OPERATIONS = st.lists(
    st.tuples(st.sampled_from(["place", "lose_answer", "refuse", "reconcile"]), st.integers(0, 3)), max_size=25
)


async def _replay(operations: list[tuple[str, int]], data_dir: Path) -> None:
    market = MarketSimulator(["AAPL"], seed=1)
    store = WorkflowStore(make_engine(f"sqlite+aiosqlite:///{data_dir / 'wf.db'}"))
    await store.init()
    sent_while_live: list[str] = []
    async with BrokerClient(build_sim_server(market)) as broker:
        real_call = broker.call

        async def spying_call(tool: str, arguments: dict[str, Any] | None = None) -> Any:
            if tool == ib.PLACE_ORDER:
                coid = arguments["orders"][0]["cOID"] if arguments else ""
                if market.order_by_client_id(coid) is not None:
                    sent_while_live.append(coid)
            return await real_call(tool, arguments)

        broker.call = spying_call  # type: ignore[method-assign]
        account = (await broker.accounts())[0].account_id
        for operation, proposal in operations:
            ticket = OrderTicket(
                account_id=account, symbol="AAPL", side="BUY", quantity=1, client_order_id=f"ovl-p{proposal}"
            )
            if operation == "lose_answer":
                market.faults.lose_next_order_answer()
            elif operation == "refuse":
                market.faults.fail_next(ib.PLACE_ORDER)
            elif operation == "reconcile":
                await reconcile_ledger(broker, store)
            else:
                with contextlib.suppress(BrokerError):
                    await place_once(broker, store, ticket, workflow_id="w", approval_id=f"p{proposal}")
        await reconcile_ledger(broker, store)
        ledger = {o.client_order_id: o for o in await store.orders(limit=100)}
    await store.close()

    by_coid: dict[str, int] = {}
    for order in market.orders:
        by_coid[order.client_order_id] = by_coid.get(order.client_order_id, 0) + 1
    assert all(count == 1 for count in by_coid.values()), by_coid
    assert sent_while_live == []
    for coid in by_coid:
        assert ledger[coid].status in ("submitted", "filled")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS)
def test_random_faults_never_make_two_orders_for_one_proposal(operations: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        anyio.run(_replay, operations, Path(folder))


async def test_an_unexpected_confirmation_question_stops_the_order(tmp_path: Path) -> None:
    market = make_market()
    market.order_questions = {"MKT": ("o383",)}
    async with open_worker(tmp_path, market) as overlay:
        await fire_aapl_trigger(overlay, market)
        approval_id = await pending_approval_id(overlay)
        with pytest.raises(WorkflowError, match="o383"):
            await overlay.runner.decide(approval_id, "approve")
        [record] = await overlay.store.orders()
    assert market.orders == []
    assert record.status == "failed" and "NOT placed" in (record.error or "")


async def test_an_expired_approval_does_nothing_and_says_so(tmp_path: Path, market: MarketSimulator) -> None:
    async with open_overlay(
        settings_for(tmp_path, approval_ttl_s=0.2),
        poller_config=POLLER,
        target=build_sim_server(market),
        run_poller=False,
    ) as overlay:
        await fire_aapl_trigger(overlay, market)
        approval_id = await pending_approval_id(overlay)
        await anyio.sleep(0.3)
        result = await overlay.runner.decide(approval_id, "approve")
        again = await overlay.runner.decide(approval_id, "approve")
    assert not result.accepted and "expired" in result.message
    assert not again.accepted and "already expired" in again.message
    assert result.run is not None and result.run.status == "rejected"
    assert market.orders == []


async def test_a_price_that_moved_too_far_is_re_proposed_not_executed(
    overlay: Overlay, market: MarketSimulator
) -> None:
    await fire_aapl_trigger(overlay, market)
    first = await pending_approval_id(overlay)
    market.set_price("AAPL", "205.00")

    result = await overlay.runner.decide(first, "approve")

    assert not result.accepted and "re-proposing" in result.message
    second = await pending_approval_id(overlay)
    assert second != first and second.endswith("-a2")
    [proposal] = await overlay.runner.pending()
    assert proposal.reference_price > 204
    assert market.orders == []
    assert (await overlay.runner.decide(second, "approve")).accepted
    assert len(market.orders) == 1


async def test_a_proposal_under_the_auto_approve_threshold_fills_without_asking(tmp_path: Path) -> None:
    market = make_market()
    settings = settings_for(tmp_path, auto_approve_under_usd={"price_alert": 6000})
    async with open_overlay(
        settings, poller_config=POLLER, target=build_sim_server(market), run_poller=False
    ) as overlay:
        run = await overlay.runner.start("price_alert", event=aapl_alert())
        approval = await overlay.store.get_approval(f"{run.workflow_id}-a1")
    assert run.status == "completed" and "filled" in run.summary
    assert approval is not None and approval.status == "approved" and "auto-approved" in (approval.decision_note or "")
    assert len(market.orders) == 1


async def test_a_proposal_over_the_auto_approve_threshold_still_waits(tmp_path: Path) -> None:
    market = make_market()
    settings = settings_for(tmp_path, auto_approve_under_usd={"price_alert": 100})
    async with open_overlay(
        settings, poller_config=POLLER, target=build_sim_server(market), run_poller=False
    ) as overlay:
        run = await overlay.runner.start("price_alert", event=aapl_alert())
    assert run.status == "awaiting_approval"
    assert market.orders == []


def aapl_alert() -> TriggerEvent:
    return TriggerEvent(trigger_name="AAPL price alert", symbol="AAPL", price=200.4, condition="price > 200")


async def test_a_redelivered_event_whose_worker_died_before_the_first_step_is_run(
    overlay: Overlay, market: MarketSimulator
) -> None:
    event = aapl_alert()
    await overlay.store.create_run(
        WorkflowRun(
            workflow_id="price_alert-orphan", workflow="price_alert", symbol="AAPL", trigger_event_id=event.event_id
        )
    )
    run = await overlay.runner.handle_event(event, redelivered=True)
    assert run is not None and run.workflow_id == "price_alert-orphan"
    assert run.status == "awaiting_approval" and run.pending_approval_id == "price_alert-orphan-a1"


# --- brackets: one request, three orders, claimed together ------------------------------------------------

BRACKET_OPERATIONS = st.lists(
    st.tuples(st.sampled_from(["bracket", "lose_answer", "refuse", "reconcile", "move"]), st.integers(0, 2)),
    max_size=25,
)


async def _replay_brackets(operations: list[tuple[str, int]], data_dir: Path) -> None:
    market = MarketSimulator(["AAPL"], seed=1)
    store = WorkflowStore(make_engine(f"sqlite+aiosqlite:///{data_dir / 'wf.db'}"))
    await store.init()
    requests: list[list[str]] = []
    sent_while_live: list[str] = []
    async with BrokerClient(build_sim_server(market)) as broker:
        real_call = broker.call

        async def spying_call(tool: str, arguments: dict[str, Any] | None = None) -> Any:
            if tool == ib.PLACE_ORDER and arguments:
                coids = [order["cOID"] for order in arguments["orders"]]
                requests.append(coids)
                sent_while_live.extend(c for c in coids if market.order_by_client_id(c) is not None)
            return await real_call(tool, arguments)

        broker.call = spying_call  # type: ignore[method-assign]
        account = (await broker.accounts())[0].account_id
        for operation, proposal in operations:
            if operation == "lose_answer":
                market.faults.lose_next_order_answer()
            elif operation == "refuse":
                market.faults.fail_next(ib.PLACE_ORDER)
            elif operation == "reconcile":
                await reconcile_ledger(broker, store)
            elif operation == "move":
                market.set_price("AAPL", market.quote("AAPL").last * (Decimal("0.97") + proposal * Decimal("0.03")))
            else:
                entry = OrderTicket(
                    account_id=account, symbol="AAPL", side="BUY", quantity=1, client_order_id=f"ovl-b{proposal}"
                )
                last = float(market.quote("AAPL").last)
                bracket = BracketTicket(
                    entry=entry, stop_price=round(last * 0.98, 2), target_price=round(last * 1.02, 2)
                )
                with contextlib.suppress(BrokerError):
                    await place_bracket_once(broker, store, bracket, workflow_id="w", approval_id=f"b{proposal}")
        await reconcile_ledger(broker, store)
        ledger = {o.client_order_id: o for o in await store.orders(limit=100)}
    await store.close()

    at_broker = [order.client_order_id for order in market.orders]
    assert len(at_broker) == len(set(at_broker)), at_broker
    assert sent_while_live == []
    assert all(len(coids) == 3 for coids in requests)
    for proposal in range(3):
        coid = f"ovl-b{proposal}"
        held = [c for c in (coid, f"{coid}-stop", f"{coid}-target") if c in at_broker]
        assert held in ([], [coid, f"{coid}-stop", f"{coid}-target"]), held
    for order in market.orders:
        row = ledger[str(order.client_order_id)]
        assert row.broker_order_id == str(order.order_id)
        assert row.status == {"Filled": "filled", "Cancelled": "cancelled"}.get(order.status, "submitted")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=BRACKET_OPERATIONS)
def test_random_faults_never_make_two_brackets_for_one_proposal(operations: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        anyio.run(_replay_brackets, operations, Path(folder))
