"""The benchmarks still run: each one's core with tiny sizes. No timing is asserted, only that every figure
comes out with a finite number and the counts the benchmarks rely on are right."""

from __future__ import annotations

import math

import pytest

from benchmarks import bus, footprint, poller, tool_calls, workflow
from benchmarks.__main__ import END_MARKER, START_MARKER, results_block
from benchmarks.figures import Figure, percentile, summary_table

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def assert_figures(figures: list[Figure]) -> None:
    assert figures
    for figure in figures:
        assert math.isfinite(figure.overlay), figure
        assert figure.baseline is None or math.isfinite(figure.baseline), figure
    assert summary_table(figures).count("\n") == len(figures) + 1


def test_percentile_is_nearest_rank() -> None:
    samples = [float(v) for v in range(1, 101)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile([3.0], 99) == 3.0


def test_figure_verdicts() -> None:
    assert Figure("r", "ms", 1.2, 1.0, "ratio", 1.3).verdict == "pass"
    assert Figure("r", "ms", 1.4, 1.0, "ratio", 1.3).verdict == "MISS"
    assert Figure("a", "MB", 151.0, None, "absolute", 150.0).verdict == "MISS"
    assert Figure("i", "ms", 1.0, 2.0).verdict == "info"


def test_results_block_is_delimited() -> None:
    block = results_block([Figure("x", "ms", 1.0, 2.0)], "python -m benchmarks", {"poller": 1.0})
    assert block.startswith(START_MARKER) and block.endswith(END_MARKER)
    assert "| x | ms |" in block


async def test_tool_calls_in_memory_and_over_http() -> None:
    figures = await tool_calls.run(repeats=3, transports=("memory", "http"))
    assert_figures(figures)
    assert {f.name for f in figures} >= {"get_context p50 (memory)", "list_pending_approvals p50 (http)"}


async def test_workflow_counts_broker_calls() -> None:
    figures = await workflow.run(runs=2)
    assert_figures(figures)
    assert "awaiting_approval" in figures[0].note


async def test_poller_makes_one_snapshot_call_per_cycle() -> None:
    figures = await poller.run(symbols=5, batches=3, poll_symbols=4, cycles=2, prices=500)
    assert_figures(figures)
    snapshot = next(f for f in figures if f.name.startswith("snapshot calls per poll cycle"))
    assert snapshot.overlay == 1.0


@pytest.mark.redis
async def test_bus_round_trips_through_redis() -> None:
    assert_figures(await bus.run(events=20, latency_events=3))


@pytest.mark.slow
async def test_footprint_cold_start_and_rss() -> None:
    figures = await footprint.run(starts=1, duration_s=1.0, symbols=5, settle_s=0.0, bare_settle_s=0.5)
    assert_figures(figures)
    assert next(f for f in figures if f.name.startswith("embedded demo RSS")).overlay > 0
