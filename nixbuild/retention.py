"""Prune old run directories by count and by total size.

Only directories named like a run (``YYYYmmddTHHMMSS-xxxx``, four hex digits) directly under
the log directory are ever considered, never symlinks, never the current run, and never the
newest ``min_runs``. Deciding is a pure function over (name, size) pairs; ``apply_prune``
does the deleting.

Defaults keep a month of nightly runs: 60 run directories (30 nights with room for a manual
run or a systemd restart each night) within 10 GiB in total (a verbose PyTorch source build
writes a few hundred MB of log per attempt).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

RUN_DIR_NAME = re.compile(r"\d{8}T\d{6}-[0-9a-f]{4}")

GiB = 1024**3


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    max_runs: int = 60
    max_total_bytes: int = 10 * GiB
    min_runs: int = 3  # the newest few survive even when they alone exceed the size budget


@dataclass(frozen=True, slots=True)
class RunDir:
    name: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class PrunePlan:
    keep: tuple[RunDir, ...]
    delete: tuple[tuple[RunDir, str], ...]  # (run, why)

    @property
    def freed_bytes(self) -> int:
        return sum(run.size_bytes for run, _ in self.delete)


def is_run_dir_name(name: str) -> bool:
    if not RUN_DIR_NAME.fullmatch(name):
        return False
    try:
        dt.datetime.strptime(name[:15], "%Y%m%dT%H%M%S")
    except ValueError:
        return False
    return True


def plan_prune(
    runs: Iterable[RunDir], policy: RetentionPolicy, *, current: str | None = None
) -> PrunePlan:
    """Keep the newest runs while both budgets hold; everything older goes.

    Names sort chronologically, so "newest" is the largest name. The current run is kept
    unconditionally and counts against both budgets.
    """
    ordered = sorted((r for r in runs if is_run_dir_name(r.name)), key=lambda r: r.name)
    ordered.reverse()
    keep: list[RunDir] = []
    delete: list[tuple[RunDir, str]] = []
    count = 0
    total = 0
    over: str | None = None
    cur = [r for r in ordered if r.name == current]
    for run in cur:
        keep.append(run)
        count += 1
        total += run.size_bytes
    for index, run in enumerate(r for r in ordered if r.name != current):
        protected = index + len(cur) < policy.min_runs
        if over is None and not protected:
            if count + 1 > policy.max_runs:
                over = f"more than {policy.max_runs} runs"
            elif total + run.size_bytes > policy.max_total_bytes:
                over = f"runs together over {_human(policy.max_total_bytes)}"
        if over is not None and not protected:
            delete.append((run, over))
            continue
        keep.append(run)
        count += 1
        total += run.size_bytes
    return PrunePlan(keep=tuple(keep), delete=tuple(delete))


def scan_runs(log_dir: Path) -> list[RunDir]:
    """The run directories directly under ``log_dir`` with their sizes (files, not links)."""
    if not log_dir.is_dir():
        return []
    runs = []
    for entry in os.scandir(log_dir):
        if entry.is_dir(follow_symlinks=False) and is_run_dir_name(entry.name):
            runs.append(RunDir(entry.name, _tree_size(Path(entry.path))))
    return runs


def apply_prune(log_dir: Path, plan: PrunePlan) -> list[Path]:
    """Delete the planned directories; return what was deleted. Re-checks every path."""
    deleted = []
    for run, _why in plan.delete:
        path = log_dir / run.name
        if not is_run_dir_name(run.name) or path.is_symlink() or not path.is_dir():
            continue
        shutil.rmtree(path, ignore_errors=True)
        deleted.append(path)
    return deleted


def prune(
    log_dir: Path, policy: RetentionPolicy | None = None, *, current: str | None = None
) -> PrunePlan:
    plan = plan_prune(scan_runs(log_dir), policy or RetentionPolicy(), current=current)
    apply_prune(log_dir, plan)
    return plan


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size  # noqa: PTH118 - hot loop
            except OSError:
                continue
    return total


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}"
        value /= 1024
    return f"{value:.0f} TiB"
