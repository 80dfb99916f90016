"""``nixbuild run -- <nix command line>``: parsing real CI command lines, refusing the rest.

The accepted command lines are taken from public CI workflows (GitHub Actions steps,
GitLab/Jenkins scripts, Makefiles); the last tests run the rebuilt argv with the real nix
against the fixture flake, so "what nixbuild adds" is checked by nix itself.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixbuild.errors import ExitCode, UsageError
from nixbuild.wrapcmd import WrapMode, parse_wrapped, starting_parallelism


def parse(line: str) -> object:
    return parse_wrapped(shlex.split(line))


# (command line from a public CI script, mode, installables, develop command)
ACCEPTED = [
    ("nix build -L .#checks.x86_64-linux.foo", "build", (".#checks.x86_64-linux.foo",), ()),
    ("nix build .#packages.x86_64-linux.default --print-build-logs", "build",
     (".#packages.x86_64-linux.default",), ()),
    ("nix build --print-build-logs .", "build", (".",), ()),
    ("nix build", "build", (), ()),
    ("nix build .#a .#b --no-link", "build", (".#a", ".#b"), ()),
    ("nix build --accept-flake-config .#x", "build", (".#x",), ()),
    ("nix build -f . checks.x86_64-linux", "build", ("checks.x86_64-linux",), ()),
    ("nix build --experimental-features 'nix-command flakes' --show-trace --verbose "
     "--option eval-cache false -L .", "build", (".",), ()),
    ("nix --extra-experimental-features flakes --extra-experimental-features nix-command "
     "build --impure ./nix#dev", "build", ("./nix#dev",), ()),
    ("nix build --override-input nixpkgs github:NixOS/nixpkgs/nixos-24.05 .#x -o out", "build",
     (".#x",), ()),
    ("nix build -Lv .#x -- .#y", "build", (".#x", ".#y"), ()),
    ("nix develop -c pytest", "develop", (), ("pytest",)),
    ("nix develop --impure --command true", "develop", (), ("true",)),
    ("nix develop --experimental-features 'nix-command flakes' . -c bash -c 'cargo test'",
     "develop", (".",), ("bash", "-c", "cargo test")),
    ("nix develop .#ci -c pytest -xvs tests/", "develop", (".#ci",), ("pytest", "-xvs", "tests/")),
    ("nix develop -i -k HOME .#x --build", "develop", (".#x",), ()),
    ("nix-build -A hello", "nix-build", ("hello",), ()),
    ("nix-build default.nix", "nix-build", (), ()),
    ("nix-build build.nix --cores 8 -A nixpkgsUnstable", "nix-build", ("nixpkgsUnstable",), ()),
    ("nix-build release.nix -A tests.x86_64-linux --arg doCheck true --no-out-link -j 2",
     "nix-build", ("tests.x86_64-linux",), ()),
    ("/nix/var/nix/profiles/default/bin/nix build .#x", "build", (".#x",), ()),
]  # fmt: skip


@pytest.mark.parametrize(("line", "mode", "installables", "command"), ACCEPTED)
def test_accepts_real_ci_command_lines(
    line: str, mode: str, installables: tuple[str, ...], command: tuple[str, ...]
) -> None:
    wrapped = parse_wrapped(shlex.split(line))
    assert wrapped.mode is WrapMode(mode)
    assert wrapped.installables == installables
    assert wrapped.develop_command == command


def _as_nix_reads_it(words: list[str], taken_over: tuple[str, ...]) -> list[str]:
    """The user's words with clusters split, -c spelled --command, taken-over options removed."""
    out: list[str] = []
    for i, w in enumerate(words):
        if "-c" in words[:i] or "--command" in words[:i]:
            out.append(w)
        elif w == "-c":
            out.append("--command")
        elif len(w) > 2 and w[0] == "-" and w[1].isalpha():
            out += [f"-{c}" for c in w[1:]]
        else:
            out.append(w)
    for spelled in taken_over:
        part = spelled.split()
        at = next(i for i in range(len(out)) if out[i : i + len(part)] == part)
        del out[at : at + len(part)]
    return out


