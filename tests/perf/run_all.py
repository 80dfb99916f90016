"""Run every benchmark in tests/perf/ and print one Markdown table (optionally to a file).

    .venv/bin/python tests/perf/run_all.py [--out perf.md]          # ~12 min on 2 cores
    .venv/bin/python tests/perf/run_all.py --full --out perf.md     # ~15 min
    .venv/bin/python tests/perf/run_all.py --only overhead,memory   # a subset

Defaults are issue 8's sizes where a run stays near ten minutes on a 2-core machine: the
throughput log has 5,000,000 lines and memory is measured at 1 M and 10 M lines; the real
chatty build prints 500,000 lines (1,000,000 with ``--full``) and the classifier benchmark
reads 128 MB (512 MB with ``--full``). Every figure is measured by
this run; nothing is typed in. Nothing is asserted either.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # a script directory, not a package
import bench_memory
import bench_overhead
import bench_recovery
import bench_throughput

BENCHES = ("overhead", "throughput", "memory", "recovery", "classify")
CLASSIFY_SCRIPT = c.HERE / "bench_classify.py"
# One result line of bench_classify.py: name, wall s, lines/s, MB/s, peak RSS.
_CLASSIFY_ROW = re.compile(
    r"^(?P<name>\S.*?)\s{2,}(?P<wall>[\d.]+)\s+(?P<rate>[\d,]+)\s+(?P<mbs>[\d.]+)\s+"
    r"(?P<rss>[\d.]+ MiB)\s*$"
)


def classify_rows(size_mb: int) -> list[c.Row]:
    """bench_classify.py (another engineer's script) run as it is, its figures re-tabled."""
    section = "classify a saved log"
    if not CLASSIFY_SCRIPT.exists():
        return [c.Row(section, "bench_classify.py", "NOT RUN", "script not found")]
    done = subprocess.run(
        [sys.executable, str(CLASSIFY_SCRIPT), "--size-mb", str(size_mb)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        tail = " ".join(done.stderr.strip().splitlines()[-2:])
        return [c.Row(section, "bench_classify.py", f"FAILED ({done.returncode})", tail)]
    rows = []
    for line in done.stdout.splitlines():
        match = _CLASSIFY_ROW.match(line)
        if match:
            rows.append(
                c.Row(
                    section,
                    match["name"],
                    f"{match['rate']} lines/s, {match['mbs']} MB/s",
                    f"bench_classify.py --size-mb {size_mb}; {match['wall']} s, "
                    f"peak RSS {match['rss']}",
                )
            )
    if not rows:  # an output format this runner does not know: keep it verbatim
        text = " / ".join(line.strip() for line in done.stdout.splitlines() if line.strip())
        rows.append(c.Row(section, "bench_classify.py output", "see note", text))
    return rows


def _without_out(argv: list[str]) -> list[str]:
    """The command line to print: --out FILE changes no figure and would show a local path."""
    shown, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            shown.append(arg)
    return shown


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the Markdown to this file")
    parser.add_argument(
        "--only", default=",".join(BENCHES), help=f"comma-separated subset of {','.join(BENCHES)}"
    )
    parser.add_argument("--full", action="store_true", help="the issue's sizes (slower)")
    bench_overhead.add_arguments(parser)
    bench_throughput.add_arguments(parser)
    bench_memory.add_arguments(parser)
    bench_recovery.add_arguments(parser)
    parser.add_argument(
        "--classify-size-mb", type=int, default=128, help="bench_classify.py log size [128]"
    )
    args = parser.parse_args(argv)
    if args.full:
        args.lines, args.chatty_lines = 5_000_000, 1_000_000
        args.memory_lines = "1000000,10000000"
        args.classify_size_mb = 512
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    rows = c.machine_rows()
    steps = {
        "overhead": lambda: bench_overhead.run(args.rounds, args.build_seconds),
        "throughput": lambda: bench_throughput.run(args.lines, args.chatty_lines),
        "memory": lambda: bench_memory.run(bench_memory.parse_sizes(args.memory_lines)),
        "recovery": lambda: bench_recovery.run(
            args.loop_sleep, args.loop_tries, nixbuild_repeats=args.nixbuild_runs
        ),
        "classify": lambda: classify_rows(args.classify_size_mb),
    }
    for name in BENCHES:
        if name in args.only:
            print(f"running {name} …", file=sys.stderr, flush=True)
            step_started = time.perf_counter()
            rows += steps[name]()
            print(f"  {name}: {time.perf_counter() - step_started:.0f} s", file=sys.stderr)
    command = "python tests/perf/run_all.py " + shlex.join(_without_out(argv or sys.argv[1:]))
    header = (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `{command.strip()}` "
        f"in {time.perf_counter() - started:.0f} s, on a machine shared with other work: "
        "figures are indicative (medians where repeated)."
    )
    text = header + "\n\n" + c.markdown_table(rows) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)
        print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
