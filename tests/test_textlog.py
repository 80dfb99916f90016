"""Plain-text logs → LogLines: prefixes, nix's own lines, error blocks, CI noise."""

from __future__ import annotations

from nixbuild.model import LogLine, Source
from nixbuild.textlog import TextLogReader, clean, pname

DRV = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-python3.12-torch-2.5.1.drv"
DEP = "/nix/store/abcdfghijklmnpqrsvwxyz0123456789-python3.12-env.drv"
LQ, RQ = "\u2018", "\u2019"  # the curly quotes of nix 1.x and 2.3 messages


def read(text: str) -> list[LogLine]:
    reader = TextLogReader()
    return [reader.line(n, raw) for n, raw in enumerate(text.splitlines(), start=1)]


def test_builder_prefixes_map_back_to_the_drv_path_by_full_name_or_version_less_name() -> None:
    lines = read(
        f"""building '{DRV}'...
python3.12-torch-2.5.1> full name, as nixbuild's attempt logs write it
python3.12-torch> version-less name, as `nix build -L` writes it
unknown-thing> a prefix whose building line is not in the excerpt"""
    )
    assert (lines[0].source, lines[0].drv) == (Source.NIX, DRV)
    assert [(ln.source, ln.drv) for ln in lines[1:3]] == [(Source.BUILD, DRV)] * 2
    assert (lines[3].source, lines[3].drv) == (Source.BUILD, "unknown-thing")
    assert lines[1].text.startswith("python3.12-torch-2.5.1> ")  # text kept as in the file
    assert [ln.number for ln in lines] == [1, 2, 3, 4]


def test_pname_splits_at_the_version_like_nix() -> None:
    assert pname("python3.12-torch-2.5.1") == "python3.12-torch"
    assert pname("hello") == "hello"
    assert pname("linux-6.6.51-stable") == "linux"


def test_error_block_tail_lines_belong_to_the_failed_derivation() -> None:
    lines = read(
        f"""error: builder for '{DRV}' failed with exit code 2;
       last 2 log lines:
       > g++: fatal error: Killed signal terminated program cc1plus
       > make: *** [Makefile:136: all] Error 2
       For full logs, run 'nix log {DRV}'.
error: 1 dependencies of derivation '{DEP}' failed to build
       > not a tail of the dependent"""
    )
    assert [ln.source for ln in lines] == [
        Source.NIX, Source.NIX, Source.BUILD, Source.BUILD, Source.NIX, Source.NIX, Source.BUILD,
    ]  # fmt: skip
    assert lines[2].drv == DRV
    assert lines[3].drv == DRV
    assert lines[6].drv is None


def test_current_nix_error_blocks_and_eval_traces_are_nix_lines() -> None:
    lines = read(
        f"""error: Cannot build '{DRV}'.
       Reason: builder failed with exit code 2.
       Last 1 log lines:
       > oops

error:
       … while evaluating the attribute 'value'

       error: undefined variable 'inputs'
plain builder output ends the block"""
    )
    assert [ln.source for ln in lines] == [
        Source.NIX, Source.NIX, Source.NIX, Source.BUILD, Source.NIX, Source.NIX, Source.NIX,
        Source.NIX, Source.NIX, Source.BUILD,
    ]  # fmt: skip
    assert lines[3].drv == DRV


def test_legacy_nix_build_lines_are_recognised_without_prefixes() -> None:
    lines = read(
        f"""these derivations will be built:
  {DRV}
building path(s) {LQ}/nix/store/a4qrjzk52g9pkp1sgr0lz0xzzjzbwxgz-perl-5.24.1.tar.gz{RQ}
make: *** [Makefile:11: all] Error 127
builder for {LQ}{DRV}{RQ} failed with exit code 1
hash mismatch in fixed-output derivation '/nix/store/x-vendor.tar.gz':
  wanted: sha256:1jfk5a33f01g2a68igdkwxnc9rkhz7mfg3zg25r6agib7scjbgj3
building of '{DRV}' timed out after 1800 seconds"""
    )
    assert [ln.source for ln in lines] == [
        Source.NIX, Source.BUILD, Source.NIX, Source.BUILD, Source.NIX, Source.NIX, Source.NIX,
        Source.NIX,
    ]  # fmt: skip


def test_ansi_colours_and_ci_prefixes_are_stripped() -> None:
    assert (
        clean("\x1b[31;1merror:\x1b[0m builder for 'x' failed\n") == "error: builder for 'x' failed"
    )
    assert clean("2024-05-01T12:00:00.1234567Z error: boom") == "error: boom"
    assert clean("2024-05-01T12:00:00.1234567Z ##[error]Process completed with exit code 1.") == (
        "Process completed with exit code 1."
    )
    assert clean("::error file=x::boom") == "boom"
    assert clean("Dec 04 01:30:00 host nixbuild[123]: error: boom") == "error: boom"
    assert clean("  0   0 --:--:--\r100  8746 --:--:--\r") == "100  8746 --:--:--"
    assert clean("make: Leaving directory '/build'") == "make: Leaving directory '/build'"


def test_a_ci_prefixed_nix_error_is_still_a_nix_line() -> None:
    lines = read(f"2024-05-01T12:00:00.1Z error: builder for '{DRV}' failed with exit code 1")
    assert lines[0].source is Source.NIX
    assert lines[0].text.startswith("error: builder for")


def test_the_name_map_is_bounded() -> None:
    reader = TextLogReader()
    for n in range(60_000):
        reader.line(n, f"building '/nix/store/{n:032d}-pkg{n}.drv'...")
    assert reader.drv_for_name("pkg0") is None
    assert reader.drv_for_name("pkg59999") == f"/nix/store/{59999:032d}-pkg59999.drv"
