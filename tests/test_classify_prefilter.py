"""The prefilter may skip a line only when no rule could match it.

Two facts make that so, and each has a test here: the prefilter regex finds a line exactly
when one of the keywords occurs in it (whatever anchors it was built with), and every
rule's pattern can only match text that contains one of that rule's keywords (checked on
the parsed pattern, so a new rule whose keywords do not cover its pattern fails here).
"""

from __future__ import annotations

import re
import re._constants as sre_c  # type: ignore[import-not-found]
import re._parser as sre_parse  # type: ignore[import-not-found]

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixbuild.classify import _PREFILTER, RULES, Rule
from nixbuild.classify_prefilter import Prefilter, choose_anchors, pattern_for
from nixbuild.model import Source

ALL_KEYWORDS = sorted({k for rule in RULES for k in rule.keywords})
# Pieces that build near-misses: every keyword cut in two, plus the keywords themselves.
PIECES = sorted(
    set(ALL_KEYWORDS)
    | {k[:i] for k in ALL_KEYWORDS for i in range(1, len(k))}
    | {k[i:] for k in ALL_KEYWORDS for i in range(1, len(k))}
)
texts = st.lists(
    st.one_of(st.sampled_from(PIECES), st.text(max_size=4), st.sampled_from(" ':/-_>")),
    max_size=12,
).map("".join)


def _expected_numbers(prefilter: Prefilter, text: str) -> list[int]:
    entries = [entry for group in prefilter.by_anchor.values() for entry in group]
    return sorted({n for k, ns in entries if k in text for n in ns})


@given(texts)
def test_the_prefilter_finds_a_line_exactly_when_it_holds_a_keyword(text: str) -> None:
    for source, prefilter in _PREFILTER.items():
        has_keyword = any(k in text for k in prefilter.keywords())
        assert (prefilter.pattern.search(text) is not None) == has_keyword, (source, text)
        if has_keyword:
            assert prefilter.rule_numbers(text) == _expected_numbers(prefilter, text)


@given(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=8), texts)
def test_any_keyword_set_gives_an_exact_prefilter(words: list[str], text: str) -> None:
    anchors = choose_anchors(words)
    pattern = re.compile(pattern_for(anchors))
    assert (pattern.search(text) is not None) == any(w in text for w in words)
    for word in words:
        assert pattern.search(f"{text}{word}{text}")
    # The locating form reports the anchor of every keyword that occurs, and no other.
    found = set(re.compile(pattern_for(anchors, consume=False)).findall(text))
    assert found == {anchors[w] for w in words if w in text}


def test_every_keyword_has_an_anchor_of_its_own_characters() -> None:
    anchors = choose_anchors(ALL_KEYWORDS)
    assert all(anchors[k] in k for k in ALL_KEYWORDS)
    assert not re.compile(pattern_for({})).search("anything")


# -- every rule's pattern implies one of its keywords ------------------------------------

_SMALL_CLASS = 2  # [Mm] and the like: each member is followed as its own alternative
_MAX_PATHS = 4096


def _paths(items: object) -> list[list[str]]:
    """Each way through a parsed pattern, as the literal runs every match along it contains.

    Conservative: a run ends at anything that is not a fixed character (a class, a repeat,
    a wildcard), so a run found here is text the match certainly holds. The last run of a
    path is still open: what follows the pattern's part continues it."""
    paths: list[list[str]] = [[""]]

    def extend(alternatives: list[list[str]]) -> None:
        nonlocal paths
        paths = [[*p[:-1], p[-1] + alt[0], *alt[1:]] for p in paths for alt in alternatives]
        assert len(paths) <= _MAX_PATHS, "pattern too branchy for this check"

    def cut() -> None:
        for path in paths:
            path.append("")

    for op, arg in items:  # type: ignore[attr-defined]
        if op is sre_c.LITERAL:
            extend([[chr(arg)]])
        elif (
            op is sre_c.IN and len(arg) <= _SMALL_CLASS and all(o is sre_c.LITERAL for o, _ in arg)
        ):
            extend([[chr(a)] for _, a in arg])
        elif op is sre_c.SUBPATTERN:
            extend(_paths(arg[3]))
        elif op is sre_c.BRANCH:
            extend([alt for sub in arg[1] for alt in _paths(sub)])
        elif op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT) and (arg[0], arg[1]) == (0, 1):
            extend([[""], *_paths(arg[2])])  # X?: absent, or present once between its neighbours
        elif op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT) and arg[0] >= 1:
            cut()  # the body occurs at least once, next to copies of itself
            extend(_paths(arg[2]))
            cut()
        elif op in (sre_c.AT, sre_c.ASSERT, sre_c.ASSERT_NOT):
            continue  # zero width: the characters on either side are adjacent
        else:
            cut()
    return paths


def _uncovered(rule: Rule) -> list[list[str]]:
    parsed = sre_parse.parse(rule.pattern.pattern, rule.pattern.flags)
    ignore_case = bool(parsed.state.flags & sre_c.SRE_FLAG_IGNORECASE)
    bad = []
    for runs in _paths(parsed):
        if ignore_case:  # (?i): the keywords list the spellings that occur (lower, Title, UPPER)
            covered = any(k.lower() in run.lower() for k in rule.keywords for run in runs)
        else:
            covered = any(k in run for k in rule.keywords for run in runs)
        if not covered:
            bad.append([r for r in runs if r])
    return bad


# Ways to match that none of the rule's keywords covers, as the classifier has always had
# them: a line that matches only this way is never tried against the rule. Listed so that a
# new gap fails the test; closing one (a keyword more) changes which lines are classified.
KNOWN_GAPS: dict[str, list[list[str]]] = {
    # MSVC style "x.cpp(12): error C2065: …" has no "error:" (icc's "error: …" has).
    "build.compile-error": [
        ["(", "): error"],
        ["(", "): catastrophic error"],
        ["(", ") (col. ", "): error"],
        ["(", ") (col. ", "): catastrophic error"],
    ],
    # pytest prints "E" and several spaces; a single space is not let through.
    "build.test-failure": [["E", " ", "Error"], ["E", " ", "Exception"]],
    # A remote build's failure; build.nix-build-failed (keyword "build of") catches it.
    "build.builder-failed": [["build of ", " on ", " failed"]],
}


@pytest.mark.parametrize("rule", RULES, ids=[rule.id for rule in RULES])
def test_every_way_a_rule_can_match_contains_one_of_its_keywords(rule: Rule) -> None:
    expected = KNOWN_GAPS.get(rule.id, [])
    assert _uncovered(rule) == expected, f"{rule.id}: add a keyword these literal runs contain"


def test_the_literal_run_check_notices_a_missing_keyword() -> None:
    rule = RULES[0]
    looser = Rule(rule.id, rule.kind, rule.sources, re.compile("foo|interrupted"), "", ("foo",))
    assert _uncovered(looser) == [["interrupted"]]
    assert _uncovered(
        Rule("x", rule.kind, rule.sources, re.compile("[Mm]emory x"), "", ("memory",))
    ) == [["Memory x"]]
    assert _PREFILTER[Source.BUILD].pattern.search("Memory") is not None
