"""CI wrapping end to end: the real CLI, real Nix, each CI flavour's console and reports.

Every run here is `python -m nixbuild …` against the isolated store (conftest's `nix_env`) with
exactly the CI variables of the flavour under test set and every other CI variable removed (CI
itself runs this suite with CI=true, GITHUB_*, …). What each CI does with the output is
checked by parsing it as that CI would: GitHub's workflow commands (honouring
``::stop-commands::``), GitLab's section markers, the step-summary Markdown (markdown-it-py),
the JUnit XML (validated against tests/golden/junit-jenkins.xsd with xmlschema).

The console transcripts of four real runs per flavour are compared with goldens under
tests/golden/e2e/<flavour>/<scenario>.txt, normalised (store hashes, temporary paths, run ids,
durations, GitLab timestamps, GitHub's stop-commands token become placeholders; ESC and CR are
shown as \\e and \\r). After an intended change regenerate them and review the diff:

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_ci_e2e.py

Reports are asked for through the options' environment twins (NIXBUILD_JSON, NIXBUILD_JUNIT,
NIXBUILD_FAIL_ON_FALLBACK); `test_report_flags_on_the_command_line` pins the flags themselves.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ci_models import github_runner, md_tokens, need, table_rows

from nixbuild.report import ATTEMPT_KEYS, SUMMARY_KEYS
from nixbuild.summaryview import format_duration

pytestmark = pytest.mark.nix

TESTS = Path(__file__).parent
GOLDEN = TESTS / "golden" / "e2e"
XSD = TESTS / "golden" / "junit-jenkins.xsd"
FAILURES = TESTS / "fixtures" / "failures"

# The variables each flavour is detected from (cidetect.detect_ci). Everything else a CI sets
# that nixbuild might read is removed: the prefixes below cover GitHub, GitLab and Buildkite.
FLAVOURS: dict[str, dict[str, str]] = {
    "github": {"CI": "true", "GITHUB_ACTIONS": "true"},
    "gitlab": {"CI": "true", "GITLAB_CI": "true"},
    "buildkite": {"CI": "true", "BUILDKITE": "true"},
    "plain": {"CI": "true"},
}
CI_PREFIXES = ("GITHUB_", "GITLAB_", "CI_", "BUILDKITE", "RUNNER_")


def ci_env(flavour: str, **extra: str) -> dict[str, str]:
    """This process's environment as the CI of ``flavour`` would give it, no other CI's."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "CI" and not k.startswith(CI_PREFIXES) and not k.startswith("NIXBUILD_")
    }
    env.update(FLAVOURS[flavour])
    # No pause between attempts, and no heartbeat line that a slow machine could add.
    env.update(
        NIXBUILD_OOM_DELAY="0",
        NIXBUILD_NETWORK_BACKOFF="0",
        NIXBUILD_SETTLE_DELAY="0",
        NIXBUILD_HEARTBEAT="1h",
    )
    env.update(extra)
    return env


