"""Benchmark: peak RSS of nixbuild's per-line path over 1 M and 10 M line logs.

Each size runs in a fresh Python process that imports nixbuild, feeds a generated
internal-json log (``_common.iter_internal_json``, produced lazily so no file is needed)
through ``parse_line`` → ``LogState.apply`` → ``Classifier.feed`` → ``finish``, and reports
its own peak RSS (VmHWM). A run with 0 lines gives the baseline (interpreter,
imports). Memory should be flat: only bounded tails and bounded evidence are kept.

    .venv/bin/python tests/perf/bench_memory.py [--lines 1000000,10000000]
    .venv/bin/python tests/perf/bench_memory.py --full      # the issue's 1 M and 10 M

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # a script directory, not a package

SECTION = "memory"
TARGET_MIB = 80.0


def child(lines: int) -> None:
    """In the fresh process: consume ``lines`` generated lines, print JSON figures."""
    start = time.perf_counter()
    produced = c.consume(c.iter_internal_json(lines))
    wall = time.perf_counter() - start
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child forked from a
    # big parent (run_all.py) would report the parent's size.
    peak_kib = c.vm_hwm_kib(os.getpid())
    figures = {"lines": lines, "peak_mib": peak_kib / 1024, "wall_s": wall, "out": produced}
    print(json.dumps(figures))


def measure(lines: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(lines)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"memory child for {lines} lines failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(sizes: list[int]) -> list[c.Row]:
    baseline = measure(0)
    rows = [
        c.Row(
            SECTION,
            "peak RSS, 0 lines (baseline)",
            f"{baseline['peak_mib']:.1f} MiB",
            "fresh process: interpreter + nixbuild imports",
        )
    ]
    peaks = []
    for lines in sizes:
        figures = measure(lines)
        peaks.append(figures["peak_mib"])
        rows.append(
            c.Row(
                SECTION,
                f"peak RSS, {lines:,} lines",
                f"{figures['peak_mib']:.1f} MiB",
                f"fresh process, VmHWM; {figures['wall_s']:.0f} s "
                f"(generating the log included); target < {TARGET_MIB:.0f} MiB",
            )
        )
    if len(peaks) >= 2:
        growth = peaks[-1] / peaks[0] - 1
        rows.append(
            c.Row(
                SECTION,
                f"growth {sizes[0]:,} → {sizes[-1]:,} lines",
                f"{growth:+.1%}",
                "target: within ±10% (flat)",
            )
        )
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--memory-lines",
        default="1000000,10000000",
        help="comma-separated log sizes, each in a fresh process",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lines", dest="memory_lines", default="1000000,10000000")
    parser.add_argument("--full", action="store_true", help="the issue's sizes: 1 M and 10 M")
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return
    sizes = [1_000_000, 10_000_000] if args.full else parse_sizes(args.memory_lines)
    c.print_rows(run(sizes))


def parse_sizes(text: str) -> list[int]:
    try:
        return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        sys.exit(f"--lines: expected comma-separated whole numbers, got {text!r}")


if __name__ == "__main__":
    main()
