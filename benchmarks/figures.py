"""What every benchmark returns (Figure), how samples become p50/p99, and the summary table.

A figure is the overlay's number beside a baseline measured in the same run. Its target is either a ratio
(overlay ≤ limit × baseline) or an absolute ceiling (overlay ≤ limit, in the figure's unit); a figure without
a limit is information only.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

TargetKind = Literal["ratio", "absolute", "info"]


@dataclass(frozen=True)
class Figure:
    name: str
    unit: str
    overlay: float
    baseline: float | None = None
    target_kind: TargetKind = "info"
    limit: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.overlay / self.baseline

    @property
    def target(self) -> str:
        if self.target_kind == "ratio":
            return f"≤ {self.limit:g}× baseline"
        if self.target_kind == "absolute":
            return f"≤ {self.limit:g} {self.unit}"
        return "—"

    @property
    def passed(self) -> bool | None:
        if self.limit is None or self.target_kind == "info":
            return None
        if self.target_kind == "ratio":
            return None if self.ratio is None else self.ratio <= self.limit
        return self.overlay <= self.limit

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "MISS", None: "info"}[self.passed]


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of `samples`."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def p50_p99(samples: Sequence[float]) -> tuple[float, float]:
    return percentile(samples, 50), percentile(samples, 99)


async def time_async_ms(call: Callable[[], Awaitable[object]], repeats: int, warmup: int = 5) -> list[float]:
    """Wall time of each of `repeats` awaited calls, in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        await call()
    samples: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def summary_table(figures: Iterable[Figure]) -> str:
    """A Markdown table: figure, unit, overlay, baseline, ratio, target, verdict."""
    lines = [
        "| figure | unit | overlay | baseline | ratio | target | result |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for figure in figures:
        ratio = "—" if figure.ratio is None else f"{figure.ratio:.2f}×"
        lines.append(
            f"| {figure.name} | {figure.unit} | {_number(figure.overlay)} | {_number(figure.baseline)} | {ratio} "
            f"| {figure.target} | {figure.verdict} |"
        )
    return "\n".join(lines)


def notes(figures: Iterable[Figure]) -> str:
    return "\n".join(f"- {figure.name}: {figure.note}" for figure in figures if figure.note)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    return (
        f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def print_figures(title: str, figures: Sequence[Figure]) -> None:
    print(f"\n## {title}\n\n{summary_table(figures)}")
    if any(f.note for f in figures):
        print(f"\n{notes(figures)}")
