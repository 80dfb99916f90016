"""`nixbuild bench`: the standard matmul benchmark in the source and the -bin shell.

The benchmark runs in each shell's own python (via ``torchcheck.run_in_shell``) and prints
its raw per-iteration times as one JSON line; statistics, the comparison and the table are
pure functions here. "source is X% faster" means the bin shell's mean time divided by the
source shell's, minus one (the throughput gain); the overall figure is the geometric mean
of those ratios over the sizes, so every size counts the same.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import NixbuildError, UsageError
from .torchcheck import Runner, run_in_shell

BENCH_MARK = "NIXBUILD-BENCH "
DEFAULT_SIZES = (1000, 3000, 5000)
DEFAULT_ITERATIONS = 10
DEVICES = ("cuda", "cpu")

# Runs in the shell's python. argv: sizes (comma list), iterations, device.
BENCH_SCRIPT = r"""
import json, sys, time
sizes = [int(s) for s in sys.argv[1].split(",")]
iterations, device = int(sys.argv[2]), sys.argv[3]
out = {"device": device, "torch_version": None, "torch_cuda": None, "gpu": None,
       "results": [], "error": None}
try:
    import torch
    out["torch_version"], out["torch_cuda"] = str(torch.__version__), torch.version.cuda
    if device == "cuda" and not torch.cuda.is_available():
        out["error"] = "CUDA is not available in this shell (see: nixbuild verify)"
    else:
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        if device == "cuda":
            out["gpu"] = torch.cuda.get_device_name(0)
        torch.manual_seed(0)
        for n in sizes:
            a = torch.randn(n, n, device=device)
            b = torch.randn(n, n, device=device)
            for _ in range(max(1, min(3, iterations))):  # warm-up: kernels, caches, clocks
                torch.matmul(a, b)
            sync()
            times = []
            for _ in range(iterations):
                start = time.perf_counter()
                torch.matmul(a, b)
                sync()  # CUDA launches are asynchronous: time the work, not the launch
                times.append(time.perf_counter() - start)
            out["results"].append({"size": n, "times_s": times})
            del a, b
except Exception as exc:
    out["error"] = "%s: %s" % (type(exc).__name__, exc)
