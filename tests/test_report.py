"""Reports from the run summary: JSON contract, human text, step-summary Markdown, JUnit XML.

The summaries under tests/golden/summaries/ are written by hand from the schema in the design
notes (success; retried then success; fallback; deterministic failure). The rendered reports
are compared with golden files; to regenerate them after an intended change run

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_report.py tests/test_ciformat.py

and review the diff. Markdown is checked by parsing it with markdown-it-py (GFM tables) and
JUnit by validating it against tests/golden/junit-jenkins.xsd with xmlschema: real parsers,
not string comparison.
"""

from __future__ import annotations

import functools
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from ci_models import md_tokens, need, table_rows
from hypothesis import given, settings
from hypothesis import strategies as st

from nixbuild import report
from nixbuild.report import (
    ATTEMPT_KEYS,
    DECISION_KEYS,
    DIAGNOSIS_KEYS,
    SUMMARY_KEYS,
    human_summary,
    json_report,
    junit_xml,
    step_summary_markdown,
)
from nixbuild.summaryview import clean_text, format_duration

GOLDEN = Path(__file__).parent / "golden"
NAMES = ("success", "retried", "fallback", "failed")
XSD = GOLDEN / "junit-jenkins.xsd"

# A log tail with everything that can break a report: a Markdown fence, a CDATA end, XML
# markup, an ANSI colour, a control character, a GitHub workflow command.
NASTY_TAIL = (
    "```",
    "make: *** [Makefile:12: main.o] Error 1 ]]> <b>&amp;",
    "\x1b[31merror:\x1b[0m builder failed \x07",
    "::error::not from nixbuild",
    "````` five backticks",
)


def summary(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / "summaries" / f"{name}.json").read_text())
    return data


def check_golden(path: Path, text: str) -> None:
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), f"{path} differs (UPDATE_GOLDEN=1 to accept)"


# --- the JSON contract ------------------------------------------------------------------------


def test_schema_1_keys_are_pinned() -> None:
    assert report.SCHEMA_VERSION == 1
    assert SUMMARY_KEYS == (
        "schema", "run_id", "job", "installable", "mode", "status", "exit_code", "variant",
        "started_at", "finished_at", "duration_s", "gcroot", "outputs", "command_exit_status",
        "attempts",
    )  # fmt: skip
    assert ATTEMPT_KEYS == (
        "number", "installable", "variant", "cores", "max_jobs", "command", "started_at",
        "duration_s", "exit_status", "diagnosis", "decision", "log",
    )  # fmt: skip
    assert DIAGNOSIS_KEYS == ("kind", "rule", "drv", "explanation", "evidence")
    assert DECISION_KEYS == ("action", "delay_s", "next", "reason")


def test_model_serialisation_matches_the_contract() -> None:
    from nixbuild.model import AttemptSpec, Decision, Diagnosis, Evidence, Kind

    diagnosis = Diagnosis(Kind.OOM, "oom.x", "why", (Evidence(1, "t"),), "/nix/store/x.drv")
    decision = Decision("degrade", 45.0, AttemptSpec(".#x", 4, 1), "r")
    assert tuple(diagnosis.to_json()) == DIAGNOSIS_KEYS
    assert tuple(decision.to_json()) == DECISION_KEYS


@pytest.mark.parametrize("name", NAMES)
def test_json_report_orders_keys_and_round_trips(name: str) -> None:
    data = summary(name)
    text = json_report(data)
    back = json.loads(text)
    assert back == data
    assert [k for k in back if k in SUMMARY_KEYS] == [k for k in SUMMARY_KEYS if k in data]
    for attempt in back["attempts"]:
        assert list(attempt) == list(ATTEMPT_KEYS)
    check_golden(GOLDEN / "report" / f"{name}.json", text)


def test_json_report_keeps_unknown_keys_after_known_ones() -> None:
    text = json_report({"zeta": 1, "status": "failed", "schema": 1, "alpha": 2})
    assert list(json.loads(text)) == ["schema", "status", "alpha", "zeta"]


