"""Memory watchdog: pure polls with an injected reader, and a real memory-hungry process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require

from nixbuild import probe
from nixbuild.watchdog import MemoryWatchdog, MiB, default_threshold

GiB = 1024**3


def readings(*values_mib: int) -> Iterator[int]:
    yield from (v * MiB for v in values_mib)


def test_trips_once_below_threshold() -> None:
    values = readings(1000, 500, 180, 50)
    trips: list[str] = []
    dog = MemoryWatchdog(256 * MiB, trips.append, read_available=lambda: next(values))
    assert dog.check() is None
    assert dog.check() is None
    evidence = dog.check()
    assert evidence == (
        "memory watchdog: available memory 180 MiB < 256 MiB threshold, stopped the build"
    )
    assert dog.check() is None  # once only
    assert trips == [evidence]
    assert dog.tripped == evidence


def test_unreadable_memory_is_not_a_trip() -> None:
    def broken() -> int:
        raise OSError("no /proc")

    dog = MemoryWatchdog(256 * MiB, lambda _: None, read_available=broken)
    assert dog.check() is None
    assert dog.tripped is None

    # the real reader says "cannot tell" (OSError), not "0 bytes", when /proc/meminfo is gone
    def no_proc(path: str) -> str | None:
        return None

    with pytest.raises(OSError, match="meminfo"):
        probe.available_memory(no_proc)
    dog = MemoryWatchdog(
        256 * MiB, lambda _: None, read_available=lambda: probe.available_memory(no_proc)
    )
    assert dog.check() is None


def test_thread_polls_with_injected_sleep() -> None:
    values = readings(900, 800, 700, 100)
    slept: list[float] = []
    tripped = threading.Event()
    dog = MemoryWatchdog(
        256 * MiB,
        lambda _: tripped.set(),
        read_available=lambda: next(values),
        read_oom_kills=lambda: None,
        interval_s=2.5,
        sleep=slept.append,
    )
    with dog:
        assert tripped.wait(timeout=30)
    assert slept == [2.5, 2.5, 2.5]
    assert dog.tripped is not None
    assert "100 MiB < 256 MiB" in dog.tripped


def test_default_threshold() -> None:
    assert default_threshold(4 * GiB) == 256 * MiB
    assert default_threshold(64 * GiB) == int(64 * GiB * 0.03)


def test_oom_kill_delta() -> None:
    counter = iter([3, 3, 5])
    dog = MemoryWatchdog(
        1, lambda _: None, read_available=lambda: GiB, read_oom_kills=lambda: next(counter)
    )
    dog.start()
    dog.stop()
    assert dog.oom_kills_at_start == 3
    assert dog.oom_kill_delta() == 0
    assert dog.oom_kill_report() == (
        "kernel OOM killer: 2 process(es) killed in nixbuild's cgroup during the attempt "
        "(oom_kill 3 → 5)"
    )


def test_oom_kill_unavailable() -> None:
    dog = MemoryWatchdog(1, lambda _: None, read_available=lambda: GiB, read_oom_kills=lambda: None)
    dog.start()
    dog.stop()
    assert dog.oom_kill_delta() is None
    assert dog.oom_kill_report() is None


HOG = """
import sys, time
block = b"\\x01" * int(sys.argv[1])  # every page written, so it counts against MemAvailable
print("allocated", flush=True)
time.sleep(600)
"""


def test_real_memory_hog_trips_the_watchdog() -> None:
    """Real /proc/meminfo: a threshold just under current availability, then a process that
    allocates more than the margin. The on_trip callback stops it, as the supervisor would."""
    margin, hog_bytes = 300 * MiB, 1200 * MiB
    threshold = probe.available_memory() - margin
    hog: subprocess.Popen[str] | None = None
    tripped = threading.Event()

    def stop_the_build(_evidence: str) -> None:
        if hog is not None:
            hog.send_signal(signal.SIGKILL)
        tripped.set()

    dog = MemoryWatchdog(threshold, stop_the_build, interval_s=0.05)
    hog = subprocess.Popen(
        [sys.executable, "-c", HOG, str(hog_bytes)], stdout=subprocess.PIPE, text=True
    )
    try:
        with dog:
            assert hog.stdout is not None
            hog.stdout.readline()  # returns "allocated", or "" if the watchdog killed it first
            assert tripped.wait(timeout=60), "available memory never fell below the threshold"
        assert hog.wait(timeout=30) == -signal.SIGKILL
        assert dog.tripped is not None
        assert dog.tripped.startswith("memory watchdog: available memory ")
        assert f"< {threshold // MiB} MiB threshold, stopped the build" in dog.tripped
    finally:
        if hog.poll() is None:
            hog.kill()
        hog.wait()


HUNGRY_FLAKE = """
{
  outputs = { self }: {
    packages.x86_64-linux.default = derivation {
      name = "hungry-1.0";
      system = "x86_64-linux";
      builder = "/bin/bash";
      nonce = "NONCE";
      args = [ "-c" ''
        echo "allocating BYTES bytes"
        /usr/bin/python3 -c 'import time; b = b"\\x01" * BYTES; time.sleep(600)'
        mkdir -p $out
      '' ];
    };
  };
}
"""


@pytest.mark.nix
def test_supervised_build_is_stopped_by_the_watchdog_as_oom(
    nix_env: dict[str, str], tmp_path: Path
) -> None:
    """The whole stack: a real builder allocates more than the margin between available
    memory and a threshold set just below it; nixbuild stops the build early and records an
    ``oom`` diagnosis whose evidence is the watchdog's."""
    require("nix")
    require("python3")
    flake = tmp_path / "flake"
    flake.mkdir()
    hog_bytes = 1200 * MiB
    text = HUNGRY_FLAKE.replace("BYTES", str(hog_bytes)).replace("NONCE", os.urandom(4).hex())
    (flake / "flake.nix").write_text(text)
    threshold = probe.available_memory() - 300 * MiB
    (tmp_path / "nixbuild.toml").write_text(
        f'[jobs.hungry]\ninstallable = "path:{flake}#default"\nlog_dir = "{tmp_path}/logs"\n'
        f"min_free_memory = {threshold}\nmax_attempts = 1\nno_fallback = true\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "nixbuild", "build", "--job", "hungry"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode != 0, done.stderr
    (run_dir,) = (tmp_path / "logs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    (attempt,) = summary["attempts"]
    diagnosis = attempt["diagnosis"]
    assert diagnosis["kind"] == "oom", diagnosis
    assert diagnosis["rule"] == "oom.watchdog"
    evidence = " ".join(e["text"] for e in diagnosis["evidence"])
    assert "memory watchdog: available memory" in evidence
    assert f"< {threshold // MiB} MiB threshold, stopped the build" in evidence
    assert hogs(str(hog_bytes)) == []  # the builder was stopped, not left running


def hogs(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_text(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids
