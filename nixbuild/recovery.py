"""What happens between attempts besides sleeping: garbage collection, memory recovery.

The policy decides *that* the store should be collected or that memory should settle;
this module does it, through process.py, with time and reading injected for tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import probe
from .nixcmd import NixInfo, nix_prefix
from .process import CommandNotFound, run_capture

GiB = 1024**3
SEED_FREE_BYTES = 20 * GiB  # the seed advice for PyTorch-sized source builds


def store_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("NIX_STORE_DIR") or "/nix/store")


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


def wait_for_memory(
    target_bytes: int,
    *,
    read_available: Callable[[], int],
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    max_wait_s: float = 300.0,
    poll_s: float = 5.0,
    interrupted: Callable[[], bool] = lambda: False,
) -> bool:
    """Wait until available memory is back to ``target_bytes`` (or give up after max_wait).

    After an out-of-memory failure the page cache, swap and zombie compilers take a while
    to clear; restarting at once could fail the next attempt for the wrong reason.
    """
    deadline = clock() + max_wait_s
    while True:
        try:
            if read_available() >= target_bytes:
                return True
        except OSError:
            return True  # cannot tell: do not hold the build hostage
        if clock() >= deadline or interrupted():
            return False
        sleep(poll_s)