# --- human text ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_human_summary_golden(name: str) -> None:
    check_golden(GOLDEN / "report" / f"{name}.txt", human_summary(summary(name)))


def test_human_summary_tells_the_whole_story_of_a_fallback() -> None:
    text = human_summary(summary("fallback"))
    assert text.startswith("nixbuild: fallback: built .#torch only through the bin fallback")
    for needle in (
        "variant: bin",
        "/nix/store/m2k4l0v8a1xq9c3pz7n6b5h4g2f1d0s9-python3.11-torch-bin-2.5.1",
        "attempt 1: .#torch (source), cores 8, max-jobs 1, 1h 10m 10s, exit 1",
        "diagnosis: oom (oom.cc1plus-killed)",
        "The compiler was killed by the kernel",
        "line 81234: c++: fatal error: Killed signal terminated program cc1plus",
        "decision: degrade to cores 4, max-jobs 1 once memory is back (at most 45s)",
        "decision: fall back to .#torch-bin: source build failed twice from oom",
        "attempt 3: .#torch-bin (bin), cores 4, max-jobs 1",
    ):
        assert needle in text


# --- Markdown step summary ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_step_summary_renders_the_attempts_table(name: str) -> None:
    data = summary(name)
    tokens = md_tokens(step_summary_markdown(data, NASTY_TAIL))
    heading = next(t for i, t in enumerate(tokens) if i and tokens[i - 1].type == "heading_open")
    assert data["status"] in heading.content or "succeeded" in heading.content
    rows = table_rows(tokens)
    assert rows[0] == [
        "#", "installable", "variant", "cores", "max-jobs", "duration", "diagnosis", "decision",
    ]  # fmt: skip
    assert len(rows) == 1 + len(data["attempts"])
    for row, attempt in zip(rows[1:], data["attempts"], strict=True):
        assert row[0] == str(attempt["number"])
        assert row[1] == attempt["installable"]
        assert row[2] == attempt["variant"]
        assert row[3:5] == [str(attempt["cores"]), str(attempt["max_jobs"])]
        diagnosis = attempt["diagnosis"]
        assert row[6] == (
            "ok" if diagnosis is None else f"{diagnosis['kind']} ({diagnosis['rule']})"
        )
    check_golden(GOLDEN / "report" / f"{name}.md", step_summary_markdown(data, NASTY_TAIL))


def test_step_summary_log_tail_survives_fences_intact() -> None:
    tokens = md_tokens(step_summary_markdown(summary("failed"), NASTY_TAIL))
    fences = [t for t in tokens if t.type == "fence"]
    tail = fences[-1].content.splitlines()
    assert tail == [clean_text(line) for line in NASTY_TAIL]
    assert "\x1b" not in "".join(tail)
    # nothing after the fence was swallowed by it: the closing </details> is its own block
    assert tokens[-1].type == "html_block"
    assert "</details>" in tokens[-1].content


def test_step_summary_log_tail_is_bounded() -> None:
    tail = [f"line {n}" for n in range(1000)]
    tokens = md_tokens(step_summary_markdown(summary("failed"), tail))
    shown = [t for t in tokens if t.type == "fence"][-1].content.splitlines()
    assert shown == tail[-report.MAX_SUMMARY_TAIL_LINES :]


def test_step_summary_cells_cannot_be_broken_by_the_installable() -> None:
    data = summary("failed")
    data["attempts"][0]["installable"] = ".#a|b *c* `d` <e> [f](g)"
    rows = table_rows(md_tokens(step_summary_markdown(data)))
    assert len(rows[1]) == 8
    assert rows[1][1] == ".#a|b *c* `d` <e> [f](g)"


def test_step_summary_log_name_cannot_break_the_details_block() -> None:
    data = summary("failed")
    data["attempts"][0]["log"] = "a</summary></details><b>x"
    tokens = md_tokens(step_summary_markdown(data, ("tail",)))
    opening = next(t for t in tokens if t.type == "html_block" and "<details>" in t.content)
    assert "a&lt;/summary&gt;&lt;/details&gt;&lt;b&gt;x" in opening.content
    assert opening.content.count("</summary>") == 1


def test_step_summary_of_a_success_shows_no_log() -> None:
    tokens = md_tokens(step_summary_markdown(summary("success"), ("a line",)))
    assert not [t for t in tokens if t.type == "fence"]


# --- JUnit XML ----------------------------------------------------------------------------------


@functools.cache
def junit_schema() -> Any:
    return need("xmlschema").XMLSchema(str(XSD))


def validate_junit(text: str) -> ET.Element:
    junit_schema().validate(text)
    return ET.fromstring(text)


@pytest.mark.parametrize("name", NAMES)
def test_junit_is_valid_for_jenkins_and_gitlab(name: str) -> None:
    text = junit_xml(summary(name), NASTY_TAIL)
    root = validate_junit(text)
    suite = root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert int(suite.get("tests", "-1")) == len(cases)
    assert int(suite.get("failures", "-1")) == len(suite.findall("testcase/failure"))
    assert int(suite.get("skipped", "-1")) == len(suite.findall("testcase/skipped"))
    assert all(c.get("classname") == "nixbuild" for c in cases)
    check_golden(GOLDEN / "report" / f"{name}.xml", text)


def test_junit_failure_carries_the_diagnosis_and_the_log_tail() -> None:
    data = summary("failed")
    root = validate_junit(junit_xml(data, NASTY_TAIL))
    (case,) = root.iter("testcase")
    assert case.get("name") == ".#app"
    assert case.get("time") == "3.900"
    failure = case.find("failure")
    assert failure is not None
    assert failure.get("type") == "hash"
    assert failure.get("message") == data["attempts"][0]["diagnosis"]["explanation"]
    assert "hash mismatch in fixed-output derivation" in (failure.text or "")
    out = case.find("system-out")
    assert out is not None
    lines = (out.text or "").splitlines()
    assert lines[1] == "make: *** [Makefile:12: main.o] Error 1 ]]> <b>&amp;"
    assert lines[2] == "error: builder failed "  # the ANSI colour and the BEL are dropped


def test_junit_fallback_skips_the_abandoned_source_build() -> None:
    root = validate_junit(junit_xml(summary("fallback"), NASTY_TAIL))
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert list(cases) == [".#torch", ".#torch-bin"]
    assert cases[".#torch"].find("skipped") is not None
    assert cases[".#torch-bin"].find("skipped") is None
    assert not list(root.iter("failure"))


def test_junit_fallback_that_fails_the_job_is_a_failure() -> None:
    data = {**summary("fallback"), "exit_code": 1}  # --fail-on-fallback
    root = validate_junit(junit_xml(data, NASTY_TAIL))
    cases = {c.get("name"): c for c in root.iter("testcase")}
    failure = cases[".#torch"].find("failure")
    assert failure is not None
    assert failure.get("type") == "oom"
    assert cases[".#torch"].find("system-out") is not None
    assert cases[".#torch-bin"].find("failure") is None


def test_step_summary_of_a_refused_fallback_says_failed() -> None:
    data = {**summary("fallback"), "exit_code": 1}  # --fail-on-fallback
    text = step_summary_markdown(data)
    assert text.startswith("## nixbuild failed: .\\#torch\n")
    assert "which this run does not accept" in text


def test_junit_retried_then_success_is_one_passing_case() -> None:
    root = validate_junit(junit_xml(summary("retried")))
    (case,) = root.iter("testcase")
    assert list(case) == []
    assert case.get("time") == "514.700"


def test_junit_refused_run_without_attempts_is_a_failure() -> None:
    data = {"schema": 1, "installable": ".#x", "status": "refused", "exit_code": 3}
    root = validate_junit(junit_xml(data))
    (case,) = root.iter("testcase")
    failure = case.find("failure")
    assert failure is not None
    assert failure.get("type") == "refused"


