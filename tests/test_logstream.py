"""The internal-json parser: recorded real Nix 2.8 streams, newer-format lines, garbage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixbuild import logevents as ev
from nixbuild import logstream as ls
from nixbuild.model import Source

FIXTURES = Path(__file__).parent / "fixtures" / "internal-json"


def fold(lines: list[str]) -> tuple[ls.LogState, list[str]]:
    state = ls.LogState()
    human: list[str] = []
    for raw in lines:
        human.extend(line.text for line in state.apply(ev.parse_line(raw)))
    return state, human


def read(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


def test_recorded_success_chain_gives_nix_l_style_lines_and_progress() -> None:
    state, human = fold(read("nix28-success-chain.jsonl"))
    assert any(
        t.startswith("building '/nix/store/") and t.endswith("fixture-lib-1.0.drv'...")
        for t in human
    )
    assert "fixture-lib> compiling lib with 2 cores" in human
    assert "fixture-app> Running phase: buildPhase" in human
    assert state.builds.done == state.builds.expected == 3
    assert state.builds.failed == 0
    assert state.running_drvs() == []  # every build activity stopped


def test_recorded_dependency_failure_keeps_nix_errors_and_tails() -> None:
    state, human = fold(read("nix28-dependency-failure.jsonl"))
    errors = [t for t in human if t.startswith("error:")]
    assert errors[0].startswith("error: builder for '/nix/store/")
    assert errors[0].endswith("fixture-fail-1.0.drv' failed with exit code 1")
    assert "failed to build" in errors[-1]
    assert all("\x1b" not in t for t in human)  # colours stripped
    fail_drv = next(d for d in state.tails if d.endswith("fixture-fail-1.0.drv"))
    assert list(state.tails[fail_drv])[-1] == "make: *** [Makefile:12: main.o] Error 1"


def test_recorded_missing_attribute_is_one_nix_error() -> None:
    _, human = fold(read("nix28-missing-attribute.jsonl"))
    assert [t for t in human if t.startswith("error:")] == [
        "error: flake 'path:/build/fixture' does not provide attribute "
        "'packages.x86_64-linux.nope', 'legacyPackages.x86_64-linux.nope' or 'nope'"
    ]


def at(obj: dict[str, object]) -> str:
    return "@nix " + json.dumps(obj)


def test_newer_format_parent_links_and_unknown_types_pass_through() -> None:
    drv = "/nix/store/aaaa-python3.12-torch-2.5.1.drv"
    lines = [
        at(
            {
                "action": "start",
                "id": 1,
                "level": 3,
                "type": 105,
                "text": f"building '{drv}'",
                "fields": [drv, "", 1, 1],
                "parent": 0,
            }
        ),
        # a child activity of the build (newer nix links them with `parent`)
        at({"action": "start", "id": 2, "level": 4, "type": 112, "text": "fetching", "parent": 1}),
        at({"action": "result", "id": 2, "type": 101, "fields": ["[ 1%] Building CXX object"]}),
        at({"action": "result", "id": 1, "type": 108, "fields": ["some", "new", "result"]}),
        at({"action": "mystery", "id": 3}),
        at(
            {
                "action": "msg",
                "level": 0,
                "msg": f"\x1b[31;1merror:\x1b[0m Cannot build '{drv}'.\n"
                "       Reason: builder failed with exit code 2.",
            }
        ),
    ]
    events = [ev.parse_line(line) for line in lines]
    assert isinstance(events[3], ev.Other) and isinstance(events[4], ev.Other)
    _, human = fold(lines)
    assert "python3.12-torch> [ 1%] Building CXX object" in human
    assert f"error: Cannot build '{drv}'." in human
    assert "       Reason: builder failed with exit code 2." in human


@pytest.mark.parametrize(
    "raw",
    [
        "@nix {not json",
        "@nix [1, 2, 3]",
        "@nix " + "[" * 100000,
        '@nix {"action": "result", "id": "x", "type": 101, "fields": "nope"}',
        '@nix {"action": "start", "id": 5, "type": 105, "fields": [42]}',
        "plain text from a --command program",
        "\udcff\udcfe broken utf-8 after replacement",
        "",
    ],
)
def test_garbage_never_raises(raw: str) -> None:
    state = ls.LogState()
    for line in state.apply(ev.parse_line(raw)):
        assert isinstance(line.text, str)


def test_plain_lines_are_kept_as_build_output() -> None:
    state = ls.LogState()
    (line,) = state.apply(ev.parse_line("pytest: 3 passed"))
    assert line.text == "pytest: 3 passed" and line.source is Source.BUILD


def test_tails_are_bounded() -> None:
    drv = "/nix/store/bbbb-chatty-1.0.drv"
    state = ls.LogState(tail_lines=5)
    state.apply(
        ev.parse_line(
            at({"action": "start", "id": 9, "type": 105, "level": 3, "text": "", "fields": [drv]})
        )
    )
    for i in range(10_000):
        state.apply(
            ev.parse_line(at({"action": "result", "id": 9, "type": 101, "fields": [f"l{i}"]}))
        )
    assert list(state.tails[drv]) == [f"l{i}" for i in range(9995, 10_000)]


@pytest.mark.parametrize(
    ("drv", "prefix"),
    [
        ("/nix/store/abc-python3.12-torch-2.5.1.drv", "python3.12-torch"),
        ("/nix/store/abc-fixture-app-1.0.drv", "fixture-app"),
        ("/nix/store/abc-hello.drv", "hello"),
        ("/nix/store/abc-source", "source"),
    ],
)
def test_log_prefix_matches_nix_drvname(drv: str, prefix: str) -> None:
    assert ev.log_prefix(drv) == prefix


def test_tails_are_kept_for_recent_derivations_only() -> None:
    state = ls.LogState(tail_lines=2, max_tails=3)
    for n in range(10):
        drv = f"/nix/store/h{n}-pkg{n}-1.0.drv"
        state.apply(ev.Start(n, ev.ACT_BUILD, 3, "", None, (drv,)))
        state.apply(ev.BuildLogLine(n, f"line of {n}"))
    assert [d.rsplit("-", 2)[-2] for d in state.tails] == ["pkg7", "pkg8", "pkg9"]


@given(st.text(), st.integers(min_value=0, max_value=2**62), st.sampled_from([101, 107]))
def test_fast_path_agrees_with_the_json_parser(text: str, act_id: int, rtype: int) -> None:
    # nix writes keys sorted and compact; the fast path must read exactly what json would
    line = "@nix " + json.dumps(
        {"action": "result", "fields": [text], "id": act_id, "type": rtype},
        separators=(",", ":"),
        sort_keys=True,
    )
    event = ev.parse_line(line)
    assert event == ev.parse_json_line(line) == ev.BuildLogLine(act_id, ev.strip_ansi(text))


@pytest.mark.parametrize(
    "line",
    [
        '@nix {"action":"result","fields":["a"],"id":1,"type":105}',  # not a log line
        '@nix {"action":"result","fields":["a","b"],"id":1,"type":101}',  # two fields
        '@nix {"action":"result","fields":["unterminated',
        '@nix {"action":"result","fields":["x"],"id":-1,"type":101}',
    ],
)
def test_fast_path_declines_other_shapes(line: str) -> None:
    assert ev.parse_line(line) == ev.parse_json_line(line)


def _builder_line(act_id: int, text: str, rtype: int = 101) -> str:
    fields = {"action": "result", "fields": [text], "id": act_id, "type": rtype}
    return "@nix " + json.dumps(fields, separators=(",", ":"), sort_keys=True)


_STARTS = [
    '@nix {"action":"start","id":1,"level":3,"parent":0,"text":"building","type":105,'
    '"fields":["/nix/store/aaaa-demo-1.0.drv","",1,1]}',
    '@nix {"action":"start","id":2,"level":3,"parent":0,"text":"building","type":105,'
    '"fields":["/nix/store/bbbb-other-2.0.drv","",1,1]}',
    '@nix {"action":"start","id":3,"level":4,"parent":2,"text":"child","type":0,"fields":[]}',
    '@nix {"action":"stop","id":1}',
]
_LINES = st.one_of(
    st.sampled_from(_STARTS),
    st.builds(
        _builder_line,
        st.sampled_from([1, 2, 3, 4]),
        st.text(max_size=20) | st.just("\x1b[1mbold\x1b[0m"),
        st.sampled_from([101, 107]),
    ),
    st.text(max_size=30),
    st.just('@nix {"action":"result","fields":["unterminated'),
)


@given(st.lists(_LINES, max_size=40))
def test_apply_lines_is_the_per_line_path(raws: list[str]) -> None:
    batched, one_by_one = ls.LogState(), ls.LogState()
    expected = [human for raw in raws for human in one_by_one.apply(ev.parse_line(raw))]
    assert batched.apply_lines(raws) == expected
    assert batched.tails == one_by_one.tails
    assert batched.drv_of == one_by_one.drv_of