@pytest.mark.parametrize("line", [row[0] for row in ACCEPTED])
def test_rebuilt_argv_is_the_users_line_plus_one_block_of_additions(line: str) -> None:
    words = shlex.split(line)
    wrapped = parse_wrapped(words)
    added = ["--option", "cores", "3", "--option", "max-jobs", "1", "--log-format", "internal-json"]
    argv = list(wrapped.argv(cores=3, max_jobs=1, log_args=added[-2:]))
    # the additions come as one block after the user's options (-L sets a log format too, and
    # nix applies options in order), but before `--` and `--command`
    end = argv.index("--command") if "--command" in argv else len(argv)
    end = argv.index("--") if "--" in argv else end
    at = end - len(added)
    assert argv[at:end] == added
    assert argv[:at] + argv[at + len(added) :] == _as_nix_reads_it(words, wrapped.taken_over)


def test_short_flag_clusters_are_split_like_nix_does() -> None:
    wrapped = parse_wrapped(["nix", "build", "-Lv", ".#x", "-j4"])
    assert wrapped.args == ("-L", "-v", ".#x")
    assert wrapped.user_max_jobs == 4


def test_words_after_command_are_never_parsed() -> None:
    wrapped = parse_wrapped(["nix", "develop", "-c", "pytest", "-xvs", "--json", "--dry-run"])
    assert wrapped.develop_command == ("pytest", "-xvs", "--json", "--dry-run")
    argv = wrapped.argv(cores=2, max_jobs=1)
    assert argv[-5:] == ("--command", "pytest", "-xvs", "--json", "--dry-run")


def test_develop_options_go_before_the_command() -> None:
    wrapped = parse_wrapped(shlex.split("nix develop .#ci --impure -c make check"))
    assert wrapped.argv(cores=4, max_jobs=2, log_args=()) == (
        "nix", "develop", ".#ci", "--impure", "--option", "cores", "4", "--option", "max-jobs",
        "2", "--command", "make", "check",
    )  # fmt: skip


def test_nix_global_options_stay_before_the_subcommand() -> None:
    wrapped = parse_wrapped(shlex.split("nix --extra-experimental-features flakes build .#x"))
    assert wrapped.leading == ("--extra-experimental-features", "flakes")
    assert wrapped.argv(cores=1, max_jobs=1, log_args=())[:4] == (
        "nix", "--extra-experimental-features", "flakes", "build",
    )  # fmt: skip


# --- parallelism the user set: honoured as the start and the ceiling ------------------------


@pytest.mark.parametrize(
    ("line", "cores", "jobs"),
    [
        ("nix build .#x --cores 8 --max-jobs 1", 8, 1),
        ("nix build .#x --option cores 6 --option max-jobs 2", 6, 2),
        ("nix build .#x --option build-cores 6 -j 3", 6, 3),
        ("nix develop --option cores 8 --option max-jobs 1 -c true", 8, 1),
        ("nix-build build.nix --cores 8 -A x", 8, None),
        ("nix-build -A x -j3 --option max-jobs 2", None, 2),
        ("nix --cores 4 build .#x", 4, None),
    ],
)
def test_user_parallelism_is_taken_over_and_reported(
    line: str, cores: int | None, jobs: int | None
) -> None:
    wrapped = parse_wrapped(shlex.split(line))
    assert (wrapped.user_cores, wrapped.user_max_jobs) == (cores, jobs)
    argv = wrapped.argv(cores=2, max_jobs=1, log_args=())
    # exactly one cores and one max-jobs setting reaches nix: nixbuild's
    assert argv.count("cores") + argv.count("build-cores") + argv.count("--cores") == 1
    assert "-j" not in argv
    assert "--max-jobs" not in argv
    assert wrapped.taken_over


@pytest.mark.parametrize("line", ["nix build .#x -j auto", "nix build .#x --cores 0"])
def test_unlimited_parallelism_is_replaced_with_a_notice(line: str) -> None:
    wrapped = parse_wrapped(shlex.split(line))
    assert (wrapped.user_cores, wrapped.user_max_jobs) == (None, None)
    assert any("no limit" in n for n in wrapped.notices)


def test_starting_parallelism_merges_and_refuses_a_clash() -> None:
    wrapped = parse_wrapped(shlex.split("nix build .#x --cores 8"))
    assert starting_parallelism(wrapped, None, 2) == (8, 2)
    assert starting_parallelism(wrapped, 8, None) == (8, None)
    with pytest.raises(UsageError, match="cores is 4 for nixbuild but 8"):
        starting_parallelism(wrapped, 4, None)


