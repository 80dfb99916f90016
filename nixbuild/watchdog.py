"""Stop the build before the kernel's OOM killer picks a random victim.

When memory runs out, the kernel kills whatever scores highest — maybe the build's
compiler (fine: nix reports it), maybe nix itself, the user's editor or nixbuild. The
watchdog polls available memory (host and cgroup, see probe) and calls ``on_trip`` once,
with the evidence as text, when it falls below the threshold; the supervisor stops the
process group and records an ``oom`` diagnosis with that text as evidence, so the policy
lowers parallelism for the next attempt.

It also remembers the cgroup's ``oom_kill`` counter at start: a positive delta after an
attempt is kernel-level proof that the failure was memory, whatever the log says.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from . import probe

MiB = 1024**2
DEFAULT_FLOOR_BYTES = 256 * MiB
DEFAULT_FRACTION = 0.03


def default_threshold(total_bytes: int) -> int:
    """max(256 MiB, 3 % of memory): room for nix, nixbuild and the desktop to survive."""
    return max(DEFAULT_FLOOR_BYTES, int(total_bytes * DEFAULT_FRACTION))


def trip_evidence(available_bytes: int, threshold_bytes: int) -> str:
    return (
        f"memory watchdog: available memory {available_bytes // MiB} MiB < "
        f"{threshold_bytes // MiB} MiB threshold, stopped the build"
    )


def oom_kill_evidence(before: int, after: int) -> str:
    return (
        f"kernel OOM killer: {after - before} process(es) killed in nixbuild's cgroup "
        f"during the attempt (oom_kill {before} → {after})"
    )


class MemoryWatchdog:
    """A daemon thread polling available memory; ``on_trip(evidence)`` runs at most once."""

    def __init__(
        self,
        threshold_bytes: int,
        on_trip: Callable[[str], None],
        *,
        read_available: Callable[[], int] = probe.available_memory,
        read_oom_kills: Callable[[], int | None] = probe.read_oom_kill_count,
        interval_s: float = 1.0,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.threshold_bytes = threshold_bytes
        self.interval_s = interval_s
        self._on_trip = on_trip
        self._read_available = read_available
        self._read_oom_kills = read_oom_kills
        self._sleep = sleep
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._trip_lock = threading.Lock()
        self.tripped: str | None = None  # the evidence, once tripped
        self.oom_kills_at_start: int | None = None

    def check(self) -> str | None:
        """One poll. Trips (and returns the evidence) when memory is below the threshold."""
        try:
            available = self._read_available()
        except OSError:
            return None  # an unreadable /proc for one poll is not a reason to stop a build
        if available >= self.threshold_bytes:
            return None
        with self._trip_lock:
            if self.tripped is not None:
                return None
            self.tripped = trip_evidence(available, self.threshold_bytes)
        self._on_trip(self.tripped)
        return self.tripped

    def oom_kill_delta(self) -> int | None:
        """Kernel OOM kills in our cgroup since ``start``; None where the kernel does not say."""
        now = self._read_oom_kills()
        if now is None or self.oom_kills_at_start is None:
            return None
        return max(0, now - self.oom_kills_at_start)

    def oom_kill_report(self) -> str | None:
        delta = self.oom_kill_delta()
        if not delta or self.oom_kills_at_start is None:
            return None
        return oom_kill_evidence(self.oom_kills_at_start, self.oom_kills_at_start + delta)

    def start(self) -> MemoryWatchdog:
        self.oom_kills_at_start = self._read_oom_kills()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="memory-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(5.0, 2 * self.interval_s))

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.check() is not None:
                return
            if self._sleep is not None:
                self._sleep(self.interval_s)
            else:
                self._stop.wait(self.interval_s)

    def __enter__(self) -> MemoryWatchdog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
