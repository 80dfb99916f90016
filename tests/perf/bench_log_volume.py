"""Benchmark: nixbuild's peak memory while a real build prints N lines (issue 2).

Builds the fixture flake's `chatty` derivation with real Nix in an isolated store, under
`nixbuild build --quiet`, for several line counts, and prints nixbuild's peak RSS (from
the kernel's accounting of the child: ru_maxrss) and the wall time. Memory should stay
flat: the log goes to disk line by line and only bounded tails are kept.

    .venv/bin/python tests/perf/bench_log_volume.py [--lines 100000,1000000]

Figures are printed, never asserted: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import FLAKE, isolated_env, vm_hwm_kib  # a script directory, not a package


def run_once(lines: int, root: Path, env: dict[str, str]) -> tuple[float, float, int]:
    """Build `chatty` with `lines` lines; return (wall s, nixbuild's peak RSS MiB, lines logged)."""
    flake = root / f"flake-{lines}"
    shutil.copytree(FLAKE, flake)
    (flake / "lines.txt").write_text(str(lines))
    (flake / "nonce.txt").write_text(str(time.time()))
    start = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nixbuild",
            "build",
            f"path:{flake}#chatty",
            "--quiet",
            "--log-dir",
            str(root / "logs"),
            "--out-link",
            str(root / f"result-{lines}"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0
    while proc.poll() is None:
        peak = max(peak, vm_hwm_kib(proc.pid))  # nixbuild itself, not nix
        time.sleep(0.05)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(
            f"build failed ({proc.returncode}):\n"
            + (proc.stderr.read()[-2000:] if proc.stderr else "")
        )
    log = next((root / "logs").glob("*/attempt-1.log"))
    with log.open() as fh:
        logged = sum(1 for _ in fh)
    shutil.rmtree(root / "logs")
    return wall, peak / 1024, logged


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lines", default="10000,100000,1000000")
    args = parser.parse_args()
    counts = [int(x) for x in args.lines.split(",")]
    with tempfile.TemporaryDirectory(prefix="nixbuild-bench-") as tmp:
        root = Path(tmp)
        env = isolated_env(root)
        print(
            f"{'lines':>10} {'wall s':>8} {'lines/s':>10} "
            f"{'nixbuild peak RSS MiB':>22} {'logged':>10}"
        )
        for count in counts:
            wall, rss, logged = run_once(count, root, env)
            print(f"{count:>10} {wall:>8.2f} {count / wall:>10.0f} {rss:>22.1f} {logged:>10}")


if __name__ == "__main__":
    main()