print("NIXBUILD-BENCH " + json.dumps(out), flush=True)
"""


@dataclass(frozen=True, slots=True)
class SizeResult:
    size: int
    times_s: tuple[float, ...]

    @property
    def mean_s(self) -> float:
        return statistics.fmean(self.times_s)

    @property
    def best_s(self) -> float:
        return min(self.times_s)

    @property
    def gflops(self) -> float:
        return 2 * self.size**3 / self.mean_s / 1e9


@dataclass(frozen=True, slots=True)
class BenchRun:
    label: str  # "source" or "bin"
    installable: str
    device: str
    torch_version: str | None
    torch_cuda: str | None
    gpu: str | None
    results: tuple[SizeResult, ...]


@dataclass(frozen=True, slots=True)
class SizeComparison:
    size: int
    source_s: float
    bin_s: float

    @property
    def source_gain(self) -> float:
        """How much faster the source build is (0.079 = 7.9%; negative: slower)."""
        return self.bin_s / self.source_s - 1


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(s < 1 or s > 100_000 for s in sizes):
        raise UsageError(
            f"invalid --sizes {text!r}", hint="comma-separated matrix sizes, e.g. 1000,3000"
        )
    return sizes


def parse_run(label: str, installable: str, raw: dict[str, Any]) -> BenchRun:
    if raw.get("error"):
        raise NixbuildError(f"benchmark in {installable} ({label}) failed: {raw['error']}")
    try:
        results = tuple(
            SizeResult(int(r["size"]), tuple(float(t) for t in r["times_s"]))
            for r in raw["results"]
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise NixbuildError(f"benchmark in {installable} printed malformed results: {exc}") from exc
    if not results or any(not r.times_s or min(r.times_s) <= 0 for r in results):
        raise NixbuildError(f"benchmark in {installable} produced no timings")
    return BenchRun(
        label=label,
        installable=installable,
        device=str(raw.get("device")),
        torch_version=raw.get("torch_version"),
        torch_cuda=raw.get("torch_cuda"),
        gpu=raw.get("gpu"),
        results=results,
    )


def run_bench(
    label: str,
    installable: str,
    *,
    sizes: Sequence[int],
    iterations: int,
    device: str,
    runner: Runner | None = None,
) -> BenchRun:
    if device not in DEVICES:
        raise UsageError(f"invalid device {device!r}", hint="cuda or cpu")
    if iterations < 1:
        raise UsageError("--iterations must be at least 1")
    args = (",".join(str(s) for s in sizes), str(iterations), device)
    raw = run_in_shell(installable, BENCH_SCRIPT, BENCH_MARK, args, runner=runner)
    return parse_run(label, installable, raw)


def compare(source: BenchRun, binary: BenchRun) -> tuple[SizeComparison, ...]:
    bin_by_size = {r.size: r for r in binary.results}
    return tuple(
        SizeComparison(r.size, r.mean_s, bin_by_size[r.size].mean_s)
        for r in source.results
        if r.size in bin_by_size
    )


def overall_gain(comparisons: Sequence[SizeComparison]) -> float:
    """Geometric mean of the per-size ratios, minus one."""
    logs = [math.log(c.bin_s / c.source_s) for c in comparisons]
    return math.exp(statistics.fmean(logs)) - 1 if logs else 0.0


def describe_gain(gain: float) -> str:
    if abs(gain) < 0.0005:
        return "source and bin are equally fast"
    word = "faster" if gain > 0 else "slower"
    return f"source is {abs(gain) * 100:.1f}% {word}"


def _describe_run(run: BenchRun) -> str:
    where = run.gpu or run.device
    return (
        f"{run.label:6} {run.installable}: torch {run.torch_version}, "
        f"CUDA {run.torch_cuda}, on {where}"
    )


def render_table(source: BenchRun, binary: BenchRun, iterations: int) -> str:
    comparisons = compare(source, binary)
    bin_by_size = {r.size: r for r in binary.results}
    lines = [
        _describe_run(source),
        _describe_run(binary),
        f"matmul, mean of {iterations} iteration(s) after warm-up:",
        f"{'size':>6}  {'source ms':>10}  {'bin ms':>10}  {'source GFLOP/s':>14}  comparison",
    ]
    for src in source.results:
        other = bin_by_size.get(src.size)
        if other is None:
            continue
        gain = other.mean_s / src.mean_s - 1
        lines.append(
            f"{src.size:>6}  {src.mean_s * 1e3:>10.3f}  {other.mean_s * 1e3:>10.3f}  "
            f"{src.gflops:>14.1f}  {describe_gain(gain)}"
        )
    lines.append(f"overall: {describe_gain(overall_gain(comparisons))} (geometric mean over sizes)")
    return "\n".join(lines)


def bench_json(source: BenchRun, binary: BenchRun) -> dict[str, Any]:
    comparisons = compare(source, binary)

    def run_dict(run: BenchRun) -> dict[str, Any]:
        return {
            "installable": run.installable,
            "device": run.device,
            "torch_version": run.torch_version,
            "torch_cuda": run.torch_cuda,
            "gpu": run.gpu,
            "results": [
                {"size": r.size, "mean_s": r.mean_s, "best_s": r.best_s, "times_s": list(r.times_s)}
                for r in run.results
            ],
        }

    return {
        "schema": 1,
        "source": run_dict(source),
        "bin": run_dict(binary),
        "comparison": [
            {"size": c.size, "source_s": c.source_s, "bin_s": c.bin_s, "source_gain": c.source_gain}
            for c in comparisons
        ],
        "overall_source_gain": overall_gain(comparisons),
    }
