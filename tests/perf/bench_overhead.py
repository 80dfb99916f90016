"""Benchmark: the cost of supervision — nixbuild build vs bare nix build, and startup.

1. Wall time of ``nixbuild build X --quiet`` against bare ``nix build X`` (same
   ``--option cores/max-jobs``, same isolated store) on the fixture flake's ``ok``
   (a three-derivation chain): already built (a no-op: evaluate, find it valid) and a
   short build (a new nonce.txt forces all three to rebuild); and on ``slow`` builds of
   a few seconds (``--build-seconds``, default 2 and 5). Runs are interleaved, the order
   alternating per round; the figure is the median of the per-round ratios. nixbuild's
   cost is a fixed amount per run, so the row "fixed cost" gives it in seconds and the
   shortest build it keeps within 1.05x.
   The package is byte-compiled first, as ``pip install`` does: a checkout run with
   PYTHONDONTWRITEBYTECODE would otherwise compile every module on every start.
2. Startup: ``nixbuild --help``; the floor under every run (Python's start, importing the
   libraries nixbuild is built on, and the exit); the time from starting ``nixbuild
   build`` to its first exec of nix and to the exec of ``nix … build`` (a compiled ``nix``
   shim first on PATH records the moment, then execs the real nix),
   and which imports cost the most (``python -X importtime``, self time summed per
   top-level package).

    .venv/bin/python tests/perf/bench_overhead.py [--rounds 10]

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # a script directory, not a package

SECTION = "overhead"
SECTION_START = "startup"
CORES, MAX_JOBS = 2, 1


def nixbuild_cmd() -> list[str]:
    """The installed console script when there is one (what users run), else -m."""
    script = Path(sys.executable).parent / "nixbuild"
    return [str(script)] if script.exists() else c.nixbuild_argv()


def compare(rounds: int, build_seconds: list[int], root: Path, env: dict[str, str]) -> list[c.Row]:
    flakes = {s: c.copy_flake(root / f"flake-{s}", sleep_txt=str(s)) for s in build_seconds}
    cases = [("no-op (already built)", flakes[build_seconds[0]], "ok", False)]
    cases.append(("short build (3-drv chain)", flakes[build_seconds[0]], "ok", True))
    cases += [(f"{s} s build (`slow`)", flakes[s], "slow", True) for s in build_seconds]
    for _, flake, attr, _ in cases:
        c.new_nonce(flake)
        argv = c.nix_build_argv(f"path:{flake}#{attr}", root / f"warm-{attr}", CORES, MAX_JOBS)
        _, warm = c.timed_run(argv, env)
        c.must_succeed(f"warm-up nix build of {attr}", warm)
    rows, extras = [], []
    for label, flake, attr, fresh in cases:
        row, extra = _compare_case(
            label,
            installable=f"path:{flake}#{attr}",
            fresh=fresh,
            flake=flake,
            rounds=rounds,
            root=root,
            env=env,
        )
        rows.append(row)
        extras.append(extra)
    fixed = c.median(extras)
    rows.append(
        c.Row(
            SECTION,
            "fixed cost per run (median of the cases' extra time)",
            f"{fixed:+.3f} s",
            f"so 1.05x holds for builds of {fixed / 0.05:.1f} s and longer "
            f"(target: 1.05x for a short build)",
        )
    )
    return rows


def _compare_case(
    label: str,
    *,
    installable: str,
    fresh: bool,
    flake: Path,
    rounds: int,
    root: Path,
    env: dict[str, str],
) -> tuple[c.Row, float]:

    def bare() -> float:
        elapsed, done = c.timed_run(
            c.nix_build_argv(installable, root / "result-bare", CORES, MAX_JOBS), env
        )
        c.must_succeed("nix build", done)
        return elapsed

    def supervised() -> float:
        elapsed, done = c.timed_run(
            [
                *nixbuild_cmd(),
                "build",
                installable,
                "--quiet",
                "--cores",
                str(CORES),
                "--max-jobs",
                str(MAX_JOBS),
                "--log-dir",
                str(root / "logs"),
                "--out-link",
                str(root / "result-nixbuild"),
            ],
            env,
        )
        c.must_succeed("nixbuild build", done)
        return elapsed

    ratios, nix_times, nb_times = [], [], []
    for i in range(rounds):
        order = (bare, supervised) if i % 2 == 0 else (supervised, bare)
        times = {}
        for fn in order:
            if fresh:
                c.new_nonce(flake)
            times[fn] = fn()
        nix_times.append(times[bare])
        nb_times.append(times[supervised])
        ratios.append(times[supervised] / times[bare])
    extra = c.median(nb_times) - c.median(nix_times)
    row = c.Row(
        SECTION,
        f"{label}: nixbuild / nix",
        f"{c.median(ratios):.2f}x",
        f"median of {rounds} interleaved pairs; medians {c.median(nb_times):.3f} s vs "
        f"{c.median(nix_times):.3f} s ({extra:+.3f} s)",
    )
    return row, extra


# A compiled shim, not a script: nixbuild never remembers the version a wrapper script
# reports (the nix behind it may change), so a bash shim would add a `nix --version` to
# every run, which a real nix binary does not cost (nixfacts.py).
SHIM_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    FILE *log = fopen(getenv("NIXBUILD_BENCH_EXEC_LOG"), "a");
    if (log) {
        fprintf(log, "%ld.%06ld", (long)now.tv_sec, now.tv_nsec / 1000);
        for (int i = 1; i < argc; i++) fprintf(log, " %s", argv[i]);
        fputc('\n', log);
        fclose(log);
    }
    execv(REAL_NIX, argv);
    perror(REAL_NIX);
    return 127;
}
"""


