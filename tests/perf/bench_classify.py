"""Benchmark: classify a generated internal-json build log, streaming, next to jq (issue 3).

Generates a log of --size-mb megabytes (default 512) in a temporary directory: a long
source build as `nix build --log-format internal-json -v` prints it (activity starts and
stops, compiler commands and warnings as build-log results, progress and set-expected
results, nix messages), ending in a real-looking failure (cc1plus killed, make errors,
nix's "builder for … failed"). Then it runs, each in its own process so peak RSS is its own:

* nixbuild: read_log_lines → Classifier.feed → finish, exactly as `nixbuild classify FILE`
  (and read_log_lines alone, so the classifier's own share shows)
* jq: `jq -cR 'ltrimstr("@nix ") | fromjson' FILE > /dev/null` — parse every line as JSON
  and print it compactly (`jq -c .` cannot read the `@nix ` prefixes itself), the figure
  to beat

and prints wall time, lines/s, MB/s and peak RSS (VmHWM, sampled) for each.
Figures are printed, never asserted: these machines are shared and noisy.

    .venv/bin/python tests/perf/bench_classify.py [--size-mb 512] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import vm_hwm_kib  # a script directory, not a package

REPO = Path(__file__).resolve().parents[2]
DRV = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-python3.12-torch-2.5.1.drv"
ROOT_ID = 77_000_000_000_000

CLASSIFY = """
import json, sys, time
from nixbuild.classify import Classifier
from nixbuild.logstream import read_log_lines
from nixbuild.model import ExitInfo
start = time.perf_counter()
classifier = Classifier()
lines = 0
with open(sys.argv[1], encoding="utf-8", errors="replace", newline="\\n") as handle:
    for line in read_log_lines(handle):
        classifier.feed(line)
        lines = line.number
diagnosis = classifier.finish(ExitInfo(status=1))
print(json.dumps({"lines": lines, "seconds": time.perf_counter() - start,
                  "diagnosis": None if diagnosis is None else diagnosis.to_json()}))
"""


def _result(act: int, rtype: int, fields: list[object]) -> str:
    return "@nix " + json.dumps(
        {"action": "result", "fields": fields, "id": act, "type": rtype}, separators=(",", ":")
    )


def _block(n: int, build_id: int) -> list[str]:
    """About one compiled file's worth of output: the common case, nothing to classify."""
    unit = f"caffe2/CMakeFiles/torch_cpu.dir/aten/src/ATen/native/op_{n}.cpp.o"
    pct = n % 100
    log = [
        f"[{pct:3d}%] Building CXX object {unit}",
        f"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-gcc-13.2.0/bin/g++ -DAT_PER_OPERATOR_HEADERS "
        f"-DCPUINFO_SUPPORTED_PLATFORM=1 -I/build/source/build/aten/src -I/build/source/aten/src "
        f"-O3 -DNDEBUG -fPIC -Wall -Wextra -Werror=return-type -Werror=format-security "
        f"-std=gnu++17 -o {unit} -c /build/source/aten/src/ATen/native/op_{n}.cpp",
        f"/build/source/aten/src/ATen/native/op_{n}.cpp:{n % 900 + 10}:12: warning: unused "
        f"variable 'tmp' [-Wunused-variable]",
        f"  {n % 900 + 10} |     auto tmp = self.sizes();",
        "      |            ^~~",
    ]
    lines = [_result(build_id, 101, [text]) for text in log]
    lines.append(_result(ROOT_ID + 2, 105, [n, n + 5000, 1, 0]))
    if n % 7 == 0:
        lines.append(_result(ROOT_ID + 1, 106, [105, n + 5000]))
    if n % 50 == 0:
        act = ROOT_ID + 1000 + n
        lines.append(
            "@nix "
            + json.dumps(
                {
                    "action": "start",
                    "id": act,
                    "level": 5,
                    "parent": 0,
                    "text": f"querying info about '/nix/store/{n:032d}-dep-{n}'",
                    "type": 0,
                },
                separators=(",", ":"),
            )
        )
        lines.append("@nix " + json.dumps({"action": "stop", "id": act}, separators=(",", ":")))
    return lines


