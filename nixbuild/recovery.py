"""What happens between attempts besides sleeping: garbage collection, memory recovery.

The policy decides *that* the store should be collected or that memory should settle;
this module does it, through process.py, with time and reading injected for tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import probe
from .nixcmd import NixInfo, nix_prefix
from .process import CommandNotFound, run_capture

GiB = 1024**3
SEED_FREE_BYTES = 20 * GiB  # the seed advice for PyTorch-sized source builds


def free_space_gb(path: Path) -> float | None:
    free = probe.free_bytes(path)
    return None if free is None else round(free / GiB, 1)


def gc_argv(nix: NixInfo, max_bytes: int) -> list[str]:
    """Nix's collector, asked to free at most what is needed (``nix store gc`` since 2.4)."""
    if nix.version >= (2, 4, 0):
        return [*nix_prefix(nix), "store", "gc", "--max", str(max_bytes)]
    return ["nix-collect-garbage", "--max-freed", str(max_bytes)]


def bytes_to_free(free_bytes: int | None, target: int = SEED_FREE_BYTES) -> int:
    """Free up to the seed advice; at least 1 GiB so a nearly-met target still helps."""
    if free_bytes is None:
        return target
    return max(GiB, target - free_bytes)


@dataclass(frozen=True, slots=True)
class GcResult:
    ok: bool
    message: str


def collect_garbage(nix: NixInfo, store: Path, timeout_s: float = 3600.0) -> GcResult:
    before = probe.free_bytes(store)
    argv = gc_argv(nix, bytes_to_free(before))
    try:
        done = run_capture(argv, timeout=timeout_s)
    except CommandNotFound as exc:
        return GcResult(False, f"garbage collection impossible: {exc}")
    after = probe.free_bytes(store)
    freed = (
        "" if before is None or after is None else f", {max(0, after - before) / GiB:.1f} GiB freed"
    )
    if not done.ok:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return GcResult(False, f"garbage collection failed (exit {done.status}): {last}")
    return GcResult(True, f"garbage collection done{freed}")


@dataclass(frozen=True, slots=True)
class MemoryRecovery:
    """How a wait for memory ended: ``recovered`` is None when memory could not be read."""

    recovered: bool | None
    waited_s: float
    available: int | None  # the last reading, bytes


def wait_for_memory(
    target_bytes: int | None,
    *,
    read_available: Callable[[], int],
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    max_wait_s: float,
    min_wait_s: float,
    poll_s: float,
    readings: int,
    interrupted: Callable[[], bool] = lambda: False,
) -> MemoryRecovery:
    """Wait until available memory is back to ``target_bytes``, measured, not guessed.

    After an out-of-memory failure the page cache, swap and dying compilers take a moment to
    clear; restarting at once could fail the next attempt for the wrong reason, and a fixed
    pause wastes time when memory is back in a second. So: read available memory every
    ``poll_s`` and return once ``readings`` readings in a row are at or above the target and
    at least ``min_wait_s`` has passed; after ``max_wait_s`` return anyway (not recovered).
    Without a target (no reading before the attempt) or when memory cannot be read, the
    wait is the fixed ``max_wait_s`` pause. Stops early when ``interrupted()``.
    """
    start = clock()
    min_wait_s = min(min_wait_s, max_wait_s)
    target = target_bytes
    streak = 0
    last: int | None = None
    while True:
        if target is not None:
            try:
                last = read_available()
            except OSError:
                target = None  # cannot tell: fall back to the fixed pause
            else:
                streak = streak + 1 if last >= target else 0
        waited = clock() - start
        if target is not None and streak >= readings and waited >= min_wait_s:
            return MemoryRecovery(True, waited, last)
        if waited >= max_wait_s or interrupted():
            return MemoryRecovery(None if target is None else False, waited, last)
        left = max_wait_s - waited
        if target is None:
            step = left
        elif streak >= readings:
            step = min_wait_s - waited
        else:
            step = poll_s
        sleep(max(0.0, min(step, left)))
