"""Redaction: each rule with a positive case and near-misses that must survive untouched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require
from hypothesis import given
from hypothesis import strategies as st

from nixbuild.redact import REDACTED, may_hold_secret, redact_argv, redact_line, redact_text

GH = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
GL = "glpat-" + "xY12_ab-CDefGHijKLmn"

TEXT_CASES = [
    # (input, expected)
    (
        f"nix build --option access-tokens github.com={GH} .#x",
        f"nix build --option access-tokens {REDACTED} .#x",
    ),
    (
        "nix build --option access-tokens 'github.com=abc gitlab.com=def' .#x",
        f"nix build --option access-tokens {REDACTED} .#x",
    ),
    (
        "nix build --extra-access-tokens github.com=abc",
        f"nix build --extra-access-tokens {REDACTED}",
    ),
    ("access-tokens = github.com=abc gitlab.com=def", f"access-tokens = {REDACTED}"),
    ("  extra-access-tokens=github.com=abc", f"  extra-access-tokens= {REDACTED}"),
    ("netrc-file = /home/me/.netrc", f"netrc-file = {REDACTED}"),
    ("nix build --option netrc-file /etc/nix/netrc", f"nix build --option netrc-file {REDACTED}"),
    (
        "fetching https://me:s3cret@example.org/a.tar.gz",
        f"fetching https://{REDACTED}@example.org/a.tar.gz",
    ),
    ("git+https://oauth2:tok@gitlab.com/x", f"git+https://{REDACTED}@gitlab.com/x"),
    ("https://tokenonly@github.com/o/r", f"https://{REDACTED}@github.com/o/r"),
    (
        "GET https://h/api?token=abc123&x=1",
        f"GET https://h/api?token={REDACTED}&x=1",
    ),
    ("https://h/p?a=1&access_token=zz#f", f"https://h/p?a=1&access_token={REDACTED}#f"),
    ("https://h/f?apikey=K1&sig=S2", f"https://h/f?apikey={REDACTED}&sig={REDACTED}"),
    ("https://h/f?AUTH=x", f"https://h/f?AUTH={REDACTED}"),
    ("> Authorization: Bearer abc.def.ghi", f"> Authorization: {REDACTED}"),
    ("PROXY-AUTHORIZATION: Basic dXNlcjpwYXNz", f"PROXY-AUTHORIZATION: {REDACTED}"),
    ("authorization: token xyz", f"authorization: {REDACTED}"),
    (f"export GITHUB_TOKEN={GH}", f"export GITHUB_TOKEN={REDACTED}"),
    (f"PRIVATE-TOKEN {GL} used", f"PRIVATE-TOKEN {REDACTED} used"),
]

NEAR_MISSES = [
    "git@github.com:owner/repo.git",  # scp-like ssh address: user, no secret
    "https://github.com/owner/repo/commit/abc@def",  # '@' in the path, not userinfo
    "https://example.org/a?tokens_left=3",  # parameter only contains 'token'
    "https://example.org/a?mytoken=3",  # not a separate parameter name
    "access-tokens-extra is not a setting",
    "ghp_short",  # too short to be a token
    "the Authorization header was missing",  # no colon: prose, not a header
    "builder for '/nix/store/abc-torch.drv' failed with exit code 1",
    "warning: unknown setting 'access-token'",
    "glpat-short",
    "netrc-file-less configuration",
]


@pytest.mark.parametrize(("text", "expected"), TEXT_CASES)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_are_left_alone(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize(("text", "expected"), TEXT_CASES)
def test_redact_line_prefilter_misses_no_rule(text: str, expected: str) -> None:
    """redact_line skips the regexes for lines without a hint; every rule must have one."""
    assert redact_line(text) == expected


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_redact_line_near_misses(text: str) -> None:
    assert redact_line(text) == text


def test_redaction_is_idempotent() -> None:
    for text, _expected in TEXT_CASES:
        once = redact_text(text)
        assert redact_text(once) == once


ARGV_CASES = [
    (
        ["nix", "build", "--option", "access-tokens", f"github.com={GH}", ".#x"],
        ("nix", "build", "--option", "access-tokens", REDACTED, ".#x"),
    ),
    (
        ["nix", "build", "--access-tokens", "github.com=abc def", ".#x"],
        ("nix", "build", "--access-tokens", REDACTED, ".#x"),
    ),
    (["nix", "--netrc-file=/root/.netrc"], ("nix", f"--netrc-file={REDACTED}")),
    (["nix", "--option", "netrc-file", "/n"], ("nix", "--option", "netrc-file", REDACTED)),
    (
        ["nix", "build", "git+https://u:p@host/repo"],
        ("nix", "build", f"git+https://{REDACTED}@host/repo"),
    ),
    # near-misses: other options keep their values
    (
        ["nix", "build", "--option", "cores", "8", "--option", "max-jobs", "1"],
        ("nix", "build", "--option", "cores", "8", "--option", "max-jobs", "1"),
    ),
    (["nix", "--option", "access-tokens"], ("nix", "--option", "access-tokens")),
    (["nix", "--access-tokens"], ("nix", "--access-tokens")),
]


@pytest.mark.parametrize(("argv", "expected"), ARGV_CASES)
def test_redact_argv(argv: list[str], expected: tuple[str, ...]) -> None:
    assert redact_argv(argv) == expected


def test_redacted_argv_never_contains_the_secret() -> None:
    argv = ["nix", "build", "--option", "access-tokens", f"github.com={GH}", "--", GH]
    assert all(GH not in arg for arg in redact_argv(argv))


@pytest.mark.nix
def test_token_never_reaches_the_run_directory_or_the_ledger(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    """A real supervised build given a token with --option access-tokens: no file that
    nixbuild writes (command lines, attempt logs, events, summary, ledger) contains it."""
    require("nix")
    logs = tmp_path / "logs"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nixbuild",
            "build",
            f"path:{flake}#ok",
            "--log-dir",
            str(logs),
            "--",
            "--option",
            "access-tokens",
            f"github.com={GH}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert GH not in done.stdout + done.stderr
    state = Path(os.environ["XDG_STATE_HOME"]) / "nixbuild"
    written = [p for root in (logs, state) for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "command.txt" for p in written)
    assert any(p.name.startswith("ledger") for p in written)
    command = next(p for p in written if p.name == "command.txt").read_text()
    assert f"--option access-tokens '{REDACTED}'" in command  # recorded, value hidden
    leaks = [p for p in written if GH.encode() in p.read_bytes()]
    assert leaks == []


@given(
    st.lists(
        st.sampled_from(
            [
                "https://user:hunter2@example.org/x",
                "access-tokens = github.com=ghp_abcdefghijklmnopqrstuvwxyz0123456789",
                "Authorization: Bearer abc.def",
                "ghs_abcdefghijklmnopqrstuvwxyz0123456789",
                "GHO_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
                "glpat-abcdefghij0123456789",
                "password=hunter2",
                "?sig=abcdef&key=123",
                "machine example.org login me password secret",
                "cc1plus: fatal error",
                "[ 12%] Building CXX object",
                "through the high road",
                " ",
                "\n",
            ]
        ),
        max_size=8,
    )
)
def test_may_hold_secret_never_misses_what_redact_text_changes(parts: list[str]) -> None:
    text = "".join(parts)
    if redact_text(text) != text:
        assert may_hold_secret(text)
    assert redact_line(text) == redact_text(text)
