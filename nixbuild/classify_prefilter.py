"""The classifier's per-line question: does this line contain any rule keyword at all?

Nearly no line of a build log does, and answering it is most of what classification costs
per line, so it is one compiled regex that is equivalent to ``any(k in text for k in
keywords)`` — it finds a line exactly when one of the keywords occurs in it (a property
test holds it to that), and only then are the rules whose keywords occur looked up.

Why the regex has the shape it has (measured with CPython 3.11's ``re``): a search for an
alternation scans the line in C, testing each character against the set of characters
that can start a branch (≈3.5 ns a character), and starts the matcher (≈50 ns) at every
position whose character is in that set. A plain ``error:|Killed|…`` starts almost
everywhere. Here every branch starts with an *anchor*: one character of the keyword,
chosen so that the set of anchors is as rare as possible in build logs (keywords share
anchors: once ``c`` is needed for "cannot connect to", "corrupt" costs nothing more).
After the anchor a branch matches the rest of the keyword literally (a branch whose
literal differs is skipped at its first character) and checks the part before the anchor
with a lookbehind. Against the previous layout (each keyword anchored on its own rarest
character) this takes 40-50% off the prefilter's cost, on compiler output and on the corpus.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# Characters of build logs from common to rare: tests/corpus and the generated PyTorch-like
# log of tests/perf (builder output with its `name> ` prefix) counted together. Characters
# not listed count as rarer than all listed ones. Measured frequencies roughly halve every
# ten ranks (8% for ' ', 3% for 'l', 1% for 'k', 0.4% for 'z', 0.1% for 'D').
COMMONNESS = (
    " etinor/pacs.ld-u21g_h3fk:bym04v5C6>7x9=8Tw'X\"A[]jPMSF%z,qB)(~LEO*IR|UH}{WD+;V^@NGK`#&<"
    "Y$JQ!Z?\\"
)


def _frequency(char: str) -> float:
    """A character's approximate share of the characters of a build log (relative)."""
    rank = COMMONNESS.find(char)
    return float(2.0 ** (-(len(COMMONNESS) if rank < 0 else rank) / 10))


# Relative costs, in instructions per position of the line (measured with callgrind): the
# matcher started at a candidate position, and each branch tried there — one that starts
# with a literal is rejected at once, a lookbehind alone is a nested match.
_START_COST = 300
_LITERAL_BRANCH_COST = 5
_LOOKBEHIND_BRANCH_COST = 150


def choose_anchors(words: Iterable[str]) -> dict[str, str]:
    """Keyword → the character its branch starts with, keeping the expected cost small.

    Greedy: the keywords whose every character is common choose first (they have to pay
    for a common anchor anyway); each takes the character that adds least to the cost per
    position, an anchor already chosen costing only its extra branch."""
    chosen: set[str] = set()
    anchors: dict[str, str] = {}

    def cost(word: str, char: str) -> float:
        branch = _LITERAL_BRANCH_COST if char in word[:-1] else _LOOKBEHIND_BRANCH_COST
        return _frequency(char) * (branch + (0 if char in chosen else _START_COST))

    for word in sorted(set(words), key=lambda w: (-min(map(_frequency, w)), w)):
        anchor = min(word, key=lambda ch: (cost(word, ch), ch))
        chosen.add(anchor)
        anchors[word] = anchor
    return anchors


def pattern_for(anchors: Mapping[str, str], *, consume: bool = True) -> str:
    """The regex source that finds any of the keywords in ``anchors`` (see the module doc).

    With ``consume=False`` a match is the anchor character alone (the rest of the keyword
    is checked by lookarounds), so ``findall`` reports every position where one occurs."""
    branches: dict[str, set[str]] = {}
    for word, anchor in anchors.items():
        at = word.index(anchor)
        before = f"(?<={re.escape(word[: at + 1])})" if at else ""
        after = re.escape(word[at + 1 :])
        if consume:
            rest = after + (f"(?<={re.escape(word)})" if at else "")
        else:
            rest = before + (f"(?={after})" if after else "")
        branches.setdefault(anchor, set()).add(rest)
    parts = []
    # The most common anchor first: the matcher tries the branches in order.
    for anchor, rests in sorted(branches.items(), key=lambda item: (-_frequency(item[0]), item[0])):
        if "" in rests:  # a one-character keyword: the anchor alone is a match
            parts.append(re.escape(anchor))
            continue
        # Literal-first branches before lookaround-only ones: the former are skipped cheaply.
        ordered = sorted(rests, key=lambda r: (r.startswith("(?"), r))
        parts.append(re.escape(anchor) + "(?:" + "|".join(ordered) + ")")
    return "|".join(parts) if parts else "(?!)"


@dataclass(frozen=True, slots=True)
class Prefilter:
    """Which rules a line may concern, by keyword; ``pattern`` finds lines with any keyword."""

    pattern: re.Pattern[str]
    # The same keywords, one character per match (for the rare lines ``pattern`` finds).
    locate: re.Pattern[str]
    # Per anchor character: the keywords anchored on it, each with the rule numbers it unlocks.
    by_anchor: Mapping[str, tuple[tuple[str, tuple[int, ...]], ...]]

    @classmethod
    def build(cls, keywords: Mapping[str, Sequence[int]]) -> Prefilter:
        anchors = choose_anchors(keywords)
        grouped: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
        for word, numbers in keywords.items():
            grouped.setdefault(anchors[word], []).append((word, tuple(numbers)))
        return cls(
            re.compile(pattern_for(anchors)),
            re.compile(pattern_for(anchors, consume=False)),
            {anchor: tuple(entries) for anchor, entries in sorted(grouped.items())},
        )

    def keywords(self) -> list[str]:
        return [word for entries in self.by_anchor.values() for word, _ in entries]

    def rule_numbers(self, text: str) -> list[int]:
        """Sorted numbers of the rules with a keyword in ``text``.

        ``locate`` names the anchor characters at which some keyword occurs; only the
        keywords anchored there can be in the line."""
        numbers: set[int] = set()
        for anchor in set(self.locate.findall(text)):
            for word, unlocked in self.by_anchor[anchor]:
                if word in text:
                    numbers.update(unlocked)
        return sorted(numbers)
