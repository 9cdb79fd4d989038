"""Workflow overhead: a price_alert trigger event to a pending proposal, against a bare LangGraph graph.

Overlay: `WorkflowRunner.handle_event` with a fresh `AAPL price > 200` event, the offline analyst, the
simulated IB_MCP in-process, SQLite files in a temp dir; it runs gather -> analyse -> check_risk -> propose ->
await_approval (interrupt). Baseline: a bare StateGraph with the same number of nodes (the last one calls
`interrupt()`), the same checkpointer (AsyncSqliteSaver on a file, durability "sync") and the same number of
MCP round-trips (the overlay's IB_MCP calls per run, counted) to a bare `echo` server in-process.

    python -m benchmarks.workflow [--runs 40]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Awaitable, Callable
from itertools import pairwise
from pathlib import Path
from typing import Any, TypedDict

import anyio
from mcp import Client

from benchmarks.bare_server import build_bare_server
from benchmarks.figures import Figure, p50_p99, print_figures
from benchmarks.harness import open_sim_overlay
from poller.events import TriggerEvent

NODES_TO_PROPOSAL = ("gather", "analyse", "check_risk", "propose", "await_approval")
WORKFLOW_TARGET_RATIO = 1.5
WARMUP_RUNS = 3


def aapl_event() -> TriggerEvent:
    return TriggerEvent(trigger_name="AAPL price alert", symbol="AAPL", price=200.35, condition="price > 200")


def _counting(call: Callable[..., Awaitable[Any]], counter: list[int]) -> Callable[..., Awaitable[Any]]:
    async def counted(*args: Any, **kwargs: Any) -> Any:
        counter[0] += 1
        return await call(*args, **kwargs)

    return counted


class SaverTimer:
    """Wall time spent in a checkpointer's writes (`aput`, `aput_writes`): the part of a run LangGraph's
    durability costs, the same kind of work in the overlay and in the baseline."""

    def __init__(self, saver: Any) -> None:
        self.seconds = 0.0
        self.writes = 0
        for name in ("aput", "aput_writes"):
            setattr(saver, name, self._timed(getattr(saver, name)))

    def _timed(self, write: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await write(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.writes += 1

        return timed

    def reset(self) -> None:
        self.seconds = 0.0
        self.writes = 0


async def measure_overlay(runs: int, data_dir: Path) -> tuple[list[float], int, dict[str, int], SaverTimer]:
    """Event -> proposal times (ms), IB_MCP calls per run, how the runs ended (status -> count), and the time
    spent in the checkpointer."""
    broker_calls = [0]
    statuses: dict[str, int] = {}
    async with open_sim_overlay(data_dir) as (overlay, _):
        overlay.broker.call = _counting(overlay.broker.call, broker_calls)  # type: ignore[method-assign]
        saver = SaverTimer(overlay.retention.saver)
        for _ in range(WARMUP_RUNS):
            await overlay.runner.handle_event(aapl_event())
        broker_calls[0] = 0
        saver.reset()
        samples: list[float] = []
        for _ in range(runs):
            started = time.perf_counter()
            view = await overlay.runner.handle_event(aapl_event())
            samples.append((time.perf_counter() - started) * 1000)
            status = view.status if view else "none"
            statuses[status] = statuses.get(status, 0) + 1
    return samples, round(broker_calls[0] / runs), statuses, saver


class BareState(TypedDict, total=False):
    step: int
    answer: str


async def measure_baseline(runs: int, data_dir: Path, round_trips: int) -> tuple[list[float], SaverTimer]:
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import interrupt

    async with (
        Client(build_bare_server()) as client,
        AsyncSqliteSaver.from_conn_string(str(data_dir / "bare-checkpoints.db")) as saver,
    ):
        await saver.setup()

        async def first(state: BareState) -> BareState:
            for _ in range(round_trips):
                await client.call_tool("echo", {"text": "ping"})
            return {"step": 1}

        async def middle(state: BareState) -> BareState:
            return {"step": state.get("step", 0) + 1}

        async def last(state: BareState) -> BareState:
            return {"answer": str(interrupt({"step": state.get("step")}))}

        graph = StateGraph(BareState)
        names = list(NODES_TO_PROPOSAL)
        graph.add_node(names[0], first)
        for name in names[1:-1]:
            graph.add_node(name, middle)
        graph.add_node(names[-1], last)
        graph.add_edge(START, names[0])
        for before, after in pairwise(names):
            graph.add_edge(before, after)
        graph.add_edge(names[-1], END)
        compiled = graph.compile(checkpointer=saver)
        timer = SaverTimer(saver)

        samples: list[float] = []
        for index in range(WARMUP_RUNS + runs):
            if index == WARMUP_RUNS:
                timer.reset()
            config = {"configurable": {"thread_id": f"bare-{index}"}}
            started = time.perf_counter()
            await compiled.ainvoke({"step": 0}, config, durability="sync")
            if index >= WARMUP_RUNS:
                samples.append((time.perf_counter() - started) * 1000)
    return samples, timer


async def run(runs: int = 40) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="bench-workflow-") as data_dir:
        overlay_ms, round_trips, statuses, overlay_saver = await measure_overlay(runs, Path(data_dir))
        baseline_ms, baseline_saver = await measure_baseline(runs, Path(data_dir), round_trips)
    p50, p99 = p50_p99(overlay_ms)
    base_p50, base_p99 = p50_p99(baseline_ms)
    ended = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    return [
        Figure(
            "price_alert event → proposal p50",
            "ms",
            p50,
            base_p50,
            "ratio",
            WORKFLOW_TARGET_RATIO,
            f"{runs} runs ({ended}); {len(NODES_TO_PROPOSAL)} nodes, {round_trips} IB_MCP calls per run; baseline: "
            f"bare {len(NODES_TO_PROPOSAL)}-node graph, AsyncSqliteSaver, {round_trips} bare MCP round-trips",
        ),
        Figure("price_alert event → proposal p99", "ms", p99, base_p99),
        Figure(
            "checkpointer writes per run (mean)",
            "ms",
            overlay_saver.seconds * 1000 / runs,
            baseline_saver.seconds * 1000 / runs,
            note=f"aput + aput_writes: {overlay_saver.writes / runs:g} per run in both; the overlay's state is larger",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    print_figures("workflow (baseline: bare LangGraph graph)", anyio.run(run, args.runs))


if __name__ == "__main__":
    main()