def nixbuild(
    *args: str, cwd: Path, env: Mapping[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The CLI's result, its output decoded without newline translation: GitLab's section
    markers carry a bare CR, which text mode would turn into a line break."""
    cwd.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "nixbuild", *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def only_run_dir(log_dir: Path) -> Path:
    (run_dir,) = [p for p in log_dir.iterdir() if p.is_dir()]
    return run_dir


def read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


# --- normalising a real transcript ----------------------------------------------------------

_RUN_ID = re.compile(r"\b\d{8}T\d{6}-[0-9a-f]{4}\b")
_STORE_HASH = re.compile(r"<store>/[0-9a-df-np-sv-z]{32}-")
_TOKEN = re.compile(r"::stop-commands::(\S+)")
_SECTION_TIME = re.compile(r"section_(start|end):\d+:")
# format_duration's shapes: 0s, 0.1s, 12.5s, 8m 22s, 1h 10m 10s
_DURATION = re.compile(r"(?<![\w.])(?:\d+h \d{2}m \d{2}s|\d+m \d{2}s|\d+(?:\.\d+)?s)(?![\w.])")
_PREFLIGHT_WARNING = "nixbuild: warning: "
_RUN_LINE = "nixbuild: run <run-id>, logs in "


def normalise(text: str, *, store: str, tmp: Path) -> str:
    """A transcript with everything that differs between two identical runs replaced."""
    text = text.replace(store, "<store>")
    text = _STORE_HASH.sub("<store>/<hash>-", text)
    text = text.replace(str(tmp), "<tmp>")
    text = _RUN_ID.sub("<run-id>", text)
    for token in set(_TOKEN.findall(text)):
        text = text.replace(token, "<token>")
    text = _SECTION_TIME.sub(r"section_\1:<time>:", text)
    text = _DURATION.sub("<duration>", text)
    lines = text.split("\n")
    # Preflight warnings depend on this machine's memory and cores, not on the run: drop the
    # ones printed before the run starts.
    if any(line.startswith(_RUN_LINE) for line in lines):
        start = next(i for i, line in enumerate(lines) if line.startswith(_RUN_LINE))
        lines = [
            line
            for i, line in enumerate(lines)
            if i >= start or not line.startswith(_PREFLIGHT_WARNING)
        ]
    return "\n".join(lines).replace("\x1b", "\\e").replace("\r", "\\r")


def check_golden(path: Path, text: str) -> None:
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), f"{path} differs (UPDATE_GOLDEN=1 to accept)"


def test_normalise_replaces_what_varies_between_runs(tmp_path: Path) -> None:
    raw = (
        "nixbuild: warning: building from source below the advice\n"
        f"nixbuild: run 20261204T201745-b945, logs in {tmp_path}/logs/20261204T201745-b945\n"
        "::stop-commands::1eb67c01db65840c46042d9a7b3d78ce\n"
        "building '/s/kmbb48akcch5hbwqqmgks68yzp2ilsdq-fixture-cores-1.0.drv'...\n"
        "::1eb67c01db65840c46042d9a7b3d78ce::\n"
        "nixbuild: attempt 1 failed after 0.1s, exit 1: oom; in 8m 22s; (1h 10m 10s) 12s\n"
        "\x1b[0Ksection_end:1796415476:nixbuild_attempt_1\r\x1b[0K\n"
        "nixbuild: warning: a warning during the run stays\n"
    )
    assert normalise(raw, store="/s", tmp=tmp_path) == (
        "nixbuild: run <run-id>, logs in <tmp>/logs/<run-id>\n"
        "::stop-commands::<token>\n"
        "building '<store>/<hash>-fixture-cores-1.0.drv'...\n"
        "::<token>::\n"
        "nixbuild: attempt 1 failed after <duration>, exit 1: oom; in <duration>; (<duration>) "
        "<duration>\n"
        "\\e[0Ksection_end:<time>:nixbuild_attempt_1\\r\\e[0K\n"
        "nixbuild: warning: a warning during the run stays\n"
    )


# --- what each CI makes of the console ------------------------------------------------------


def check_github_console(stderr: str, attempts: int) -> list[str]:
    """Groups balanced, one per attempt, at most 3 annotations; returns the annotations."""
    executed, _ = github_runner(stderr.split("\n"))
    groups = [
        c.split("::")[1].split(" ")[0] for c in executed if c.startswith(("::group", "::end"))
    ]
    assert groups == ["group", "endgroup"] * attempts, groups
    annotations = [c for c in executed if c.startswith(("::error", "::warning"))]
    assert len(annotations) <= 3, annotations
    others = [c for c in executed if c not in annotations and not c.startswith("::group::")]
    assert set(others) <= {"::endgroup::"}, others  # nothing else from nix's log is executed
    return annotations


def check_gitlab_console(stderr: str, attempts: int, failed: int) -> None:
    """Sections nest properly; each attempt collapsed, each failure expanded."""
    opened: list[tuple[str, bool]] = []
    stack: list[str] = []
    for line in stderr.split("\n"):
        if m := re.search(r"section_start:\d+:(\w+?)(\[collapsed=true\])?\r", line):
            opened.append((m.group(1), bool(m.group(2))))
            stack.append(m.group(1))
        elif m := re.search(r"section_end:\d+:(\w+)\r", line):
            assert stack.pop() == m.group(1)
    assert stack == []
    assert [n for n, collapsed in opened if collapsed] == [
        f"nixbuild_attempt_{n}" for n in range(1, attempts + 1)
    ]
    assert len([n for n, collapsed in opened if not collapsed]) == failed
    assert all(n.endswith("_failure") for n, collapsed in opened if not collapsed)


def check_buildkite_console(stderr: str, attempts: int, failed: int) -> None:
    lines = stderr.splitlines()
    assert len([x for x in lines if re.match(r"--- attempt \d+/\d+: ", x)]) == attempts
    assert lines.count("^^^ +++") == failed


# --- reports --------------------------------------------------------------------------------


@functools.cache
def junit_schema() -> Any:
    return need("xmlschema").XMLSchema(str(XSD))


def check_junit(path: Path, summary: Mapping[str, Any], *, failed: bool) -> ET.Element:
    text = path.read_text(encoding="utf-8")
    junit_schema().validate(text)
    root = ET.fromstring(text)
    suite = root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert int(suite.get("tests", "-1")) == len(cases) >= 1
    failures = suite.findall("testcase/failure")
    assert int(suite.get("failures", "-1")) == len(failures)
    assert bool(failures) is failed
    names = {a["installable"] for a in summary["attempts"]}
    assert {c.get("name") for c in cases} == names
    return root


def check_json_report(path: Path, run_dir: Path) -> dict[str, Any]:
    data = read_json(path)
    assert data == read_json(run_dir / "summary.json")
    assert tuple(data) == SUMMARY_KEYS
    for attempt in data["attempts"]:
        assert tuple(attempt) == ATTEMPT_KEYS
    return data


# --- the four runs ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    attr: str
    args: tuple[str, ...]
    code: int
    status: str
    # per attempt: (attr, cores, diagnosis kind or "ok", decision cell's beginning)
    attempts: tuple[tuple[str, int, str, str], ...]


SCENARIOS: dict[str, Scenario] = {
    "success": Scenario("ok", ("--cores", "2"), 0, "success", (("ok", 2, "ok", "done"),)),
    "retried": Scenario(
        "cores",
        ("--cores", "8"),
        0,
        "success",
        (
            ("cores", 8, "oom", "degrade to cores 4, max-jobs 1"),
            ("cores", 4, "oom", "degrade to cores 2, max-jobs 1"),
            ("cores", 2, "ok", "done"),
        ),
    ),
    "fallback": Scenario(
        "alwaysfail",
        ("--cores", "2", "--fallback", "path:{flake}#alwaysfail-bin"),
        0,
        "fallback",
        (
            ("alwaysfail", 2, "oom", "degrade to cores 1, max-jobs 1"),
            ("alwaysfail", 1, "oom", "fall back to path:{flake}#alwaysfail-bin"),
            ("alwaysfail-bin", 1, "ok", "done"),
        ),
    ),
    "failed": Scenario(
        "fail",
        ("--cores", "2", "--max-attempts", "2"),
        1,
        "failed",
        (
            ("fail", 2, "build", "degrade to cores 1, max-jobs 1"),
            ("fail", 1, "build", "give up"),
        ),
    ),
}


@dataclass(frozen=True, slots=True)
class Run:
    result: subprocess.CompletedProcess[str]
    tmp: Path
    flake: Path
    store: str

    @property
    def logs(self) -> Path:
        return self.tmp / "logs"

    @property
    def run_dir(self) -> Path:
        return only_run_dir(self.logs)

    @property
    def summary(self) -> dict[str, Any]:
        return read_json(self.run_dir / "summary.json")

    def transcript(self) -> str:
        r = self.result
        raw = f"$ exit {r.returncode}\n--- stdout\n{r.stdout}--- stderr\n{r.stderr}"
        return normalise(raw, store=self.store, tmp=self.tmp)


def run_scenario(
    name: str, flavour: str, flake: Path, tmp: Path, nix_env: Mapping[str, str], **env: str
) -> Run:
    scenario = SCENARIOS[name]
    (flake / "nonce.txt").write_text(uuid.uuid4().hex)  # the shared store must build it again
    args = [a.format(flake=flake) for a in scenario.args]
    result = nixbuild(
        "build",
        f"path:{flake}#{scenario.attr}",
        *args,
        "--max-jobs",
        "1",
        "--log-dir",
        str(tmp / "logs"),
        "--out-link",
        str(tmp / "result"),
        cwd=tmp / "work",
        env=ci_env(
            flavour,
            NIXBUILD_JSON=str(tmp / "report.json"),
            NIXBUILD_JUNIT=str(tmp / "report.xml"),
            **env,
        ),
    )
    return Run(result, tmp, flake, nix_env["NIX_STORE_DIR"])


def expected_rows(scenario: Scenario, flake: Path) -> list[tuple[str, ...]]:
    return [
        (str(n), f"path:{flake}#{attr}", "bin" if attr.endswith("-bin") else "source", str(cores))
        for n, (attr, cores, _, _) in enumerate(scenario.attempts, start=1)
    ]


@pytest.mark.parametrize("flavour", list(FLAVOURS))
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_real_run_console_and_reports(
    nix_env: dict[str, str], flake: Path, tmp_path: Path, flavour: str, name: str
) -> None:
    scenario = SCENARIOS[name]
    step_summary = tmp_path / "step-summary.md"
    extra = {"GITHUB_STEP_SUMMARY": str(step_summary)} if flavour == "github" else {}
    run = run_scenario(name, flavour, flake, tmp_path, nix_env, **extra)
    assert run.result.returncode == scenario.code, explain(run.result)
    assert "Traceback" not in run.result.stderr

    summary = run.summary
    assert summary["status"] == scenario.status and summary["exit_code"] == scenario.code
    got = [
        (str(a["number"]), a["installable"], a["variant"], str(a["cores"]))
        for a in summary["attempts"]
    ]
    assert got == expected_rows(scenario, flake)
    kinds = [a["diagnosis"]["kind"] if a["diagnosis"] else "ok" for a in summary["attempts"]]
    assert kinds == [kind for _, _, kind, _ in scenario.attempts]
    if scenario.code == 0:
        assert run.result.stdout.splitlines() == summary["outputs"]
        assert (tmp_path / "result").resolve() == Path(summary["outputs"][0])

    check_json_report(tmp_path / "report.json", run.run_dir)
    check_junit(tmp_path / "report.xml", summary, failed=scenario.code != 0)

    attempts = len(scenario.attempts)
    failed = sum(kind != "ok" for _, _, kind, _ in scenario.attempts)
    stderr = run.result.stderr
    if flavour == "github":
        annotations = check_github_console(stderr, attempts)
        errors = [a for a in annotations if a.startswith("::error")]
        assert len(errors) == (1 if scenario.code else 0), annotations
        if failed:
            assert annotations, "a failed attempt leaves no annotation"
        check_step_summary(step_summary, scenario, flake)
        # one stop-commands token per run, not guessable from the log
        assert len({*_TOKEN.findall(stderr)}) == 1
        assert re.fullmatch(r"[0-9a-f]{32}", _TOKEN.findall(stderr)[0])
    else:
        assert "::group::" not in stderr and "::error" not in stderr
    if flavour == "gitlab":
        check_gitlab_console(stderr, attempts, failed)
        # GitLab's section control sequence is the only escape: no colours, no redraws
        assert set(re.findall(r"\x1b\[[0-9;?]*[A-Za-z]", stderr)) == {"\x1b[0K"}
        assert stderr.count("\x1b") == stderr.count("\x1b[0K")
    else:
        assert "\x1b" not in stderr + run.result.stdout  # no colours, no redraws
    if flavour == "buildkite":
        check_buildkite_console(stderr, attempts, failed)
    check_golden(GOLDEN / flavour / f"{name}.txt", run.transcript())


def check_step_summary(path: Path, scenario: Scenario, flake: Path) -> None:
    text = path.read_text(encoding="utf-8")
    tokens = md_tokens(text)
    rows = table_rows(tokens)
    assert rows[0] == [
        "#", "installable", "variant", "cores", "max-jobs", "duration", "diagnosis", "decision",
    ]  # fmt: skip
    assert len(rows) == 1 + len(scenario.attempts)
    for row, want, (_, _, kind, decision) in zip(
        rows[1:], expected_rows(scenario, flake), scenario.attempts, strict=True
    ):
        assert len(row) == 8, row
        assert tuple(row[:4]) == want
        assert row[4] == "1"
        assert re.fullmatch(r"\d+(\.\d)?s", row[5]), row[5]  # a real, short duration
        if kind == "ok":
            assert row[6] == "ok", row[6]
        else:
            assert row[6].startswith(f"{kind} ("), row[6]  # kind (rule id)
        assert row[7].startswith(decision.format(flake=flake)), row[7]
    # the log tail of the last failed attempt, folded: shown whenever an attempt failed
    details = [t.content.strip() for t in tokens if t.type == "html_block"]
    if any(kind != "ok" for _, _, kind, _ in scenario.attempts):
        failing = max(n for n, a in enumerate(scenario.attempts, start=1) if a[2] != "ok")
        assert details[0].startswith(f"<details><summary>Log tail of attempt {failing} ")
        assert details[1:] == ["</details>"]
        tail = [t for t in tokens if t.type == "fence"][-1].content
        assert "error: builder for " in tail
    else:
        assert details == []


def test_durations_in_the_golden_use_format_duration() -> None:
    """The normaliser's duration pattern covers every shape format_duration prints."""
    for seconds in (0, 0.1, 12.5, 59, 60, 502, 3600, 4210.2):
        assert _DURATION.fullmatch(format_duration(seconds)), format_duration(seconds)


# --- --fail-on-fallback, and the report flags -----------------------------------------------


def test_fail_on_fallback_exits_1_with_an_error(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    step_summary = tmp_path / "step-summary.md"
    run = run_scenario(
        "fallback",
        "github",
        flake,
        tmp_path,
        nix_env,
        NIXBUILD_FAIL_ON_FALLBACK="1",
        GITHUB_STEP_SUMMARY=str(step_summary),
    )
    assert run.result.returncode == 1, explain(run.result)
    summary = check_json_report(tmp_path / "report.json", run.run_dir)
    assert summary["status"] == "fallback" and summary["exit_code"] == 1
    annotations = check_github_console(run.result.stderr, 3)
    assert [a for a in annotations if a.startswith("::error")], annotations
    assert step_summary.read_text().startswith("## nixbuild failed: ")
    root = check_junit(tmp_path / "report.xml", summary, failed=True)
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert cases[f"path:{flake}#alwaysfail"].find("failure") is not None
    assert cases[f"path:{flake}#alwaysfail-bin"].find("failure") is None


@pytest.mark.parametrize("flag", ["--json", "--junit", "--ci-format", "--fail-on-fallback"])
def test_report_flags_on_the_command_line(
    nix_env: dict[str, str], flake: Path, tmp_path: Path, flag: str
) -> None:
    (flake / "nonce.txt").write_text(uuid.uuid4().hex)
    target = tmp_path / "report"
    args = {
        "--json": [f"path:{flake}#ok", "--json", str(target)],
        "--junit": [f"path:{flake}#ok", "--junit", str(target)],
        "--ci-format": [f"path:{flake}#ok", "--ci-format", "github"],
        "--fail-on-fallback": [
            f"path:{flake}#alwaysfail",
            "--fallback",
            f"path:{flake}#alwaysfail-bin",
            "--fail-on-fallback",
        ],
    }[flag]
    env = ci_env("plain")
    del env["CI"]  # a terminal-less run outside CI: only the flags say what to do
    result = nixbuild(
        "build",
        *args,
        "--cores",
        "2",
        "--log-dir",
        str(tmp_path / "logs"),
        "--out-link",
        str(tmp_path / "result"),
        cwd=tmp_path / "work",
        env=env,
    )
    match flag:
        case "--json":
            assert result.returncode == 0, explain(result)
            check_json_report(target, only_run_dir(tmp_path / "logs"))
        case "--junit":
            assert result.returncode == 0, explain(result)
            check_junit(
                target, read_json(only_run_dir(tmp_path / "logs") / "summary.json"), failed=False
            )
        case "--ci-format":
            assert result.returncode == 0, explain(result)
            check_github_console(result.stderr, 1)
        case _:
            assert result.returncode == 1, explain(result)


def test_report_paths_that_would_be_destroyed_are_refused_before_building(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    """Reports replace their file by renaming: over /dev/null or a FIFO that destroys it."""
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    long_name = tmp_path / ("r" * 300 + ".xml")
    env = ci_env("plain")
    for flag, target, message in [
        ("--json", fifo, "not a regular file"),
        ("--junit", Path("/dev/null"), "not a regular file"),
        ("--junit", long_name, "too long a name"),
        ("--json", tmp_path / ("d" * 300) / "x.json", "too long a name"),
    ]:
        result = nixbuild(
            "build", f"path:{flake}#ok", flag, str(target), "--log-dir", str(tmp_path / "logs"),
            cwd=tmp_path / "work", env=env,
        )  # fmt: skip
        assert result.returncode == 2, explain(result)
        assert message in result.stderr
        assert not (tmp_path / "logs").exists()  # refused before the run started
    assert fifo.is_fifo()
    assert Path("/dev/null").is_char_device()


def test_a_report_through_a_symlink_replaces_its_target_with_the_usual_mode(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    (tmp_path / "reports").mkdir()
    real = tmp_path / "reports" / "real.json"
    real.write_text("old")
    real.chmod(0o640)  # an existing report keeps its mode
    link = tmp_path / "link.json"
    link.symlink_to(real)
    new = tmp_path / ("n" * 251 + ".xml")  # a name at the file system's limit still works
    result = nixbuild(
        "build", f"path:{flake}#ok", "--json", str(link), "--junit", str(new),
        "--log-dir", str(tmp_path / "logs"), "--out-link", str(tmp_path / "result"),
        cwd=tmp_path / "work", env=ci_env("plain"),
    )  # fmt: skip
    assert result.returncode == 0, explain(result)
    assert link.is_symlink()
    assert read_json(real)["status"] == "success"
    assert real.stat().st_mode & 0o777 == 0o640
    umask = os.umask(0)
    os.umask(umask)
    assert new.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain write, not mkstemp's 0600


# --- nixbuild run -- <the command line of a CI workflow> ------------------------------------


def run_wrapped(
    tmp: Path, *command: str, flavour: str = "github", work: str = "work"
) -> subprocess.CompletedProcess[str]:
    return nixbuild(
        "run", "--log-dir", str(tmp / "logs"), "--", *command, cwd=tmp / work, env=ci_env(flavour)
    )


def fresh(flake: Path) -> Path:
    (flake / "nonce.txt").write_text(uuid.uuid4().hex)
    return flake


def test_run_nix_build_print_build_logs(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    result = run_wrapped(tmp_path, "nix", "build", "-L", f"path:{fresh(flake)}#ok")
    assert result.returncode == 0, explain(result)
    link = tmp_path / "work" / "result"
    assert link.resolve().name.endswith("-fixture-app-1.0")
    assert result.stdout.splitlines() == [str(link.resolve())]
    assert "fixture-app> Running phase: buildPhase" in result.stderr
    check_github_console(result.stderr, 1)
    command = (only_run_dir(tmp_path / "logs") / "command.txt").read_text()
    assert f"nix build -L 'path:{flake}#ok' --option cores " in command
    assert "--log-format internal-json -v" in command


def test_run_nix_build_no_link(nix_env: dict[str, str], flake: Path, tmp_path: Path) -> None:
    result = run_wrapped(tmp_path, "nix", "build", f"path:{fresh(flake)}#ok", "--no-link")
    assert result.returncode == 0, explain(result)
    assert list((tmp_path / "work").iterdir()) == []  # no result link
    summary = read_json(only_run_dir(tmp_path / "logs") / "summary.json")
    assert summary["status"] == "success" and summary["exit_code"] == 0  # from nix's exit status
    assert summary["gcroot"] is None


def test_run_says_a_configured_fallback_is_not_used(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    """`run --fallback` is refused; one from NIXBUILD_FALLBACK or a config file is not used,
    and says so rather than being silently ignored."""
    result = nixbuild(
        "run", "--log-dir", str(tmp_path / "logs"), "--",
        "nix", "build", f"path:{fresh(flake)}#ok", "--no-link",
        cwd=tmp_path / "work", env=ci_env("plain", NIXBUILD_FALLBACK="not even well formed"),
    )  # fmt: skip
    assert result.returncode == 0, explain(result)
    assert "`run` never falls back; fallback from NIXBUILD_FALLBACK unused" in result.stderr


def test_run_nix_build_out_link(nix_env: dict[str, str], flake: Path, tmp_path: Path) -> None:
    out = tmp_path / "dir" / "out"
    out.parent.mkdir()
    result = run_wrapped(tmp_path, "nix", "build", f"path:{fresh(flake)}#ok", "-o", str(out))
    assert result.returncode == 0, explain(result)
    assert out.resolve().name.endswith("-fixture-app-1.0")
    assert not (tmp_path / "work" / "result").exists()
    summary = read_json(only_run_dir(tmp_path / "logs") / "summary.json")
    assert summary["outputs"] == [str(out.resolve())]


def test_run_legacy_nix_build(nix_env: dict[str, str], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "default.nix").write_text(
        "derivation {\n"
        '  name = "legacy-hello";\n'
        '  system = "x86_64-linux";\n'
        '  builder = "/bin/bash";\n'
        f'  nonce = "{uuid.uuid4().hex}";\n'
        # ends on a builtin: Nix 2.8 may report an exec'ed last command as signal 9
        '  args = [ "-c" "echo hello from nix-build; /bin/mkdir $out; true" ];\n'
        "}\n"
    )
    result = run_wrapped(tmp_path, "nix-build")
    assert result.returncode == 0, explain(result)
    assert (work / "result").resolve().name.endswith("-legacy-hello")
    assert "hello from nix-build" in result.stderr
    log = (only_run_dir(tmp_path / "logs") / "attempt-1.log").read_text()
    assert "hello from nix-build" in log


def test_run_nix_develop_runs_the_command_once(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    result = run_wrapped(
        tmp_path,
        "nix",
        "develop",
        f"path:{fresh(flake)}#ok",
        "-c",
        "bash",
        "-c",
        f"echo hi; echo once >> {marker}",
    )
    assert result.returncode == 0, explain(result)
    assert result.stdout.splitlines().count("hi") == 1
    assert marker.read_text() == "once\n"
    run_dir = only_run_dir(tmp_path / "logs")
    command = (run_dir / "command.txt").read_text()
    assert "--command true" in command and "echo hi" not in command  # the shell, supervised
    assert "fixture-app-1.0-env" in (run_dir / "attempt-1.log").read_text()
    check_github_console(result.stderr, 1)


def test_run_nix_develop_failing_command_is_not_retried(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    result = run_wrapped(tmp_path, "nix", "develop", f"path:{fresh(flake)}#ok", "-c", "false")
    assert result.returncode == 1, explain(result)
    assert "the command in the dev shell failed (exit 1); it is not retried" in result.stderr
    summary = read_json(only_run_dir(tmp_path / "logs") / "summary.json")
    assert len(summary["attempts"]) == 1
    check_github_console(result.stderr, 1)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["nix", "shell", "path:{flake}#ok"], "`nix shell` is not supported"),
        (["nix-shell"], "nix-shell starts an interactive shell"),
        (["nix", "build", "--dry-run", "path:{flake}#ok"], "--dry-run cannot be supervised"),
        (["ls"], "'ls' is not a nix build command"),
    ],
)
def test_run_refuses_what_it_cannot_supervise(
    nix_env: dict[str, str], flake: Path, tmp_path: Path, command: list[str], message: str
) -> None:
    result = run_wrapped(tmp_path, *[c.format(flake=flake) for c in command])
    assert result.returncode == 2, explain(result)
    first, *rest = result.stderr.splitlines()
    assert first.startswith("nixbuild: error: nixbuild run: ") and message in first, first
    assert len(rest) <= 1 and all(line.startswith("  hint: ") for line in rest), rest
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "logs").exists()  # refused before anything ran


# --- exit 75: transient failures exhausted -------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: connecting is refused


def test_network_failure_exits_75_with_an_error_annotation(
    nix_env: dict[str, str], tmp_path: Path
) -> None:
    failures = tmp_path / "failures"
    shutil.copytree(FAILURES, failures)
    (failures / "nonce.txt").write_text(uuid.uuid4().hex)
    (failures / "url.txt").write_text(f"http://127.0.0.1:{closed_port()}/{uuid.uuid4().hex}.tgz")
    step_summary = tmp_path / "step-summary.md"
    env = ci_env(
        "github",
        NIXBUILD_NETWORK_RETRIES="1",
        NIXBUILD_JUNIT=str(tmp_path / "report.xml"),
        GITHUB_STEP_SUMMARY=str(step_summary),
    )
    result = nixbuild(
        "build",
        f"path:{failures}#network",
        "--log-dir",
        str(tmp_path / "logs"),
        "--out-link",
        str(tmp_path / "result"),
        "--",
        "--option",
        "download-attempts",  # nix's own retries with backoff would only slow the test down
        "1",
        cwd=tmp_path / "work",
        env=env,
    )
    assert result.returncode == 75, explain(result)
    summary = read_json(only_run_dir(tmp_path / "logs") / "summary.json")
    assert summary["exit_code"] == 75
    assert [a["diagnosis"]["kind"] for a in summary["attempts"]] == ["network", "network"]
    annotations = check_github_console(result.stderr, 2)
    (error,) = [a for a in annotations if a.startswith("::error")]
    assert error.startswith("::error title=nixbuild attempt 2%3A network (")
    assert "Couldn't connect to server" in error
    assert table_rows(md_tokens(step_summary.read_text()))[2][7].startswith("give up")
    root = check_junit(tmp_path / "report.xml", summary, failed=True)
    failure = root.find("testsuite/testcase/failure")
    assert failure is not None and failure.get("type") == "network"


def test_run_nix_develop_failing_command_is_in_the_reports(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    env = ci_env(
        "github",
        NIXBUILD_JSON=str(tmp_path / "report.json"),
        NIXBUILD_JUNIT=str(tmp_path / "report.xml"),
    )
    result = nixbuild(
        "run",
        "--log-dir",
        str(tmp_path / "logs"),
        "--",
        *("nix", "develop", f"path:{fresh(flake)}#ok", "-c", "false"),
        cwd=tmp_path / "work",
        env=env,
    )
    assert result.returncode == 1, explain(result)
    report = read_json(tmp_path / "report.json")
    assert report["exit_code"] == result.returncode
    root = ET.fromstring((tmp_path / "report.xml").read_text(encoding="utf-8"))
    assert root.find("testsuite/testcase/failure") is not None


# --- Buildkite: the annotation through buildkite-agent ---------------------------------------

# A stand-in for buildkite-agent (no Buildkite agent can run here): it records its arguments
# and the annotation body it is given on stdin, as the real `buildkite-agent annotate` reads it.
STAND_IN_AGENT = """#!/bin/sh
printf '%s\\n' "$@" > "$(dirname "$0")/argv"
cat > "$(dirname "$0")/stdin"
"""


def test_buildkite_annotation_through_the_agent(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    agent = bindir / "buildkite-agent"
    agent.write_text(STAND_IN_AGENT)
    agent.chmod(0o755)
    path = f"{bindir}{os.pathsep}{os.environ['PATH']}"
    run = run_scenario("fallback", "buildkite", flake, tmp_path, nix_env, PATH=path)
    assert run.result.returncode == 0, explain(run.result)
    argv = (bindir / "argv").read_text().splitlines()
    assert argv == ["annotate", "--style", "warning", "--context", "nixbuild"]
    rows = table_rows(md_tokens((bindir / "stdin").read_text()))
    assert len(rows) == 1 + len(SCENARIOS["fallback"].attempts)
    assert rows[3][1] == f"path:{flake}#alwaysfail-bin"
