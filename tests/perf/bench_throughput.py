"""Benchmark: log throughput of nixbuild's per-line path, and its CPU share in a real build.

1. A generated internal-json log (``_common.iter_internal_json``: a long source build's
   mix) goes through the supervisor's per-line path — ``logstream.parse_line``,
   ``LogState.apply`` (per-derivation tails, phases, progress) and
   ``classify.Classifier.feed`` — then again with everything else attempt.py does per line
   (redaction, the attempt log, the console; see ``_common.consume``), and the same bytes
   through ``jq -c . >/dev/null`` (on the JSON payload, the ``@nix `` prefix removed, since
   jq needs JSON) and ``grep -c``.
2. A real build that prints lines as fast as bash can (the fixture flake's ``chatty``),
   under ``nixbuild build --quiet``, under ``nix build`` with nixbuild's log flags and its
   stderr to /dev/null (the same work for nix, and nobody who could block it), and under
   bare ``nix build``; a few rounds, order rotated, medians: wall time, and the CPU time
   of nixbuild itself, of nix and of the builder (from /proc/PID/stat).

    .venv/bin/python tests/perf/bench_throughput.py [--lines 5000000] [--chatty-lines 500000]
    .venv/bin/python tests/perf/bench_throughput.py --full     # a 1,000,000-line real build
    .venv/bin/python tests/perf/bench_throughput.py --chatty-lines 0   # no real build

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # a script directory, not a package

from nixbuild.nixcmd import LOG_ARGS

SECTION = "log throughput"
SECTION_CPU = "CPU share, real chatty build"


def _rate(lines: int, size: int, seconds: float) -> str:
    return f"{lines / seconds / 1e3:,.0f} k lines/s, {size / seconds / 1e6:,.1f} MB/s"


def pipeline_rows(lines: int, workdir: Path) -> list[c.Row]:
    log = workdir / "generated.log"
    size = c.write_internal_json(log, lines)
    payload = workdir / "generated.json"
    with log.open("rb") as src, payload.open("wb") as dst:
        for raw in src:
            dst.write(raw[5:])  # drop "@nix "
    payload_size = payload.stat().st_size

    nixbuild_s, nixbuild_cpu, produced = _consume(log)
    full_s, full_cpu, _ = _consume(log, workdir / "run")
    jq_s, jq = _timed(["jq", "-c", ".", str(payload)])
    grep_s, grep = _timed(["grep", "-c", "error", str(log)])
    note = f"{lines:,} lines, {size / 1e6:,.0f} MB; {produced:,} human lines out"
    rows = [
        c.Row(
            SECTION,
            "nixbuild parse + tails + classify",
            _rate(lines, size, nixbuild_s),
            f"{note}; {nixbuild_s:.1f} s wall, {nixbuild_cpu:.1f} s CPU, one core",
        ),
        c.Row(
            SECTION,
            "nixbuild per line as attempt.py (+ redaction, attempt log, quiet console)",
            _rate(lines, size, full_s),
            f"same file; {full_s:.1f} s wall, {full_cpu:.1f} s CPU, one core",
        ),
        c.Row(
            SECTION,
            "jq -c . >/dev/null",
            _rate(lines, payload_size, jq_s) if jq == 0 else f"jq failed ({jq})",
            f"same JSON without the '@nix ' prefix; {jq_s:.1f} s",
        ),
        c.Row(
            SECTION,
            "grep -c error",
            _rate(lines, size, grep_s) if grep in (0, 1) else f"grep failed ({grep})",
            f"same file; {grep_s:.2f} s",
        ),
        c.Row(
            SECTION,
            "nixbuild / jq speed",
            f"{jq_s / nixbuild_s:.2f}x, as attempt.py {jq_s / full_s:.2f}x",
            "above 1 means nixbuild is faster than jq (target: faster than jq)",
        ),
    ]
    log.unlink()
    payload.unlink()
    return rows


def _consume(log: Path, run_dir: Path | None = None) -> tuple[float, float, int]:
    """Wall and CPU seconds of ``_common.consume`` over the file, and the lines produced."""
    start = time.perf_counter()
    cpu = time.process_time()
    with log.open(encoding="utf-8") as fh:
        produced = c.consume(fh, run_dir)
    return time.perf_counter() - start, time.process_time() - cpu, produced


def _timed(argv: list[str]) -> tuple[float, int]:
    if shutil.which(argv[0]) is None:
        return float("nan"), 127
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start, done.returncode


@dataclass(frozen=True, slots=True)
class BuildCpu:
    wall_s: float
    top_self_s: float  # the command we started (nixbuild, or nix for the bare build)
    nix_self_s: float  # nix's own CPU, all its processes (for the bare build, = top_self_s)
    builder_s: float  # the builder: bash and anything it runs
    builder_wall_s: float
    top_peak_mib: float  # VmHWM of the command we started, last sample before it exited


def run_observed(argv: list[str], env: dict[str, str], nix_is_top: bool) -> BuildCpu:
    """Run ``argv``, sampling its process tree every 20 ms; read the exact totals at exit.

    The command is left unreaped at exit so its own /proc/PID/stat (utime, stime and the
    cutime/cstime of everything it reaped) can still be read. Per-descendant figures are
    the last sample, so each may miss up to 20 ms of CPU.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last: dict[int, c.ProcStat] = {}
    builder_first: float | None = None
    builder_last = 0.0
    peak_kib = 0
    while True:
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        except ChildProcessError:
            info = None
        if info is not None:
            break
        peak_kib = max(peak_kib, c.vm_hwm_kib(proc.pid))
        stats = c.all_stats()
        for stat in c.descendants(proc.pid, stats):
            last[stat.pid] = stat
            if stat.comm == "bash":
                now = time.perf_counter()
                builder_first = builder_first if builder_first is not None else now
                builder_last = now
        time.sleep(0.02)
    wall = time.perf_counter() - start
    final = c.proc_stat(proc.pid)
    proc.wait()
    top_self = final.self_s if final else float("nan")
    builder = sum(s.self_s + s.children_s for s in last.values() if s.comm == "bash")
    # Every nix process nixbuild started (version probe, fallback check, the build).
    nix_self = top_self if nix_is_top else sum(s.self_s for s in last.values() if s.comm == "nix")
    builder_wall = builder_last - builder_first if builder_first is not None else float("nan")
    return BuildCpu(wall, top_self, nix_self, builder, builder_wall, peak_kib / 1024)


