"""Retention: pure planning over (name, size) and a real prune of a temporary log dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixbuild.retention import (
    RetentionPolicy,
    RunDir,
    apply_prune,
    is_run_dir_name,
    plan_prune,
    prune,
    scan_runs,
)

MiB = 1024**2


def night(day: int, size: int = MiB) -> RunDir:
    return RunDir(f"202612{day:02d}T013000-ab{day:02d}", size)


def names(runs: tuple[RunDir, ...] | list[RunDir]) -> list[str]:
    return sorted(r.name for r in runs)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("20261204T013000-4f2a", True),
        ("20261204T013000-4F2A", False),  # upper-case hex is not what nixbuild writes
        ("20261204T013000-4f2", False),
        ("20261204T013000-4f2a5", False),
        ("20261304T013000-4f2a", False),  # month 13
        ("20261204-013000-4f2a", False),
        ("latest", False),
        ("attempt-1.log", False),
    ],
)
def test_run_dir_names(name: str, ok: bool) -> None:
    assert is_run_dir_name(name) is ok


def test_defaults_keep_a_month_of_nightly_runs() -> None:
    month = [night(d, 200 * MiB) for d in range(1, 31)]
    plan = plan_prune(month, RetentionPolicy())
    assert plan.delete == ()


def test_count_budget_deletes_the_oldest() -> None:
    runs = [night(d) for d in range(1, 11)]
    plan = plan_prune(runs, RetentionPolicy(max_runs=4, min_runs=1))
    assert names(plan.keep) == names(runs[-4:])
    assert names([r for r, _ in plan.delete]) == names(runs[:6])
    assert all(why == "more than 4 runs" for _, why in plan.delete)


def test_size_budget_deletes_the_oldest() -> None:
    runs = [night(d, 3 * MiB) for d in range(1, 6)]
    plan = plan_prune(runs, RetentionPolicy(max_total_bytes=7 * MiB, min_runs=0))
    assert names(plan.keep) == names(runs[-2:])
    assert plan.freed_bytes == 9 * MiB
    assert "over 7 MiB" in plan.delete[0][1]


def test_current_run_is_never_deleted_even_when_oldest() -> None:
    runs = [night(d) for d in range(1, 6)]
    plan = plan_prune(runs, RetentionPolicy(max_runs=2, min_runs=0), current=runs[0].name)
    assert runs[0] in plan.keep
    assert names(plan.keep) == names([runs[0], runs[4]])


def test_newest_min_runs_survive_a_huge_log() -> None:
    runs = [night(1), night(2, 50 * MiB)]
    plan = plan_prune(runs, RetentionPolicy(max_total_bytes=10 * MiB, min_runs=1))
    assert names(plan.keep) == [runs[1].name]


def test_foreign_names_are_not_considered() -> None:
    runs = [night(1), RunDir("important-notes", 10**12)]
    plan = plan_prune(runs, RetentionPolicy(max_runs=0, min_runs=0))
    assert [r.name for r, _ in plan.delete] == [runs[0].name]
    assert RunDir("important-notes", 10**12) not in plan.keep


def test_real_prune(tmp_path: Path) -> None:
    for day in range(1, 6):
        run = tmp_path / night(day).name
        run.mkdir()
        (run / "attempt-1.log").write_bytes(b"x" * 1000)
    (tmp_path / "notes").mkdir()
    (tmp_path / "20261231T000000-ffff").symlink_to(tmp_path / "notes")
    (tmp_path / "20261230T000000-eeee").write_text("a file, not a run dir")

    scanned = scan_runs(tmp_path)
    assert names(scanned) == [night(d).name for d in range(1, 6)]
    assert all(r.size_bytes == 1000 for r in scanned)

    current = night(1).name
    plan = prune(tmp_path, RetentionPolicy(max_runs=3, min_runs=0), current=current)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(
        [
            current,
            night(4).name,
            night(5).name,
            "notes",
            "20261231T000000-ffff",
            "20261230T000000-eeee",
        ]
    )
    assert len(plan.delete) == 2
    # applying the same plan again is harmless
    assert apply_prune(tmp_path, plan) == []
