"""Remove credentials from anything nixbuild records: command lines, log lines, summaries.

Nix takes secrets in a few well-known places (``--option access-tokens``, ``netrc-file``,
credentials in URLs) and builders print others (``Authorization:`` headers, token-shaped
strings). Everything written to the run directory, the ledger or the journal passes through
``redact_argv`` or ``redact_text`` first. The rules err on the side of hiding: a false
positive costs a less readable log line, a false negative leaks a token into a file that
lives for a month.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[redacted]"

# Nix settings whose value is a secret (or points at one). Nix accepts each as
# ``--option NAME VALUE`` and as the flag ``--NAME VALUE``.
SECRET_SETTINGS = frozenset({"access-tokens", "extra-access-tokens", "netrc-file"})

_SETTING_NAMES = r"(?:extra-)?access-tokens|netrc-file"

_TEXT_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # `--option access-tokens 'github.com=ghp_… gitlab.com=…'` and `--access-tokens VALUE`
    # inside a command line printed as text; the value may be quoted.
    (
        re.compile(
            rf"((?:--option\s+|--)(?:{_SETTING_NAMES})\s+)(?:'[^']*'|\"[^\"]*\"|\S+)",
        ),
        rf"\g<1>{REDACTED}",
    ),
    # nix.conf syntax and `nix show-config` output: `access-tokens = …` to the end of line.
    (
        re.compile(rf"(?m)^(\s*(?:{_SETTING_NAMES})\s*=)[ \t]*\S.*$"),
        rf"\g<1> {REDACTED}",
    ),
    # Credentials in a URL: scheme://user:pass@host or scheme://token@host.
    (
        re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@:]+(?::[^/\s@]*)?@"),
        rf"\g<1>{REDACTED}@",
    ),
    # Secrets in a query string.
    (
        re.compile(
            r"([?&](?:access_token|token|private_token|auth|api_key|apikey|password|sig)=)[^&#\s'\"]+",
            re.IGNORECASE,
        ),
        rf"\g<1>{REDACTED}",
    ),
    # HTTP Authorization headers, as curl -v, wget and HTTP libraries print them.
    (
        re.compile(r"(?im)\b((?:proxy-)?authorization:\s*)\S.*$"),
        rf"\g<1>{REDACTED}",
    ),
    # Token shapes that are secrets wherever they appear.
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"), REDACTED),
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{40,}\b"), REDACTED),
    (re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}"), REDACTED),
)


def redact_text(text: str) -> str:
    """Return ``text`` with every credential the rules know about replaced by ``[redacted]``."""
    for pattern, replacement in _TEXT_RULES:
        text = pattern.sub(replacement, text)
    return text


def redact_argv(argv: Iterable[str]) -> tuple[str, ...]:
    """Redact a command line argument by argument.

    The length and the option names are kept, so a redacted command line still shows
    which secret option was given, only not its value.
    """
    args = list(argv)
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--option" and i + 2 < len(args) and args[i + 1] in SECRET_SETTINGS:
            out += [arg, args[i + 1], REDACTED]
            i += 3
            continue
        name, eq, _value = arg.partition("=")
        if name.startswith("--") and name[2:] in SECRET_SETTINGS:
            if eq:
                out.append(f"{name}={REDACTED}")
                i += 1
            else:
                out += [arg] + ([REDACTED] if i + 1 < len(args) else [])
                i += 2
            continue
        out.append(redact_text(arg))
        i += 1
    return tuple(out)


# Cheap substrings (lower-cased) at least one of which every rule above needs: a log line
# without any of them (nearly all compiler output) skips the regexes, which keeps the
# per-line cost of redacting a million-line build log negligible. Each is a scan of the
# text, so none is a substring of another ("token" covers "access-tokens"), and GitHub's
# five token prefixes are one regex (one scan for "gh"): 0.83 → 0.58 µs a line.
_HINTS = ("://", "netrc", "token", "auth", "password", "key=", "sig=", "github_pat_", "glpat-")
_GITHUB_PREFIX = re.compile(r"gh[pousr]_")


def may_hold_secret(text: str) -> bool:
    """Whether ``text`` has any hint of a secret; False means redaction leaves it as it is.

    Also asked of a whole batch of log lines joined together: nearly every batch of a
    build's output has none, and one check for all of them saves the per-call cost of one
    a line (measured ≈13% of the check; the scans of the text itself remain).
    """
    lowered = text.lower()
    for hint in _HINTS:  # a plain loop: measured faster than any() or one regex for all
        if hint in lowered:
            return True
    return _GITHUB_PREFIX.search(lowered) is not None


def redact_line(text: str) -> str:
    """``redact_text`` for one log line, fast when the line cannot hold a secret."""
    return redact_text(text) if may_hold_secret(text) else text
