"""Helpers shared by the benchmark scripts in tests/perf/.

An isolated Nix store (the same settings as tests/conftest.py), the fixture flake, the
command lines of nixbuild and of bare nix, a generator of realistic internal-json logs,
CPU and memory readings from /proc, the machine description, and the Row every benchmark
returns so that run_all.py can print one table. Nothing here asserts timings.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FIXTURES = HERE.parent / "fixtures"
FLAKE = FIXTURES / "flake"
NIX_FEATURES = ("--extra-experimental-features", "nix-command flakes")
NIX_CONF = (
    "sandbox = false\nsubstituters =\nflake-registry =\nbuild-users-group =\n"
    "experimental-features = nix-command flakes\nconnect-timeout = 2\n"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- results -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One measured figure. ``value`` is already formatted; ``note`` says how it was taken."""

    section: str
    metric: str
    value: str
    note: str = ""


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| benchmark | figure | value | how / note |", "|---|---|---|---|"]
    for row in rows:
        cells = (row.section, row.metric, row.value, row.note)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def print_rows(rows: Sequence[Row]) -> None:
    print(markdown_table(rows), flush=True)


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"


# -- the machine -----------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def nix_version() -> str:
    try:
        done = subprocess.run(["nix", "--version"], capture_output=True, text=True, check=False)
    except OSError:
        return "not installed"
    return done.stdout.strip() or done.stderr.strip()


def machine_rows() -> list[Row]:
    cores = len(os.sched_getaffinity(0))
    return [
        Row("machine", "CPU", f"{cpu_model()}, {cores} usable cores"),
        Row("machine", "RAM", f"{ram_gib():.1f} GiB"),
        Row("machine", "OS", f"{platform.system()} {platform.release()}"),
        Row("machine", "nix", nix_version()),
        Row("machine", "Python", platform.python_version()),
    ]


# -- an isolated store and the fixture flake -----------------------------------------------


def isolated_env(root: Path) -> dict[str, str]:
    """Environment for nix and nixbuild: store, state, config and caches under ``root``."""
    for sub in ("store", "state", "conf", "log", "cache"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "conf" / "nix.conf").write_text(NIX_CONF)
    env = dict(
        os.environ,
        NIX_STORE_DIR=str(root / "store"),
        NIX_STATE_DIR=str(root / "state"),
        NIX_CONF_DIR=str(root / "conf"),
        NIX_LOG_DIR=str(root / "log"),
        NIX_REMOTE="",
        XDG_CACHE_HOME=str(root / "cache"),
    )
    env.pop("NIX_USER_CONF_FILES", None)
    # No nixbuild settings from the caller's environment or config file leak in.
    for key in [k for k in env if k.startswith("NIXBUILD_")]:
        del env[key]
    env["XDG_CONFIG_HOME"] = str(root / "xdg-config")
    env["XDG_STATE_HOME"] = str(root / "xdg-state")
    return env


@contextlib.contextmanager
def work_dir(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A temporary directory, removed afterwards unless ``keep`` (then its path is printed)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def copy_flake(dest: Path, source: Path = FLAKE, **files: str) -> Path:
    """A private copy of a fixture flake, with ``files`` (e.g. ``nonce_txt="1"``) rewritten."""
    shutil.copytree(source, dest, dirs_exist_ok=True)
    for name, text in files.items():
        (dest / name.replace("_txt", ".txt")).write_text(text)
    return dest


def new_nonce(flake: Path) -> None:
    """Every fixture derivation reads nonce.txt: a new nonce forces a rebuild."""
    (flake / "nonce.txt").write_text(f"{time.time_ns()}-{random.random()}")


def nixbuild_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "nixbuild", *args]


def nix_build_plain(installable: str, out_link: Path) -> list[str]:
    """``nix build`` as people type it: nix's own defaults for cores and max-jobs."""
    return ["nix", *NIX_FEATURES, "build", installable, "--out-link", str(out_link)]


def nix_build_argv(installable: str, out_link: Path, cores: int, max_jobs: int) -> list[str]:
    """Bare ``nix build`` with the same options nixbuild passes (minus its log format)."""
    return [
        *nix_build_plain(installable, out_link),
        "--option",
        "cores",
        str(cores),
        "--option",
        "max-jobs",
        str(max_jobs),
    ]


