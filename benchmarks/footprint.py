"""Footprint: cold start to the first `tools/list` over stdio, and the embedded demo's memory and disk.

- Cold start: spawn `python -m mcp_overlay_server serve --demo` (fresh OVERLAY_DATA_DIR) as an MCP stdio
  server, initialize and list its tools; against `python -m benchmarks.bare_server` (a bare `mcp` server).
  The median of `--starts` alternating starts each.
- RSS: `python -m benchmarks.embedded_demo` (simulated IB_MCP + overlay + poller + HTTP in one process)
  polling 50 symbols every second for `--duration-s` (default 60 s; `--duration-s 600` gives the issue's
  10-minute figure), VmRSS from /proc; against the bare server's idle RSS. Then the same again with the
  simulator in a process of its own (info: the overlay's own memory, as beside the real IB_MCP). Growth per
  day of RSS and of the SQLite files is extrapolated linearly from the slope over the second half of the run,
  and compared with the 2 GB container limit of the Raspberry Pi compose file.

    python -m benchmarks.footprint [--starts 3] [--duration-s 60] [--symbols 50]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from mcp import Client, StdioServerParameters

from benchmarks.figures import Figure, print_figures
from benchmarks.harness import PYTHON, REPO_ROOT, subprocess_env

COLD_START_TARGET_RATIO = 1.5
RSS_TARGET_MB = 150.0
CONTAINER_LIMIT_MB = 2048.0
SECONDS_PER_DAY = 86_400
SAMPLE_EVERY_S = 5.0
MB = 1024 * 1024


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def sqlite_files(data_dir: Path) -> dict[str, int]:
    """Size in bytes of every SQLite file (database, -wal, -shm) under `data_dir`, by relative path."""
    return {str(path.relative_to(data_dir)): path.stat().st_size for path in data_dir.rglob("*.db*") if path.is_file()}


def sqlite_bytes(data_dir: Path) -> int:
    return sum(sqlite_files(data_dir).values())


async def _time_to_tools_list(params: StdioServerParameters) -> float:
    started = time.perf_counter()
    async with Client(params) as client:
        tools = await client.list_tools()
        elapsed = time.perf_counter() - started
    if not tools.tools:
        raise RuntimeError(f"{params.args} listed no tools")
    return elapsed


async def measure_cold_start(starts: int) -> tuple[list[float], list[float]]:
    overlay_s: list[float] = []
    bare_s: list[float] = []
    for _ in range(starts):
        with tempfile.TemporaryDirectory(prefix="bench-cold-") as data_dir:
            overlay_s.append(
                await _time_to_tools_list(
                    StdioServerParameters(
                        command=PYTHON,
                        args=["-m", "mcp_overlay_server", "serve", "--demo"],
                        env=subprocess_env(Path(data_dir)),
                        cwd=data_dir,
                    )
                )
            )
        bare_s.append(
            await _time_to_tools_list(
                StdioServerParameters(
                    command=PYTHON, args=["-m", "benchmarks.bare_server"], env={"PYTHONPATH": str(REPO_ROOT)}
                )
            )
        )
    return overlay_s, bare_s


async def _stop(process: Process) -> None:
    process.terminate()
    with anyio.move_on_after(10):
        await process.wait()
        return
    process.kill()
    await process.wait()


async def _wait_ready(process: Process) -> str:
    assert process.stdout is not None
    seen = b""
    with anyio.fail_after(60):
        async for chunk in process.stdout:
            seen += chunk
            if b"ready" in seen:
                return seen.decode().strip()
    raise RuntimeError(f"the embedded demo exited before it was ready: {seen.decode()!r}")


async def bare_idle_rss_mb(settle_s: float) -> float:
    process = await anyio.open_process(
        [PYTHON, "-m", "benchmarks.bare_server"], env={"PYTHONPATH": str(REPO_ROOT)}, cwd=str(REPO_ROOT)
    )
    try:
        await anyio.sleep(settle_s)
        return rss_mb(process.pid)
    finally:
        await _stop(process)


async def _start_sim(symbols: int, data_dir: Path) -> tuple[Process, str]:
    """The footprint's simulated IB_MCP in a process of its own; (process, its URL)."""
    process = await anyio.open_process(
        [PYTHON, "-m", "benchmarks.embedded_demo", "--sim-only", "--symbols", str(symbols)],
        env=subprocess_env(data_dir),
        cwd=str(data_dir),
    )
    ready = re.search(r"ready (\S+)", await _wait_ready(process))
    if ready is None:
        await _stop(process)
        raise RuntimeError("the simulated IB_MCP did not say where it listens")
    return process, ready.group(1)