@pytest.mark.parametrize(
    "line",
    [
        "nix build .#x --log-format bar-with-logs",
        "nix build .#x --option log-format raw",
        "nix-build -A x -Q",
        "nix-build -A x --no-build-output",
    ],
)
def test_log_options_that_hide_the_log_are_replaced_with_a_notice(line: str) -> None:
    wrapped = parse_wrapped(shlex.split(line))
    assert wrapped.notices
    argv = wrapped.argv(cores=1, max_jobs=1)
    assert argv.count("--log-format") == 1
    assert argv[argv.index("--log-format") + 1] == "internal-json"
    assert "-Q" not in argv
    assert "--no-build-output" not in argv


# --- refusals ---------------------------------------------------------------------------------

REFUSED = [
    ("nix shell nixpkgs#hello", "nix shell"),
    ("nix run .#app", "nix run"),
    ("nix flake check", "nix flake"),
    ("nix-shell --run 'make'", "nix-shell"),
    ("make all", "not a nix build command"),
    ("env FOO=1 nix build .#x", "not a nix build command"),
    ("nix build --dry-run .#x", "--dry-run"),
    ("nix build --json .#x", "--json"),
    ("nix-build --dry-run -A x", "--dry-run"),
    ("nix develop", "interactive"),
    ("nix develop .#x --impure", "interactive"),
    ("nix develop -c", "needs a program"),
    ("nix build --frobnicate 3 .#x", "unknown option --frobnicate"),
    ("nix build -Lz .#x", "unknown option -z"),
    ("nix build .#x --cores many", "not a number"),
    ("nix build .#x --out-link", "needs 1 value"),
    ("nix build --help", "help"),
    ("nix", "no nix subcommand"),
    ("nix develop .#a .#b -c true", "one installable"),
    ("nix-build -L -A x", "unknown option -L"),
    ("nix build --stdin", "read again for a retry"),
    ("nix build --debugger .#x", "interactive"),
    ("nix build .#x --max-jobs 0", "remote builders only"),
    ("nix build .#x --option max-jobs 0", "remote builders only"),
    ("nix build .#x --log-format=raw", "unknown option --log-format=raw"),
    ("nix build .#x -j", "needs 1 value"),
    ("nix build .#x --option cores", "needs 2 values"),
    # Numbers nix itself rejects, or the ledger could not store (it once crashed after the
    # build with OverflowError), and non-ASCII digits that str.isdigit() takes ('²' crashed).
    (f"nix build .#x --cores {10**26}", f"--cores must be between 1 and 65536, got '{10**26}'"),
    (f"nix build .#x --max-jobs {10**26}", "--max-jobs must be between 1 and 65536"),
    (f"nix build .#x --option cores {10**26}", "--option cores must be between 1 and 65536"),
    (f"nix-build -A x -j {2**63}", "-j must be between 1 and 65536"),
    ("nix build .#x --cores 65537", "--cores must be between 1 and 65536, got '65537'"),
    ("nix build .#x --cores \u0663", "--cores '\u0663' is not a number"),
    ("nix build .#x --option max-jobs \u0663", "'\u0663' is not a number"),
    ("nix build .#x --cores \u00b2", "--cores '\u00b2' is not a number"),
    ("nix build .#x -j\u0663", "unknown option -j\u0663"),
]


@pytest.mark.parametrize(("line", "message"), REFUSED)
def test_refuses_what_it_cannot_honour(line: str, message: str) -> None:
    with pytest.raises(UsageError, match=None) as info:
        parse_wrapped(shlex.split(line))
    assert message in str(info.value)
    assert info.value.exit_code is ExitCode.USAGE


def test_the_largest_parallelism_is_accepted() -> None:
    wrapped = parse_wrapped(shlex.split("nix build .#x --cores 65536 --max-jobs 065536"))
    assert (wrapped.user_cores, wrapped.user_max_jobs) == (65536, 65536)


def test_empty_command_is_refused() -> None:
    with pytest.raises(UsageError, match="no command"):
        parse_wrapped([])


@pytest.mark.parametrize(
    ("line", "out_link", "no_link"),
    [
        ("nix build .#x", None, False),
        ("nix build .#x --no-link", None, True),
        ("nix build .#x -o result-x", "result-x", False),
        ("nix-build -A x --out-link out", "out", False),
        ("nix-build -A x --no-out-link", None, True),
    ],
)
def test_result_link_options_are_exposed(line: str, out_link: str | None, no_link: bool) -> None:
    wrapped = parse_wrapped(shlex.split(line))
    assert (wrapped.out_link, wrapped.no_link) == (out_link, no_link)