# nix's own flags for a log nixbuild reads: with these, nix formats every builder line as
# internal-json, work it does not do for a bare `nix build`.
NIXBUILD_LOG_ARGS = LOG_ARGS


def chatty_rows(lines: int, root: Path, rounds: int = 3) -> list[c.Row]:
    env = c.isolated_env(root / "nix")
    flake = c.copy_flake(root / "flake", lines_txt=str(lines))
    installable = f"path:{flake}#chatty"
    # Warm up: the flake's source copy and the evaluation cache, so no run pays for it.
    c.new_nonce(flake)
    _, warm = c.timed_run(c.nix_build_argv(installable, root / "warm", 2, 1), env, timeout=1800)
    c.must_succeed("warm-up nix build of chatty", warm)

    supervised_argv = c.nixbuild_argv(
        "build",
        installable,
        "--quiet",
        "--cores",
        "2",
        "--max-jobs",
        "1",
        "--log-dir",
        str(root / "logs"),
        "--out-link",
        str(root / "result-nixbuild"),
    )
    same_log_argv = [
        *c.nix_build_argv(installable, root / "result-json", 2, 1),
        *NIXBUILD_LOG_ARGS,
    ]
    bare_argv = c.nix_build_argv(installable, root / "result-bare", 2, 1)
    runs: dict[str, list[BuildCpu]] = {"nixbuild": [], "same-log": [], "bare": []}
    for i in range(rounds):
        order = [("nixbuild", supervised_argv), ("same-log", same_log_argv), ("bare", bare_argv)]
        for name, argv in order[i % 3 :] + order[: i % 3]:  # rotate who goes first
            c.new_nonce(flake)
            runs[name].append(run_observed(argv, env, nix_is_top=name != "nixbuild"))
    for name, link in (("nixbuild", "result-nixbuild"), ("same-log", "result-json")):
        if not (root / link).exists():
            return [c.Row(SECTION_CPU, f"{name} build of chatty", "FAILED", "see its output")]

    def med(name: str, field: str) -> float:
        return c.median(getattr(run, field) for run in runs[name])

    reading = _log_reading(root / "logs")
    nb_cpu, nb_nix, builder = (
        med("nixbuild", f) for f in ("top_self_s", "nix_self_s", "builder_s")
    )
    busy = nb_cpu + nb_nix + builder
    how = f"{lines:,} lines, medians of {rounds} rounds (order rotated); CPU from /proc/PID/stat"
    blocked = med("nixbuild", "builder_wall_s") / med("same-log", "builder_wall_s")
    return [
        c.Row(
            SECTION_CPU,
            "nixbuild CPU / builder CPU",
            f"{nb_cpu:.2f} s / {builder:.2f} s",
            f"{how}; nixbuild = {nb_cpu / busy:.0%} of all CPU used "
            f"({nb_cpu / lines * 1e6:.1f} µs a line)",
        ),
        c.Row(
            SECTION_CPU,
            "nix CPU: under nixbuild / same log flags to /dev/null / bare",
            f"{nb_nix:.2f} s / {med('same-log', 'nix_self_s'):.2f} s / "
            f"{med('bare', 'nix_self_s'):.2f} s",
            f"with nixbuild's log flags ({' '.join(LOG_ARGS)}) nix encodes every line as JSON",
        ),
        c.Row(
            SECTION_CPU,
            "builder wall: under nixbuild / same log flags to /dev/null / bare",
            f"{med('nixbuild', 'builder_wall_s'):.2f} s / "
            f"{med('same-log', 'builder_wall_s'):.2f} s / {med('bare', 'builder_wall_s'):.2f} s",
            f"under nixbuild / same flags = {blocked:.2f}: above 1 means the builder was "
            "slowed by nixbuild (a log pipe not drained, or CPU taken on a 2-core machine)",
        ),
        c.Row(
            SECTION_CPU,
            "did nix ever wait for nixbuild? (largest read / pipe size; readers' waits)",
            reading,
            "the largest read is what piled up in a pipe between two reads: below the pipe's "
            "size, nix never found it full; the readers wait only when the worker's queue is "
            "full (from each run's log_reading event)",
        ),
        c.Row(
            SECTION_CPU,
            "nixbuild peak RSS during the build",
            f"{c.median(run.top_peak_mib for run in runs['nixbuild']):.1f} MiB",
            "VmHWM of the nixbuild process (all its threads), sampled every 20 ms",
        ),
        c.Row(
            SECTION_CPU,
            "total wall: nixbuild / same log flags / bare",
            f"{med('nixbuild', 'wall_s'):.2f} s / {med('same-log', 'wall_s'):.2f} s / "
            f"{med('bare', 'wall_s'):.2f} s",
            "nixbuild's includes its start-up and finish",
        ),
    ]


