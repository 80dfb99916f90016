"""The labelled real-world logs in tests/corpus (see its README.md and INDEX.tsv).

Every log goes through the same path as `nixbuild classify FILE`: read_log_lines (plain
text or internal-json) → classify with no exit status, as for a saved log.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from nixbuild.classify import classify
from nixbuild.logstream import read_log_lines
from nixbuild.model import Diagnosis

CORPUS = Path(__file__).parent / "corpus"
REQUIRED_ACCURACY = 0.95


def _index() -> list[dict[str, str]]:
    with (CORPUS / "INDEX.tsv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _diagnose(name: str) -> Diagnosis | None:
    with (CORPUS / name).open(encoding="utf-8", errors="replace", newline="\n") as handle:
        return classify(read_log_lines(handle))


def _label(diagnosis: Diagnosis | None) -> str:
    return "success" if diagnosis is None else str(diagnosis.kind)


def test_the_index_lists_every_log_and_nothing_else() -> None:
    listed = {row["file"] for row in _index()}
    present = {p.name for p in CORPUS.glob("*.log")}
    assert listed == present
    assert len(listed) >= 40


def test_at_least_95_percent_of_the_corpus_is_classified_correctly() -> None:
    rows = _index()
    misses = []
    for row in rows:
        diagnosis = _diagnose(row["file"])
        if _label(diagnosis) != row["label"]:
            rule = diagnosis.rule if diagnosis else "-"
            misses.append(
                f"{row['file']}: expected {row['label']}, got {_label(diagnosis)} ({rule})"
                f" — {row['note']}"
            )
    accuracy = 1 - len(misses) / len(rows)
    print(f"corpus: {len(rows) - len(misses)}/{len(rows)} correct ({accuracy:.1%})")
    for miss in misses:
        print("  MISS", miss)
    assert accuracy >= REQUIRED_ACCURACY, "\n".join(misses)


@pytest.mark.parametrize("name", [r["file"] for r in _index() if r["label"] == "success"])
def test_successful_builds_yield_no_failure(name: str) -> None:
    assert _diagnose(name) is None


@pytest.mark.parametrize(
    ("name", "rule", "drv_name"),
    [
        # the first failing derivation, not the dependents nix lists after it
        ("001-oom.log", "oom.compiler-killed", "aws-sdk-cpp-1.9.294"),
        ("029-network.log", "network.download-failed", "isl-0.17.1.tar.xz"),
        ("046-hash.log", "hash.fixed-output-mismatch", "ms-python-python.zip"),
        ("078-other.log", "unknown.store-corruption", "b43-firmware-5.100.138"),
        # distractors: the root cause, not the loudest symptom
        ("068-build.log", "build.sandboxed-network", "claude-code-1.0.56"),
        ("070-build.log", "build.require-file", "PureRef-1.11.1_x64.Appimage"),
        ("043-hash.log", "hash.fixed-output-mismatch", "Packages"),
        ("037-network.log", "network.ssh-builder", "firefox-unwrapped-135.0"),
    ],
)
def test_distinctive_logs_get_the_expected_rule_and_derivation(
    name: str, rule: str, drv_name: str | None
) -> None:
    diagnosis = _diagnose(name)
    assert diagnosis is not None
    assert diagnosis.rule == rule
    if drv_name is None:
        assert diagnosis.drv is None
    else:
        assert diagnosis.drv is not None
        assert diagnosis.drv.endswith(f"-{drv_name}.drv")
        assert drv_name in diagnosis.explanation


def test_evidence_line_numbers_point_at_the_lines_in_the_file() -> None:
    diagnosis = _diagnose("001-oom.log")
    assert diagnosis is not None
    lines = (CORPUS / "001-oom.log").read_text(encoding="utf-8").splitlines()
    assert diagnosis.evidence
    for evidence in diagnosis.evidence:
        assert lines[evidence.line - 1].strip() == evidence.text
    assert "Killed signal terminated program cc1plus" in diagnosis.evidence[0].text
