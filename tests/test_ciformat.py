"""CI console formats: detection, GitHub escaping, groups/sections, annotations, final hooks.

Golden transcripts: for each flavour and each of the four summaries under
tests/golden/summaries/, the full sequence of lines a run prints (attempt start, a stand-in
for nix's log, a heartbeat, attempt end with the failure block, final lines) is compared with
tests/golden/ci/<flavour>/<summary>.txt, ESC and CR made visible as \\e and \\r. Regenerate
after an intended change with

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_ciformat.py

Beyond the goldens, each flavour's transcript is checked by what its CI does with it: a small
model of the GitHub runner's command processing (stop-commands, groups), GitLab's section
pairing, Buildkite's group markers.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from ci_models import github_runner
from hypothesis import given, settings
from hypothesis import strategies as st

from nixbuild import ciformat, summaryview
from nixbuild.cidetect import Flavor, detect_ci, parse_flavor
from nixbuild.ciformat import (
    MAX_ANNOTATIONS,
    BuildkiteRenderer,
    CiRenderer,
    GithubRenderer,
    GitlabRenderer,
    PlainRenderer,
    gh_command,
    gh_escape_data,
    gh_escape_property,
    publish_summary,
    renderer_for,
)
from nixbuild.errors import UsageError
from nixbuild.model import AttemptSpec, Variant
from nixbuild.summaryview import heartbeat_text, read_summary

GOLDEN = Path(__file__).parent / "golden"
NAMES = ("success", "retried", "fallback", "failed")
TOKEN = "f1x3dt0k3n"
NOW = 1764812400.0
STORE = "/nix/store"  # only a string here: a path as nix prints it in error positions
TAIL = (
    "fixture-app> gcc -c src/main.c -o main.o",
    "::error::a build log line that looks like a workflow command",
    "fixture-app> make: *** [Makefile:12: main.o] Error 1",
)


def summary(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / "summaries" / f"{name}.json").read_text())
    return data


def renderer(flavor: Flavor) -> CiRenderer:
    return renderer_for(flavor, token=TOKEN, clock=lambda: NOW)


def transcript(r: CiRenderer, data: Mapping[str, Any], total: int = 6) -> list[str]:
    lines: list[str] = []
    for a in data["attempts"]:
        lines += r.attempt_start(a, total=total)
        lines.append(f"<nix log of attempt {a['number']}>")
        lines.append("::endgroup::  <- a raw build log line that looks like a workflow command")
        lines.append(
            r.heartbeat(
                attempt=a["number"], total=total, elapsed_s=600, silent_s=300, activity="cc1plus"
            )
        )
        lines += r.attempt_end(a, log_tail=TAIL if a["diagnosis"] else ())
    lines += r.final(data)
    return lines


def visible(lines: Sequence[str]) -> str:
    return "\n".join(lines).replace("\x1b", "\\e").replace("\r", "\\r") + "\n"


def check_golden(path: Path, text: str) -> None:
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), f"{path} differs (UPDATE_GOLDEN=1 to accept)"


# --- detection ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "flavor"),
    [
        ({"GITHUB_ACTIONS": "true", "CI": "true"}, Flavor.GITHUB),
        ({"GITLAB_CI": "true", "CI": "true"}, Flavor.GITLAB),
        ({"BUILDKITE": "true", "CI": "true"}, Flavor.BUILDKITE),
        ({"CI": "true"}, Flavor.PLAIN),
        ({"CI": "1"}, Flavor.PLAIN),
        ({"CI": "false"}, Flavor.TERMINAL),
        ({"GITHUB_ACTIONS": "false"}, Flavor.TERMINAL),
        ({}, Flavor.TERMINAL),
    ],
)
def test_detect_ci(environ: dict[str, str], flavor: Flavor) -> None:
    assert detect_ci(environ) is flavor


def test_ci_format_override_wins() -> None:
    assert detect_ci({"GITHUB_ACTIONS": "true"}, "gitlab") is Flavor.GITLAB
    assert detect_ci({}, "Buildkite") is Flavor.BUILDKITE
    assert parse_flavor("plain") is Flavor.PLAIN


def test_unknown_ci_format_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown CI format 'jenkins'") as info:
        parse_flavor("jenkins")
    assert "github, gitlab, buildkite, plain" in str(info.value)


# --- GitHub workflow-command escaping ------------------------------------------------------------


def runner_unescape(text: str, *, prop: bool) -> str:
    """What the Actions runner undoes (ActionCommand.cs: %25 last)."""
    pairs = [("%0D", "\r"), ("%0A", "\n")]
    if prop:
        pairs += [("%3A", ":"), ("%2C", ",")]
    for escaped, plain in [*pairs, ("%25", "%")]:
        text = text.replace(escaped, plain)
    return text


def runner_parse(line: str) -> tuple[str, dict[str, str], str]:
    """Parse ``::name k=v,k=v::message`` the way the runner does."""
    assert line.startswith("::")
    head, sep, message = line[2:].partition("::")
    assert sep, line
    name, _, props = head.partition(" ")
    properties = {}
    for pair in filter(None, props.split(",")):
        key, _, value = pair.partition("=")
        properties[key] = runner_unescape(value, prop=True)
    return name, properties, runner_unescape(message, prop=False)


def test_escaping_matches_the_toolkit() -> None:
    assert gh_escape_data("50% done\r\nnext: a,b") == "50%25 done%0D%0Anext: a,b"
    assert gh_escape_property("50% done\r\nnext: a,b") == "50%25 done%0D%0Anext%3A a%2Cb"
    assert gh_command("warning", "m") == "::warning::m"
    assert gh_command("error", "m", {"title": "a: b", "file": None}) == "::error title=a%3A b::m"


@given(title=st.text(), file=st.text(), message=st.text())
def test_any_annotation_round_trips_through_the_runner(title: str, file: str, message: str) -> None:
    line = gh_command("error", message, {"title": title, "file": file})
    assert "\n" not in line
    assert "\r" not in line
    name, props, back = runner_parse(line)
    assert name == "error"
    assert back == message
    assert props.get("title", "") == title
    assert props.get("file", "") == file


# --- annotations ---------------------------------------------------------------------------------


def gh_annotations(data: Mapping[str, Any]) -> list[tuple[str, dict[str, str], str]]:
    lines = renderer(Flavor.GITHUB).final(data)
    return [runner_parse(line) for line in lines if re.match(r"::(error|warning)", line)]


def test_deterministic_failure_is_one_error_with_evidence() -> None:
    ((name, props, message),) = gh_annotations(summary("failed"))
    assert name == "error"
    assert props == {"title": "nixbuild attempt 1: hash (hash.fixed-output-mismatch)"}
    assert message.splitlines()[0].startswith("A fixed-output derivation produced")
    assert message.splitlines()[1].startswith("attempt-1.log:12: error: hash mismatch")
    assert message.splitlines()[-1] == "decision: give up: hash mismatches are deterministic"


@pytest.mark.parametrize(
    ("text", "workspace", "position"),
    [
        # nix 2.8's message for an undefined variable in a flake (its store copy)
        ("       at /nix/store/rb0x1pkqrqv7adq6aw2l8pypp2pwvy5v-source/nix/pkgs.nix:5:21:",
         None, ("nix/pkgs.nix", "5", "21")),
        ("at /home/runner/work/app/app/default.nix:12:3:", "/home/runner/work/app/app",
         ("default.nix", "12", "3")),
        ("at /home/runner/work/app/app/default.nix:12:3:", None, None),
        ("at /etc/nix/nix.conf:1:1", "/home/runner/work/app/app", None),
        ("error: builder failed with exit code 1", None, None),
    ],
)  # fmt: skip
def test_source_position_of_nix_errors(
    text: str, workspace: str | None, position: tuple[str, str, str] | None
) -> None:
    assert ciformat.source_position([text], workspace) == position


def test_eval_error_annotation_points_at_the_source_line() -> None:
    data = summary("failed")
    data["attempts"][0]["diagnosis"] = {
        "kind": "eval",
        "rule": "eval.undefined-variable",
        "explanation": "evaluation failed: undefined variable 'undefinedThing'",
        "evidence": [
            {"line": 3, "text": "error: undefined variable 'undefinedThing'"},
            {"line": 5, "text": f"  at {STORE}/{'r' * 32}-source/flake.nix:5:21:"},
        ],
    }  # fmt: skip
    ((name, props, _),) = gh_annotations(data)
    assert (name, props["file"], props["line"], props["col"]) == ("error", "flake.nix", "5", "21")


def test_recovered_failures_are_warnings_and_success_has_none() -> None:
    assert gh_annotations(summary("success")) == []
    ((name, props, _),) = gh_annotations(summary("retried"))
    assert (name, props["title"]) == ("warning", "nixbuild attempt 1: network (network.curl-error)")
    kinds = [(n, p["title"]) for n, p, _ in gh_annotations(summary("fallback"))]
    assert kinds == [
        ("warning", "nixbuild: built the fallback variant"),
        ("warning", "nixbuild attempt 1: oom (oom.cc1plus-killed)"),
        ("warning", "nixbuild attempt 2: oom (oom.signal-9)"),
    ]


def test_long_evidence_lines_are_shortened_in_annotations() -> None:
    data = summary("failed")
    data["attempts"][0]["diagnosis"]["evidence"] = [{"line": 1, "text": "x" * 5000}]
    ((_, _, message),) = gh_annotations(data)
    assert len(message.splitlines()[1]) == 400
    assert message.splitlines()[1].endswith("…")


def test_fallback_refused_by_fail_on_fallback_is_an_error() -> None:
    data = {**summary("fallback"), "exit_code": 1}
    kinds = [(n, p["title"]) for n, p, _ in gh_annotations(data)]
    assert kinds[0] == ("error", "nixbuild attempt 2: oom (oom.signal-9)")
    assert ("warning", "nixbuild: built the fallback variant") in kinds
    assert ciformat.buildkite_style(read_summary(data)) == "error"


@pytest.mark.parametrize(
    ("status", "exit_code", "style"),
    [
        ("success", 0, "success"),
        ("fallback", 0, "warning"),
        ("fallback", 1, "error"),
        ("failed", 1, "error"),
        ("failed", 75, "error"),
        ("interrupted", 130, "warning"),
        ("refused", 3, "error"),
    ],
)
def test_buildkite_style(status: str, exit_code: int, style: str) -> None:
    run = read_summary({"status": status, "exit_code": exit_code})
    assert ciformat.buildkite_style(run) == style


def test_at_most_a_few_annotations_per_run() -> None:
    data = summary("failed")
    first = data["attempts"][0]
    data["attempts"] = [
        {**first, "number": n, "diagnosis": {**first["diagnosis"], "rule": f"rule.{n}"}}
        for n in range(1, 11)
    ]
    found = gh_annotations(data)
    assert len(found) == MAX_ANNOTATIONS
    assert found[0][0] == "error"
    assert "attempt 10" in found[0][1]["title"]


# --- what each CI makes of the transcript -------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_github_groups_attempts_and_never_executes_log_lines(name: str) -> None:
    data = summary(name)
    lines = transcript(renderer(Flavor.GITHUB), data)
    executed, shown = github_runner(lines)
    groups = [c for c in executed if c.startswith(("::group::", "::endgroup::"))]
    assert [g.split("::")[1] for g in groups] == ["group", "endgroup"] * len(data["attempts"])
    assert groups[0] == (
        f"::group::attempt 1/6: {' '.join(data['attempts'][0]['command'])} "
        f"(cores {data['attempts'][0]['cores']}, max-jobs {data['attempts'][0]['max_jobs']})"
    )
    # the log and the quoted tail are shown, never executed
    assert not any("looks like a workflow command" in c for c in executed)
    assert sum("raw build log line" in x for x in shown) == len(data["attempts"])
    assert sum("<nix log of attempt" in s for s in shown) == len(data["attempts"])


def test_github_failure_block_is_printed_outside_the_group() -> None:
    lines = transcript(renderer(Flavor.GITHUB), summary("failed"))
    end = lines.index("::endgroup::")
    block = next(i for i, line in enumerate(lines) if "attempt 1 failed" in line)
    assert block > end
    assert "  evidence: line 12: error: hash mismatch" in lines[block + 3]


def test_gitlab_sections_pair_up_and_failures_are_expanded() -> None:
    lines = transcript(renderer(Flavor.GITLAB), summary("fallback"))
    starts = [re.search(r"section_start:(\d+):(\w+)(\[collapsed=true\])?\r", x) for x in lines]
    ends = [re.search(r"section_end:(\d+):(\w+)\r", x) for x in lines]
    opened = [(m.group(2), bool(m.group(3))) for m in starts if m]
    closed = [m.group(2) for m in ends if m]
    assert opened == [
        ("nixbuild_attempt_1", True),
        ("nixbuild_attempt_1_failure", False),
        ("nixbuild_attempt_2", True),
        ("nixbuild_attempt_2_failure", False),
        ("nixbuild_attempt_3", True),
    ]
    assert closed == [name for name, _ in opened]
    stack: list[str] = []
    for line in lines:  # properly nested: each end closes the innermost open section
        if m := re.search(r"section_start:\d+:(\w+)", line):
            stack.append(m.group(1))
        elif m := re.search(r"section_end:\d+:(\w+)", line):
            assert stack.pop() == m.group(1)
    assert all(m.group(1) == str(int(NOW)) for m in [*starts, *ends] if m)


def test_buildkite_expands_the_group_of_a_failed_attempt() -> None:
    lines = transcript(renderer(Flavor.BUILDKITE), summary("fallback"))
    headers = [x for x in lines if x.startswith(("--- ", "+++ ", "~~~ ", "^^^ +++"))]
    assert [h.split(":")[0] for h in headers] == [
        "--- attempt 1/6", "^^^ +++", "--- attempt 2/6", "^^^ +++", "--- attempt 3/6",
    ]  # fmt: skip


@pytest.mark.parametrize("flavor", [Flavor.GITHUB, Flavor.BUILDKITE, Flavor.PLAIN])
@pytest.mark.parametrize("name", NAMES)
def test_no_ansi_outside_gitlab(flavor: Flavor, name: str) -> None:
    data = summary(name)
    data["attempts"][0]["installable"] = "\x1b[1m.#bold\x1b[0m"
    assert "\x1b" not in "".join(transcript(renderer(flavor), data))


@pytest.mark.parametrize("name", NAMES)
def test_gitlab_uses_only_its_section_control_sequences(name: str) -> None:
    text = "".join(transcript(renderer(Flavor.GITLAB), summary(name)))
    assert set(re.findall(r"\x1b\[[0-9;]*[A-Za-z]", text)) <= {"\x1b[0K"}
    assert text.count("\x1b") == text.count("\x1b[0K")


@pytest.mark.parametrize("flavor", [Flavor.GITHUB, Flavor.GITLAB, Flavor.BUILDKITE, Flavor.PLAIN])
@pytest.mark.parametrize("name", NAMES)
def test_transcript_golden(flavor: Flavor, name: str) -> None:
    text = visible(transcript(renderer(flavor), summary(name)))
    check_golden(GOLDEN / "ci" / str(flavor) / f"{name}.txt", text)


@pytest.mark.parametrize(
    ("variables", "flavor"),
    [
        ({"GITHUB_ACTIONS": "true", "CI": "true"}, Flavor.GITHUB),
        ({"GITLAB_CI": "true", "CI": "true"}, Flavor.GITLAB),
        ({"BUILDKITE": "true", "CI": "true"}, Flavor.BUILDKITE),
        ({"CI": "true"}, Flavor.PLAIN),
    ],
)
def test_ci_variables_in_the_environment_select_the_golden_transcript(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], flavor: Flavor
) -> None:
    for name in ("GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "CI"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    detected = detect_ci(os.environ)
    assert detected is flavor
    text = visible(transcript(renderer(detected), summary("retried")))
    assert text == (GOLDEN / "ci" / str(flavor) / "retried.txt").read_text(encoding="utf-8")


def test_terminal_and_plain_get_the_plain_renderer() -> None:
    assert isinstance(renderer_for(Flavor.TERMINAL), PlainRenderer)
    assert type(renderer_for(Flavor.PLAIN)) is PlainRenderer
    assert isinstance(renderer_for(Flavor.GITHUB), GithubRenderer)
    assert isinstance(renderer_for(Flavor.GITLAB), GitlabRenderer)
    assert isinstance(renderer_for(Flavor.BUILDKITE), BuildkiteRenderer)


def test_github_token_is_random_by_default() -> None:
    assert GithubRenderer().token != GithubRenderer().token


def test_heartbeat_text() -> None:
    line = heartbeat_text(
        attempt=2, total=6, elapsed_s=3725, silent_s=600, activity="building '/nix/store/x.drv'"
    )
    assert line == (
        "nixbuild: still building (attempt 2/6, 1h 02m 05s elapsed, no output for 10m 00s; "
        "last activity: building '/nix/store/x.drv')"
    )


def test_group_title_shows_the_command_as_the_user_would_write_it() -> None:
    argv = [
        "/usr/bin/nix", "--extra-experimental-features", "nix-command flakes", "build", ".#torch",
        "--out-link", "/build/project/result", "--option", "cores", "8", "--option", "max-jobs",
        "1", "--log-format", "internal-json", "-v", "--impure", "--option", "sandbox", "false",
    ]  # fmt: skip
    attempt = {"number": 1, "command": argv, "cores": 8, "max_jobs": 1}
    assert renderer(Flavor.GITHUB).attempt_start(attempt, total=6)[0] == (
        "::group::attempt 1/6: nix build .#torch --impure --option sandbox false "
        "(cores 8, max-jobs 1)"
    )
    develop = ["nix", "develop", ".#ci", "--profile", "p", "-v", "--command", "pytest", "-v"]
    assert summaryview.short_command(develop) == "nix develop .#ci --command pytest -v"


def test_attempt_start_from_a_spec_before_the_attempt_has_a_record() -> None:
    spec = AttemptSpec(".#torch-bin", cores=4, max_jobs=1, variant=Variant.BIN)
    started = ciformat.attempt_started(3, spec, ["nix", "build", ".#torch-bin"])
    assert renderer(Flavor.GITHUB).attempt_start(started, total=6)[0] == (
        "::group::attempt 3/6: nix build .#torch-bin (cores 4, max-jobs 1)"
    )
    assert set(started) <= set(summary("success")["attempts"][0])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
attempt_keys = ("number", "installable", "variant", "cores", "max_jobs", "command",
                "duration_s", "exit_status", "diagnosis", "decision", "log")  # fmt: skip
diagnoses = st.fixed_dictionaries(
    {}, optional=dict.fromkeys(("kind", "rule", "drv", "explanation", "evidence"), json_values)
)
attempts = st.dictionaries(st.sampled_from(attempt_keys), json_values | diagnoses, max_size=11)
summaries = st.fixed_dictionaries(
    {"attempts": st.lists(attempts, max_size=3)},
    optional=dict.fromkeys(("installable", "status", "exit_code", "variant"), json_values),
)


@settings(max_examples=200, deadline=None)
@given(data=summaries, tail=st.lists(st.text(), max_size=3))
def test_any_summary_renders_as_single_clean_lines(data: dict[str, Any], tail: list[str]) -> None:
    for flavor in (Flavor.GITHUB, Flavor.GITLAB, Flavor.BUILDKITE, Flavor.PLAIN):
        r = renderer(flavor)
        lines: list[str] = []
        for a in data["attempts"]:
            lines += r.attempt_start(a, total=3)
            lines += r.attempt_end(a, log_tail=tail)
        lines += r.final(data)
        for line in lines:
            assert "\n" not in line
            if flavor is Flavor.GITLAB:  # only its section markers: ESC[0K and CR before one
                rest = line.replace("\r\x1b[0K", "").replace("\x1b[0K", "")
                assert "\x1b" not in rest
                assert "\r" not in rest
            else:
                assert "\x1b" not in line
                assert "\r" not in line
        if flavor is Flavor.GITHUB:
            github_runner(lines)  # stop-commands always resumed


def test_renderers_tolerate_a_bare_attempt() -> None:
    for flavor in Flavor:
        r = renderer(flavor)
        assert r.attempt_start({}, total=None)
        assert r.attempt_end({"exit_status": 1})
        assert r.final({})


# --- the final summary hooks ---------------------------------------------------------------------


def test_github_appends_the_step_summary(tmp_path: Path) -> None:
    target = tmp_path / "step_summary.md"
    target.write_text("from an earlier step\n")
    env = {"GITHUB_STEP_SUMMARY": str(target)}
    assert publish_summary(Flavor.GITHUB, summary("failed"), TAIL, environ=env) == []
    text = target.read_text()
    assert text.startswith("from an earlier step\n## nixbuild failed")
    assert "| 1 | .\\#app | source | 2 | 1 |" in text


def test_github_step_summary_problems_do_not_fail_the_build(tmp_path: Path) -> None:
    env = {"GITHUB_STEP_SUMMARY": str(tmp_path / "missing-dir" / "f.md")}
    (line,) = publish_summary(Flavor.GITHUB, summary("success"), environ=env)
    assert line.startswith("nixbuild: could not write the step summary")
    assert publish_summary(Flavor.GITHUB, summary("success"), environ={}) == []


def fake_agent(tmp_path: Path, status: int = 0) -> Path:
    """A stand-in buildkite-agent (the real one needs a Buildkite backend): records its call."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "buildkite-agent"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > "{tmp_path}/argv"\n'
        f'cat > "{tmp_path}/stdin"\n'
        f'[ {status} -eq 0 ] || echo "fatal: no agent access token" >&2\n'
        f"exit {status}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bindir


@pytest.mark.parametrize(
    ("name", "style"), [("success", "success"), ("fallback", "warning"), ("failed", "error")]
)
def test_buildkite_annotates_through_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, style: str
) -> None:
    monkeypatch.setenv("PATH", f"{fake_agent(tmp_path)}:{os.environ['PATH']}")
    assert publish_summary(Flavor.BUILDKITE, summary(name), TAIL) == []
    argv = (tmp_path / "argv").read_text().split("\n")[:-1]
    assert argv == ["annotate", "--style", style, "--context", "nixbuild"]
    assert (tmp_path / "stdin").read_text().startswith("## nixbuild ")


def test_buildkite_agent_failure_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{fake_agent(tmp_path, status=1)}:{os.environ['PATH']}")
    (line,) = publish_summary(Flavor.BUILDKITE, summary("failed"))
    assert line == "nixbuild: buildkite-agent annotate failed (exit 1) fatal: no agent access token"


def test_buildkite_without_agent_does_nothing(tmp_path: Path) -> None:
    assert publish_summary(Flavor.BUILDKITE, summary("failed"), which=lambda _: None) == []
    assert publish_summary(Flavor.GITLAB, summary("failed")) == []