def test_develop_realises_the_shell_apart_from_the_users_command() -> None:
    words = shlex.split("nix develop .#ci --impure -c pytest -x")
    wrapped = parse_wrapped(words)
    assert wrapped.realise_argv(cores=2, max_jobs=1, log_args=())[-2:] == ("--command", "true")
    assert wrapped.original == tuple(words)
    build = parse_wrapped(["nix", "build", ".#x"])
    assert build.realise_argv(cores=2, max_jobs=1) == build.argv(cores=2, max_jobs=1)


def test_display_name() -> None:
    assert parse_wrapped(["nix", "build"]).display_name == "."
    assert parse_wrapped(["nix", "build", ".#a", ".#b"]).display_name == ".#a .#b"
    assert parse_wrapped(["nix-build", "-A", "hello"]).display_name == "./default.nix -A hello"


# --- the rebuilt command line, run by the real nix ---------------------------------------------


def _run(argv: tuple[str, ...], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _json_messages(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line[5:]) for line in stderr.splitlines() if line.startswith("@nix {")]


@pytest.mark.nix
def test_real_nix_build_accepts_the_rebuilt_argv(nix_env: dict[str, str], flake: Path) -> None:
    line = f"nix build -L path:{flake}#ok --no-link --cores 8"
    wrapped = parse_wrapped(shlex.split(line))
    done = _run(wrapped.argv(cores=2, max_jobs=1), flake)
    assert done.returncode == 0, done.stderr
    messages = _json_messages(done.stderr)
    assert messages, "nix did not switch to the internal-json log format"
    # the bounded value reached the builder: the lib derivation echoes $NIX_BUILD_CORES
    texts = [str(m.get("text") or m.get("fields") or "") for m in messages]
    assert any("with 2 cores" in t for t in texts)


@pytest.mark.nix
def test_real_nix_develop_command_runs_in_the_shell(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    line = f"nix develop path:{flake}#ok -c /bin/sh -c 'echo $NIX_BUILD_CORES > {marker}'"
    wrapped = parse_wrapped(shlex.split(line))
    realised = _run(wrapped.realise_argv(cores=2, max_jobs=1), flake)
    assert realised.returncode == 0, realised.stderr
    assert _json_messages(realised.stderr)
    assert not marker.exists()  # realising the shell does not run the user's command
    done = _run(wrapped.argv(cores=2, max_jobs=1), flake)
    assert done.returncode == 0, done.stderr
    assert marker.read_text().strip() == "2"


@pytest.mark.nix
def test_real_legacy_nix_build(nix_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "default.nix").write_text(
        '{ hello = derivation { name = "hello"; system = "x86_64-linux"; builder = "/bin/bash";'
        ' args = [ "-c" "echo cores=$NIX_BUILD_CORES; echo hi > $out" ]; }; }\n'
    )
    wrapped = parse_wrapped(shlex.split("nix-build -A hello --no-out-link -j 4 --cores 8"))
    done = _run(wrapped.argv(cores=1, max_jobs=1), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("-hello")
    assert any("cores=1" in str(m.get("fields", "")) for m in _json_messages(done.stderr)), (
        done.stderr[-2000:]
    )


# --- any input: a WrappedCommand or a UsageError, never a traceback ------------------------------

_WORDS = st.sampled_from(
    ["nix", "build", "develop", "nix-build", "-c", "--command", "--", "-L", "-Lv", "-j", "-j4",
     "--option", "cores", "max-jobs", "--cores", "--max-jobs", "auto", "0", "8", "-o", "-A",
     "--log-format", "raw", "--arg", "--no-link", ".#x", "-k", "-x", "--frob", "true", "-f"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(argv=st.lists(_WORDS | st.text(max_size=6), max_size=10))
def test_any_command_line_parses_or_is_refused(argv: list[str]) -> None:
    try:
        wrapped = parse_wrapped(argv)
    except UsageError as exc:
        assert str(exc).startswith("nixbuild run: ")
        return
    argv_out = wrapped.argv(cores=2, max_jobs=1)
    assert argv_out[0] == argv[0]
    # options end at `--` (installables follow) or `--command` (the user's program follows)
    ends = [i for i, w in enumerate(argv_out) if w in ("--", "--command")]
    options = argv_out[: ends[0]] if ends else argv_out
    assert options.count("--log-format") == 1
    assert options[-3:] == ("--log-format", "internal-json", "-v")
