"""What grew between two tracemalloc snapshots (from `benchmarks.embedded_demo --tracemalloc-at`).

    python -m benchmarks.memory_diff EARLY.snap LATE.snap [--top 25] [--by traceback|lineno|filename]

Prints the allocation sites whose live memory grew most, with the number of blocks, so a cache that fills
once (growth that stops) can be told from a leak (growth proportional to time).
"""

from __future__ import annotations

import argparse
import tracemalloc
from pathlib import Path

IGNORED = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>", tracemalloc.__file__)


def growth(early: Path, late: Path, *, by: str = "traceback", top: int = 25) -> list[str]:
    filters = [tracemalloc.Filter(False, pattern) for pattern in IGNORED]
    before = tracemalloc.Snapshot.load(str(early)).filter_traces(filters)
    after = tracemalloc.Snapshot.load(str(late)).filter_traces(filters)
    stats = after.compare_to(before, by)
    total_kib = sum(stat.size_diff for stat in stats) / 1024
    lines = [f"total growth {total_kib:,.0f} KiB over {len(stats)} sites ({early.name} -> {late.name})"]
    for stat in stats[:top]:
        now_kib = stat.size / 1024
        lines.append(f"{stat.size_diff / 1024:+10,.1f} KiB {stat.count_diff:+8,d} blocks  (now {now_kib:,.0f} KiB)")
        frames = stat.traceback.format(limit=6 if by == "traceback" else 1, most_recent_first=True)
        lines.extend(f"      {frame.strip()}" for frame in frames if frame.strip())
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("early", type=Path)
    parser.add_argument("late", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--by", choices=("traceback", "lineno", "filename"), default="traceback")
    args = parser.parse_args()
    print("\n".join(growth(args.early, args.late, by=args.by, top=args.top)))


if __name__ == "__main__":
    main()