def timed_run(
    argv: Sequence[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 600
) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    done = subprocess.run(
        list(argv),
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return time.perf_counter() - start, done


def must_succeed(what: str, done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0:
        sys.exit(f"{what} failed with exit {done.returncode}:\n{done.stderr[-3000:]}")


# -- /proc readings ----------------------------------------------------------------------


def vm_hwm_kib(pid: int) -> int:
    """The kernel's high-water mark of the process's resident memory (VmHWM), in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    ppid: int
    comm: str
    self_s: float  # utime + stime
    children_s: float  # cutime + cstime: descendants already reaped


def proc_stat(pid: int) -> ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    head, _, rest = raw.rpartition(")")
    fields = rest.split()
    comm = head.partition("(")[2]
    try:
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        ppid = int(fields[1])
    except (IndexError, ValueError):
        return None
    return ProcStat(pid, ppid, comm, (utime + stime) / CLK_TCK, (cutime + cstime) / CLK_TCK)


def all_stats() -> dict[int, ProcStat]:
    stats = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None:
                stats[stat.pid] = stat
    return stats


def descendants(root: int, stats: dict[int, ProcStat]) -> list[ProcStat]:
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(stats[pid])
        todo.extend(children.get(pid, []))
    return found


def wait_keep_zombie(pid: int, timeout: float) -> None:
    """Wait until ``pid`` exits but leave it unreaped, so its /proc/PID/stat stays readable."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        if info is not None:
            return
        time.sleep(0.02)
    raise TimeoutError(f"process {pid} still running after {timeout} s")


# -- a realistic internal-json log -------------------------------------------------------

_COMPILE = (
    "[{pct:3d}%] Building CXX object caffe2/CMakeFiles/torch_cpu.dir/__/aten/src/ATen/"
    "native/cpu/kernel_{n}.cpp.o"
)
_BUILD_TEXTS = (
    _COMPILE,
    _COMPILE,
    _COMPILE,
    _COMPILE,
    "[{pct:3d}%] Linking CXX shared library ../../lib/libtorch_cpu_{n}.so",
    "/build/source/aten/src/ATen/native/Foo{n}.cpp:{n}:17: warning: unused variable 'tmp{n}'"
    " [-Wunused-variable]",
    "  {n} |   auto tmp{n} = at::empty({{0}}, options);",
    "      |        ^~~~~",
    "-- Looking for pthread_create in pthread{n} - found",
    "-- Performing Test COMPILER_SUPPORTS_AVX512_{n} - Success",
    "test_ops.py::TestCommonCPU::test_noncontiguous_samples_{n}_cpu_float32 PASSED [ {pct}%]",
    "copying build/lib/torch/_C_{n}.pyi -> build/bdist/torch",
    "gcc -O2 -fPIC -c src/module_{n}.c -o build/module_{n}.o",
    "note: retrying download of the test data set {n} (timeout)",
)


def iter_internal_json(lines: int, seed: int = 8) -> Iterator[str]:
    """``lines`` lines of ``@nix {json}`` as nix 2.8 prints them during a long source build.

    The mix, per derivation: a build activity start, set-phase results, many builder log
    lines (about 90% of the stream: compiler, cmake, warnings with source excerpts, test
    output, occasional lines with classifier keywords such as "warning" or "retrying"),
    progress and set-expected results on the overall "builds" activity, verbose
    messages, and a stop. Deterministic for a seed.
    """
    rng = random.Random(seed)
    builds_id = 1000
    header = [
        '@nix {"action":"start","id":999,"level":0,"text":"","type":102}',
        f'@nix {{"action":"start","id":{builds_id},"level":0,"text":"","type":104}}',
    ]
    emitted = 0
    for line in header:
        if emitted >= lines:
            return
        yield line
        emitted += 1
    act = 2000
    drv_number = 0
    phases = ("unpackPhase", "patchPhase", "configurePhase", "buildPhase", "checkPhase")
    while emitted < lines:
        drv_number += 1
        act += 1
        name = f"python3.12-pkg{drv_number}-2.{drv_number % 7}.1"
        digest = f"{drv_number:032d}"[-32:].replace("0", "a")
        drv = f"/nix/store/{digest}-{name}.drv"
        block = [
            f'@nix {{"action":"msg","level":5,"msg":"building of \'{drv}\' queued"}}',
            f'@nix {{"action":"start","fields":["{drv}","",1,1],"id":{act},"level":3,'
            f'"text":"building \'{drv}\'","type":105}}',
        ]
        body_lines = rng.randint(2000, 40000)
        per_phase = body_lines // len(phases)
        for phase in phases:
            block.append(f'@nix {{"action":"result","fields":["{phase}"],"id":{act},"type":104}}')
            for i in range(per_phase):
                roll = rng.random()
                if roll < 0.03:
                    done = rng.randint(0, drv_number)
                    block.append(
                        f'@nix {{"action":"result","fields":[{done},{drv_number + 40},1,0],'
                        f'"id":{builds_id},"type":105}}'
                    )
                elif roll < 0.05:
                    block.append(
                        f'@nix {{"action":"result","fields":[101,{i}],"id":999,"type":106}}'
                    )
                elif roll < 0.055:
                    block.append(
                        f'@nix {{"action":"msg","level":6,"msg":"acquiring write lock on '
                        f"'/nix/var/nix/temproots/{i}'\"}}"
                    )
                else:
                    template = _BUILD_TEXTS[rng.randrange(len(_BUILD_TEXTS))]
                    text = template.format(pct=i * 100 // max(1, per_phase), n=i)
                    text = text.replace("\\", "\\\\").replace('"', '\\"')
                    block.append(
                        f'@nix {{"action":"result","fields":["{text}"],"id":{act},"type":101}}'
                    )
        block.append(f'@nix {{"action":"stop","id":{act}}}')
        for line in block:
            if emitted >= lines:
                return
            yield line
            emitted += 1


def write_internal_json(path: Path, lines: int, seed: int = 8) -> int:
    """Write the generated log to ``path``; return its size in bytes."""
    with path.open("w", encoding="utf-8") as out:
        batch: list[str] = []
        for line in iter_internal_json(lines, seed):
            batch.append(line)
            if len(batch) >= 10000:
                out.write("\n".join(batch) + "\n")
                batch.clear()
        if batch:
            out.write("\n".join(batch) + "\n")
    return path.stat().st_size


# Lines per hand-over in the benchmark. The pipe readers hand over what one read brings:
# in a flood about 300 lines (2 ms of output), when output trickles a single line.
BATCH_LINES = 256


def consume(lines: Iterable[str], run_dir: Path | None = None) -> int:
    """nixbuild's per-line path over ``lines``; returns the human lines produced.

    Without ``run_dir``: parse, fold (tails, phases), number, classify, and the verdict at
    the end — the path issue 8 set its target on — through the calls the supervisor makes
    (``LogState.apply_lines`` on a batch, ``Classifier.feed_text`` per line). With
    ``run_dir``: the production code itself, ``attempt.LineProcessor``, in batches of
    ``BATCH_LINES`` — also redaction, the
    attempt log (a real RunFiles under ``run_dir``) and the console (quiet, as with
    --quiet: what a terminal costs is not nixbuild's). Not included: the hand-over from
    the pipe readers to the fan-out thread (one queue operation per batch of lines).
    """
    from nixbuild.attempt import LineProcessor
    from nixbuild.classify import Classifier
    from nixbuild.console import Console
    from nixbuild.logstream import LogState
    from nixbuild.model import ExitInfo
    from nixbuild.rundir import RunFiles

    if run_dir is None:
        state = LogState()
        classifier = Classifier()
        produced_count = 0
        batch: list[str] = []
        for raw in lines:
            batch.append(raw.rstrip("\n"))
            if len(batch) == BATCH_LINES:
                for produced in state.apply_lines(batch):
                    produced_count += 1
                    classifier.feed_text(
                        produced_count, produced.text, produced.source, produced.drv
                    )
                batch = []
        for produced in state.apply_lines(batch):
            produced_count += 1
            classifier.feed_text(produced_count, produced.text, produced.source, produced.drv)
        classifier.finish(ExitInfo(0, None, None))
        return produced_count

    run_dir.mkdir(parents=True, exist_ok=True)
    files = RunFiles(run_dir, warn=print)
    files.open_attempt(1)
    processor = LineProcessor(files, Console(quiet=True))
    now = time.monotonic()
    batch = []
    for raw in lines:
        batch.append(raw.rstrip("\n"))  # the pipe readers strip the line ending
        if len(batch) == BATCH_LINES:
            processor.process(batch, now)
            batch = []
    processor.process(batch, now)
    processor.classifier.finish(ExitInfo(0, None, None))
    files.close()
    return processor.lines