def _ending(build_id: int) -> list[str]:
    tail = [
        "g++: fatal error: Killed signal terminated program cc1plus",
        "compilation terminated.",
        "make[2]: *** [caffe2/CMakeFiles/torch_cpu.dir/build.make:77: op.cpp.o] Error 1",
        "make: *** [Makefile:136: all] Error 2",
    ]
    lines = [_result(build_id, 101, [text]) for text in tail]
    lines.append("@nix " + json.dumps({"action": "stop", "id": build_id}))
    message = (
        f"\u001b[31;1merror:\u001b[0m builder for '{DRV}' failed with exit code 2;\n"
        "       last 4 log lines:\n" + "".join(f"       > {t}\n" for t in tail)
    )
    lines.append("@nix " + json.dumps({"action": "msg", "level": 0, "msg": message}))
    return lines


def generate(path: Path, size_mb: int) -> tuple[int, int]:
    """Write the log; return (lines, bytes)."""
    build_id = ROOT_ID + 3
    head = [
        "@nix " + json.dumps({"action": "start", "id": ROOT_ID + 1, "level": 0, "parent": 0,
                              "text": "", "type": 104}),
        "@nix " + json.dumps({"action": "start", "id": ROOT_ID + 2, "level": 0, "parent": 0,
                              "text": "", "type": 102}),
        "@nix " + json.dumps({"action": "start", "id": build_id, "level": 3, "parent": 0,
                              "text": f"building '{DRV}'", "type": 105,
                              "fields": [DRV, "", 1, 1]}),
    ]  # fmt: skip
    target = size_mb * 1024 * 1024
    written = lines = 0
    with path.open("w", encoding="utf-8") as out:
        chunk = "\n".join(head) + "\n"
        out.write(chunk)
        written, lines = len(chunk), len(head)
        n = 0
        while written < target:
            block = _block(n, build_id)
            chunk = "\n".join(block) + "\n"
            out.write(chunk)
            written += len(chunk)
            lines += len(block)
            n += 1
        chunk = "\n".join(_ending(build_id)) + "\n"
        out.write(chunk)
    return lines + 6, path.stat().st_size


# Peak memory comes from VmHWM read from /proc while the child runs, not ru_maxrss: after
# fork and exec the kernel carries the parent's high-water mark into the child's
# ru_maxrss, so every child of this (larger) benchmark process would report the parent's.


def run_child(argv: list[str]) -> tuple[float, int, str]:
    """Run one measured process; return (wall s, peak RSS KiB, stdout)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(argv, stdout=out, text=True, cwd=REPO)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, vm_hwm_kib(proc.pid))
            time.sleep(0.05)
        wall = time.perf_counter() - start
        out.seek(0)
        stdout = out.read()
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed with status {proc.returncode}")
    return wall, peak, stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=512, help="log size [512]")
    parser.add_argument("--keep", action="store_true", help="keep the generated log")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-classify-"))
    log = workdir / "attempt.jsonl"
    try:
        started = time.perf_counter()
        lines, size = generate(log, args.size_mb)
        mb = size / 1e6
        print(f"generated {log} : {mb:,.0f} MB, {lines:,} lines in "
              f"{time.perf_counter() - started:.1f} s")  # fmt: skip

        rows = []
        wall, rss, _ = run_child([sys.executable, "-c", CLASSIFY, str(log), "parse"])
        rows.append(("read_log_lines only (parsing, no classifier)", wall, rss))
        wall, rss, out = run_child([sys.executable, "-c", CLASSIFY, str(log), "classify"])
        result = json.loads(out)
        diagnosis = result["diagnosis"] or {}
        rows.append(("nixbuild classify (streaming)", wall, rss))
        print(f"diagnosis: {diagnosis.get('kind')} ({diagnosis.get('rule')}) — "
              f"{diagnosis.get('explanation')}")  # fmt: skip

        jq = shutil.which("jq")
        if jq is None:
            print("jq not found: install it (apt-get install jq) for the comparison")
        else:
            program = 'ltrimstr("@nix ") | fromjson'
            command = f"{jq} -cR '{program}' {log} > /dev/null"
            wall, rss, _ = run_child(["/bin/sh", "-c", f"exec {command}"])
            rows.append(("jq -cR 'ltrimstr(\"@nix \") | fromjson' > /dev/null", wall, rss))

        print(f"\n{'':52} {'wall s':>8} {'lines/s':>12} {'MB/s':>8} {'peak RSS':>10}")
        for name, wall, rss in rows:
            print(f"{name:52} {wall:8.1f} {lines / wall:12,.0f} {mb / wall:8.1f} "
                  f"{rss / 1024:8.1f} MiB")  # fmt: skip
    finally:
        if args.keep:
            print(f"kept {log}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