# --- tolerance: a partial or odd summary never crashes a renderer -------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
attempt_dicts = st.dictionaries(st.sampled_from(ATTEMPT_KEYS), json_values, max_size=12)
summaries = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(SUMMARY_KEYS, json_values),
        "attempts": st.lists(attempt_dicts | json_values, max_size=3),
    },
)


@settings(max_examples=300, deadline=None)
@given(data=summaries, tail=st.lists(st.text(), max_size=3))
def test_renderers_tolerate_any_partial_summary(data: dict[str, Any], tail: list[str]) -> None:
    human_summary(data)
    step_summary_markdown(data, tail)
    validate_junit(junit_xml(data, tail))
    json.loads(json_report(data))


def test_missing_optional_keys_render_as_unknowns() -> None:
    data = {"status": "failed", "attempts": [{"diagnosis": {"kind": "oom"}}]}
    text = human_summary(data)
    assert "attempt 1: ? (source), cores ?, max-jobs ?, ?" in text
    assert "diagnosis: oom" in text


def test_the_supervisors_summary_has_exactly_the_pinned_keys() -> None:
    """The producer's side of the contract: build_summary from real model values."""
    from nixbuild import summary as summary_mod  # the supervisor's summary builder
    from nixbuild.errors import ExitCode
    from nixbuild.model import (
        AttemptRecord,
        AttemptSpec,
        Decision,
        Diagnosis,
        Evidence,
        Kind,
        Mode,
        Variant,
    )

    first = AttemptSpec(".#torch", cores=8, max_jobs=1)
    degraded = AttemptSpec(".#torch", cores=4, max_jobs=1)
    oom = Diagnosis(Kind.OOM, "oom.cc1plus-killed", "killed", (Evidence(7, "Killed"),), None)
    records = (
        AttemptRecord(1, first, ("nix", "build", ".#torch"), "2026-12-04T01:30:00+00:00", 10.0,
                      1, "attempt-1.log", oom, Decision("degrade", 45.0, degraded)),
        AttemptRecord(2, degraded, ("nix", "build", ".#torch"), "2026-12-04T01:31:00+00:00", 20.0,
                      0, "attempt-2.log", None, None, ("/nix/store/x-torch",)),
    )  # fmt: skip
    data: dict[str, Any] = summary_mod.build_summary(
        "20261204T013000-4f2a", None, Mode.BUILD, first, Path("/build/result"),
        status="success", exit_code=ExitCode.OK, started=0.0, finished=31.0,
        history=records, outputs=("/nix/store/x-torch",),
    )  # fmt: skip
    assert tuple(data) == SUMMARY_KEYS
    for attempt in data["attempts"]:
        assert tuple(attempt) == ATTEMPT_KEYS
    assert tuple(data["attempts"][0]["diagnosis"]) == DIAGNOSIS_KEYS
    assert tuple(data["attempts"][0]["decision"]) == DECISION_KEYS
    assert json.loads(json_report(data)) == json.loads(json.dumps(data))
    decision = "decision: degrade to cores 4, max-jobs 1 once memory is back (at most 45s)"
    assert decision in human_summary(data)
    validate_junit(junit_xml(data, ("tail",)))
    assert table_rows(md_tokens(step_summary_markdown(data)))[1][6] == "oom (oom.cc1plus-killed)"
    assert str(Variant.SOURCE) == data["variant"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "?"),
        (0, "0s"),
        (0.03, "0.1s"),  # a network retry may wait 0.03 s: it did wait, so not "0.0s"
        (2.5, "2.5s"),
        (45, "45s"),
        (59.94, "59.9s"),
        (59.96, "1m 00s"),  # not "60.0s"
        (72.4, "1m 12s"),
        (3725, "1h 02m 05s"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_non_finite_durations_are_treated_as_unknown() -> None:
    # found by the property test above: a summary dict (not JSON) can carry inf or nan
    for bad in (float("inf"), float("nan")):
        assert "?" in human_summary({"status": "failed", "duration_s": bad})