def compile_shim(shim_dir: Path, real_nix: str) -> str | None:
    """Build the exec-recording ``nix`` shim; the reason when it cannot be built."""
    source = shim_dir / "shim.c"
    source.write_text(SHIM_C)
    define = f'-DREAL_NIX="{real_nix}"'
    try:
        done = subprocess.run(
            ["cc", "-O2", define, "-o", str(shim_dir / "nix"), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return "no C compiler (cc) to build the exec-recording shim"
    return None if done.returncode == 0 else f"cc failed: {done.stderr.strip()[:200]}"


def time_to_exec(rounds: int, root: Path, env: dict[str, str]) -> list[c.Row]:
    real_nix = shutil.which("nix", path=env.get("PATH"))
    if real_nix is None:
        return [c.Row(SECTION_START, "time to first nix exec", "n/a", "nix not found")]
    shim_dir = root / "shim"
    shim_dir.mkdir(exist_ok=True)
    if (why := compile_shim(shim_dir, real_nix)) is not None:
        return [c.Row(SECTION_START, "time to first nix exec", "n/a", why)]
    flake = c.copy_flake(root / "flake-exec")
    installable = f"path:{flake}#ok"
    first, build, before_build = [], [], []
    for i in range(rounds):
        log = root / f"exec-{i}.log"
        run_env = dict(env, PATH=f"{shim_dir}:{env.get('PATH', '')}")
        run_env["NIXBUILD_BENCH_EXEC_LOG"] = str(log)
        started = time.time()
        _, done = c.timed_run(
            [
                *nixbuild_cmd(),
                "build",
                installable,
                "--quiet",
                "--log-dir",
                str(root / "logs"),
                "--out-link",
                str(root / "result-exec"),
            ],
            run_env,
        )
        c.must_succeed("nixbuild build (exec timing)", done)
        execs = [line.split(" ", 1) for line in log.read_text().splitlines()]
        first.append(float(execs[0][0]) - started)
        builds = [float(t) for t, args in execs if " build " in f" {args} "]
        build.append(builds[0] - started if builds else float("nan"))
        before_build.append(len([1 for t, _ in execs if builds and float(t) < builds[0]]))
    return [
        c.Row(
            SECTION_START,
            "nixbuild build: start → first nix exec",
            c.fmt_s(c.median(first)),
            f"median of {rounds}; Python startup, imports, config (a shim records the exec)",
        ),
        c.Row(
            SECTION_START,
            "nixbuild build: start → exec of `nix … build`",
            c.fmt_s(c.median(build)),
            f"median of {rounds}; includes {int(c.median(before_build))} nix call(s) before "
            "the build (version probe, preflight, fallback check)",
        ),
    ]


def help_time(rounds: int) -> list[c.Row]:
    def timed(argv: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        return time.perf_counter() - start

    python = [timed([sys.executable, "-c", "pass"]) for _ in range(rounds)]
    helps = [timed([*nixbuild_cmd(), "--help"]) for _ in range(rounds)]
    return [
        c.Row(
            SECTION_START,
            "nixbuild --help",
            c.fmt_s(c.median(helps)),
            f"median of {rounds}; bare `python -c pass` takes {c.fmt_s(c.median(python))} "
            "(target: under 0.3 s)",
        )
    ]


# The libraries nixbuild is built on (pyproject.toml's dependencies); a build uses them all
# (click parses the command line, sh starts nix, structlog writes events, tenacity backs off).
LIBRARIES = "click, sh, structlog, tenacity"


def library_floor(rounds: int) -> list[c.Row]:
    """What any build costs before nixbuild's own code: Python's start, importing the
    libraries nixbuild is built on, and the interpreter's exit (which tears them down)."""

    def timed(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - start

    bare = c.median(timed("pass") for _ in range(rounds))
    floor = c.median(timed(f"import {LIBRARIES}") for _ in range(rounds))
    return [
        c.Row(
            SECTION_START,
            f"floor: start, import {LIBRARIES}, exit",
            c.fmt_s(floor),
            f"median of {rounds} (bare Python {c.fmt_s(bare)}); paid by every build before "
            f"any of nixbuild's own work, so 1.05x needs builds of {floor / 0.05:.1f} s or "
            "longer even if the rest cost nothing",
        )
    ]


def import_costs(top: int = 6) -> list[c.Row]:
    """Which imports make startup slow: self time per top-level package, and the total."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import nixbuild.cli, nixbuild.runner"],
        capture_output=True,
        text=True,
        check=False,
    )
    per_package: dict[str, int] = defaultdict(int)
    total = 0
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3:
            continue
        micro, name = int(parts[0]), parts[2].strip()
        package = name.split(".")[0]
        per_package[package] += micro
        total += micro
    ranked = sorted(per_package.items(), key=lambda kv: kv[1], reverse=True)[:top]
    listing = ", ".join(f"{name} {us / 1000:.0f} ms" for name, us in ranked)
    return [
        c.Row(
            SECTION_START,
            "imports of nixbuild.cli + nixbuild.runner",
            c.fmt_s(total / 1e6),
            f"python -X importtime, self time by package: {listing}",
        )
    ]


def byte_compile() -> None:
    """Compile the package's modules to bytecode once, as ``pip install`` does."""
    package = Path(__file__).resolve().parents[2] / "nixbuild"
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(package)],
        stdout=subprocess.DEVNULL,
        check=False,
    )


def run(rounds: int, build_seconds: list[int]) -> list[c.Row]:
    byte_compile()
    with tempfile.TemporaryDirectory(prefix="nixbuild-bench-overhead-") as tmp:
        root = Path(tmp)
        env = c.isolated_env(root / "nix")
        rows = compare(rounds, build_seconds, root, env)
        rows += help_time(rounds)
        rows += library_floor(rounds)
        rows += time_to_exec(max(3, rounds // 2), root, env)
        rows += import_costs()
        return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=10, help="interleaved pairs per case")
    parser.add_argument(
        "--build-seconds",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[2, 5],
        help="how long the `slow` builds sleep, comma-separated [2,5]",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    c.print_rows(run(args.rounds, args.build_seconds))


if __name__ == "__main__":
    main()