def _log_reading(log_dir: Path) -> str:
    """The nixbuild runs' ``log_reading`` events, summed up: worst pipe fill, total waits."""
    peaks, capacities, waits = [], [], []
    for events in log_dir.glob("*/events.jsonl"):
        for line in events.read_text().splitlines():
            event = json.loads(line)
            if event.get("event") == "log_reading":
                peaks.append(event["pipe_peak_bytes"])
                capacities.append(event["pipe_capacity_bytes"])
                waits.append(event["readers_waited_s"])
    if not peaks:
        return "no log_reading events"
    return (
        f"{max(peaks) / 1024:,.0f} KiB / {min(capacities) / 1024:,.0f} KiB; "
        f"{sum(waits):.2f} s in {len(peaks)} runs"
    )


def run(lines: int, chatty_lines: int) -> list[c.Row]:
    with tempfile.TemporaryDirectory(prefix="nixbuild-bench-throughput-") as tmp:
        root = Path(tmp)
        rows = pipeline_rows(lines, root)
        if chatty_lines > 0:
            rows += chatty_rows(chatty_lines, root)
        return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lines", type=int, default=5_000_000, help="generated log lines [5,000,000]"
    )
    parser.add_argument(
        "--chatty-lines",
        type=int,
        default=500_000,
        help="lines the real chatty build prints; 0 skips the real build [500,000]",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--full", action="store_true", help="5 M generated, a 1 M line real build")
    args = parser.parse_args()
    if args.full:
        args.lines, args.chatty_lines = 5_000_000, 1_000_000
    c.print_rows(run(args.lines, args.chatty_lines))


if __name__ == "__main__":
    main()