async def measure_embedded(
    duration_s: float, settle_s: float, symbols: int, *, separate_sim: bool = False
) -> dict[str, Any]:
    """The embedded demo's RSS and SQLite files over `duration_s`; with `separate_sim`, the overlay's own
    (the simulated IB_MCP runs in another process, as the real IB_MCP does) and the simulator's RSS at the end."""
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        data_dir = Path(tmp)
        command = [PYTHON, "-m", "benchmarks.embedded_demo", "--data-dir", tmp, "--symbols", str(symbols)]
        sim: Process | None = None
        if separate_sim:
            sim, url = await _start_sim(symbols, data_dir)
            command += ["--broker-url", url]
        process = await anyio.open_process(command, env=subprocess_env(data_dir), cwd=tmp)
        try:
            await _wait_ready(process)
            started = time.monotonic()
            samples: list[tuple[float, float, int]] = []
            while (elapsed := time.monotonic() - started) < duration_s:
                samples.append((elapsed, rss_mb(process.pid), sqlite_bytes(data_dir)))
                await anyio.sleep(min(SAMPLE_EVERY_S, max(0.0, duration_s - elapsed)))
            samples.append((time.monotonic() - started, rss_mb(process.pid), sqlite_bytes(data_dir)))
            files = sqlite_files(data_dir)
            sim_rss_mb = rss_mb(sim.pid) if sim else None
        finally:
            await _stop(process)
            if sim is not None:
                await _stop(sim)
    # Growth is the slope over the second half of the run (and never the settling start), where caches that
    # fill once (price cache, interned objects, connection pools) weigh least.
    steady_from_s = max(settle_s, samples[-1][0] / 2)
    settled = [s for s in samples if s[0] >= steady_from_s] or samples[-2:]
    (t0, rss0, db0), (t1, rss1, db1) = settled[0], settled[-1]
    span_s = max(t1 - t0, 1e-9)
    return {
        "duration_s": samples[-1][0],
        "rss_end_mb": rss1,
        "rss_peak_mb": max(s[1] for s in samples),
        "rss_growth_mb_per_day": (rss1 - rss0) / span_s * SECONDS_PER_DAY,
        "sqlite_end_mb": db1 / MB,
        "sqlite_growth_mb_per_day": (db1 - db0) / MB / span_s * SECONDS_PER_DAY,
        "span_s": span_s,
        "files": files,
        "sim_rss_end_mb": sim_rss_mb,
    }


def _days_to_limit(start_mb: float, growth_mb_per_day: float) -> str:
    if growth_mb_per_day <= 0:
        return "no growth measured"
    days = (CONTAINER_LIMIT_MB - start_mb) / growth_mb_per_day
    return (
        "the 2 GB limit is reached in under a day" if days < 1 else f"the 2 GB limit is reached after ~{days:,.0f} days"
    )


async def run(
    starts: int = 3, duration_s: float = 60.0, symbols: int = 50, settle_s: float = 15.0, bare_settle_s: float = 2.0
) -> list[Figure]:
    overlay_s, bare_s = await measure_cold_start(starts)
    embedded = await measure_embedded(duration_s, settle_s, symbols)
    alone = await measure_embedded(duration_s, settle_s, symbols, separate_sim=True)
    bare_rss = await bare_idle_rss_mb(bare_settle_s)
    minutes = embedded["duration_s"] / 60
    return [
        Figure(
            "cold start to first tools/list (stdio)",
            "s",
            statistics.median(overlay_s),
            statistics.median(bare_s),
            "ratio",
            COLD_START_TARGET_RATIO,
            f"median of {starts}: `serve --demo` {', '.join(f'{s:.2f}' for s in overlay_s)} s; bare "
            f"{', '.join(f'{s:.2f}' for s in bare_s)} s; the overlay opens in the background after `initialize`",
        ),
        Figure(
            f"embedded demo RSS after {minutes:.1f} min, {symbols} sym",
            "MB",
            embedded["rss_end_mb"],
            bare_rss,
            "absolute",
            RSS_TARGET_MB,
            f"peak {embedded['rss_peak_mb']:.1f} MB; baseline = idle bare mcp server; the issue's figure is after "
            f"10 min (`--duration-s 600`)",
        ),
        Figure(
            f"overlay alone RSS after {alone['duration_s'] / 60:.1f} min, {symbols} sym",
            "MB",
            alone["rss_end_mb"],
            bare_rss,
            note=f"the same demo with the simulated IB_MCP in a process of its own ({alone['sim_rss_end_mb']:.1f} MB "
            f"at the end), as the real IB_MCP runs; peak {alone['rss_peak_mb']:.1f} MB, growth over the second half "
            f"{alone['rss_growth_mb_per_day']:,.0f} MB/day extrapolated",
        ),
        Figure(
            "embedded demo RSS growth per day (extrapolated)",
            "MB/day",
            embedded["rss_growth_mb_per_day"],
            note=f"slope over the last {embedded['span_s']:.0f} s (second half of the run), extrapolated linearly; "
            f"{_days_to_limit(embedded['rss_end_mb'], embedded['rss_growth_mb_per_day'])}",
        ),
        Figure(
            "SQLite files growth per day (extrapolated)",
            "MB/day",
            embedded["sqlite_growth_mb_per_day"],
            note=f"{embedded['sqlite_end_mb']:.2f} MB at the end ("
            + ", ".join(f"{name} {size / 1024:,.0f} KiB" for name, size in sorted(embedded["files"].items()))
            + f"); {_days_to_limit(embedded['sqlite_end_mb'], embedded['sqlite_growth_mb_per_day'])} if it kept "
            "growing linearly, but the price cache keeps 1,000 ticks per symbol (full after 1,000 polls), "
            "SQLite's auto-checkpoint caps a -wal file near 4 MiB, and checkpoints of runs finished more than "
            "CHECKPOINT_RETENTION_DAYS (7) ago are deleted, so a run shorter than ~20 min overstates it",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=3, help="cold starts of each server")
    parser.add_argument("--duration-s", type=float, default=60.0, help="seconds of polling (600 = the 10-min figure)")
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--settle-s", type=float, default=15.0, help="seconds ignored before extrapolating growth")
    args = parser.parse_args()
    figures = anyio.run(run, args.starts, args.duration_s, args.symbols, args.settle_s)
    print_figures("footprint", figures)


if __name__ == "__main__":
    main()
