"""`python -m benchmarks`: every benchmark in turn, then one summary table.

    python -m benchmarks [--only tool_calls,workflow,poller,bus,footprint] [--footprint-duration-s 60]
                         [--write-results]

`--write-results` puts the table, the notes and the machine into benchmarks/RESULTS.md between the
`figures:start` / `figures:end` markers, leaving the rest of that file (the analysis) as it is.
"""

from __future__ import annotations

import argparse
import importlib
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio

from benchmarks.figures import Figure, machine_line, notes, print_figures, summary_table

RESULTS_FILE = Path(__file__).with_name("RESULTS.md")
START_MARKER = "<!-- figures:start -->"
END_MARKER = "<!-- figures:end -->"


SECTIONS = ("tool_calls", "workflow", "poller", "bus", "footprint")


def results_block(figures: list[Figure], command: str, durations_s: dict[str, float]) -> str:
    took = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in durations_s.items())
    return (
        f"{START_MARKER}\n"
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine_line()}.\n"
        f"Command: `{command}` ({took}).\n\n"
        f"{summary_table(figures)}\n\n{notes(figures)}\n"
        f"{END_MARKER}"
    )


def write_results(block: str) -> None:
    empty = f"# Benchmark results\n\n{START_MARKER}\n{END_MARKER}\n"
    text = RESULTS_FILE.read_text() if RESULTS_FILE.exists() else empty
    head, _, rest = text.partition(START_MARKER)
    _, _, tail = rest.partition(END_MARKER)
    RESULTS_FILE.write_text(f"{head}{block}{tail}")


async def run_all(names: list[str], footprint_duration_s: float) -> tuple[list[Figure], dict[str, float]]:
    figures: list[Figure] = []
    durations_s: dict[str, float] = {}
    for name in names:
        # Imported one at a time so that `--only poller` needs only what the poller benchmark imports.
        module = importlib.import_module(f"benchmarks.{name}")
        options = {"duration_s": footprint_duration_s} if name == "footprint" else {}
        started = time.perf_counter()
        section = await module.run(**options)
        durations_s[name] = time.perf_counter() - started
        print_figures(f"{name} ({durations_s[name]:.0f} s)", section)
        figures.extend(section)
    return figures, durations_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = list(SECTIONS)
    parser.add_argument("--only", default=",".join(names), help=f"comma-separated subset of {', '.join(names)}")
    parser.add_argument("--footprint-duration-s", type=float, default=60.0, help="600 = the 10-minute RSS figure")
    parser.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    figures, durations_s = anyio.run(run_all, chosen, args.footprint_duration_s)
    print(f"\n# Summary ({machine_line()})\n\n{summary_table(figures)}")
    if args.write_results:
        command = "python -m benchmarks" + (f" --only {args.only}" if args.only != ",".join(names) else "")
        if args.footprint_duration_s != 60.0:
            command += f" --footprint-duration-s {args.footprint_duration_s:g}"
        write_results(results_block(figures, command, durations_s))
        print(f"\nwrote {RESULTS_FILE}")


if __name__ == "__main__":
    main()
