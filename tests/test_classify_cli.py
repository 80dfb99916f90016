"""`nixbuild classify FILE... [--json]`: output, JSON shape, stdin, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from nixbuild.cli_classify import classify_command

CORPUS = Path(__file__).parent / "corpus"
OOM = str(CORPUS / "001-oom.log")
SUCCESS_JSON = str(CORPUS / "s02-success.log")  # internal-json
NETWORK = str(CORPUS / "029-network.log")


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(classify_command, list(args), input=stdin)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_human_output_names_kind_rule_drv_explanation_and_numbered_evidence() -> None:
    status, out, _ = run(OOM)
    assert status == 0
    assert f"{OOM}: oom (rule oom.compiler-killed)" in out
    assert "aws-sdk-cpp-1.9.294.drv" in out
    assert "cc1plus was killed by the kernel" in out
    assert "  8: > g++: fatal error: Killed signal terminated program cc1plus" in out


def test_json_output_is_the_diagnosis_json() -> None:
    status, out, _ = run("--json", NETWORK)
    assert status == 0
    data = json.loads(out)
    assert set(data) == {"kind", "rule", "drv", "explanation", "evidence"}
    assert (data["kind"], data["rule"]) == ("network", "network.download-failed")
    assert data["evidence"][0] == {
        "line": 5,
        "text": "error: unable to download 'http://isl.gforge.inria.fr/isl-0.17.1.tar.xz': "
        "Timeout was reached (28)",
    }


def test_several_files_give_a_list_in_argument_order_and_successes_have_kind_null() -> None:
    status, out, _ = run("--json", OOM, SUCCESS_JSON)
    assert status == 0
    data = json.loads(out)
    assert [d["kind"] for d in data] == ["oom", None]
    assert data[1]["explanation"] == "no failure found"
    status, out, _ = run(OOM, SUCCESS_JSON)
    assert f"{SUCCESS_JSON}: no failure found" in out


def test_dash_reads_standard_input() -> None:
    status, out, _ = run("-", stdin=Path(OOM).read_text(encoding="utf-8"))
    assert status == 0
    assert "<stdin>: oom (rule oom.compiler-killed)" in out


@pytest.mark.parametrize(
    ("path", "reason"),
    [("does-not-exist.log", "no such file"), (str(CORPUS), "is a directory")],
)
def test_unreadable_input_exits_2_with_one_clear_line(path: str, reason: str) -> None:
    status, out, err = run(OOM, path)
    assert status == 2
    assert out == ""
    assert err.strip() == f"nixbuild classify: cannot read {path}: {reason}"


def test_binary_garbage_is_classified_not_a_traceback(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.log"
    garbage.write_bytes(b"\xff\xfe\x00@nix {bad json\n\x1b[31mKilled\n" * 3)
    status, out, _ = run(str(garbage))
    assert status == 0
    assert "garbage.log: no failure found" in out


def test_progress_bar_carriage_returns_do_not_shift_line_numbers(tmp_path: Path) -> None:
    log = tmp_path / "cr.log"
    log.write_bytes(
        b"  0 --:--\r 50 --:--\r100 --:--\n"
        b"error: unable to download 'https://x/y.tar.gz': HTTP error 503\n"
    )
    data = json.loads(run("--json", str(log))[1])
    assert data["evidence"][0]["line"] == 2


def test_python_m_nixbuild_classify_when_the_cli_registers_it() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "nixbuild", "--help"], capture_output=True, text=True, check=False
    ).stdout
    if " classify " not in help_text:
        pytest.skip("nixbuild's CLI does not register the classify command yet")
    proc = subprocess.run(
        [sys.executable, "-m", "nixbuild", "classify", "--json", OOM, "missing.log"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "nixbuild", "classify", "--json", OOM],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["kind"] == "oom"


def test_a_huge_single_line_is_cut_in_the_evidence(tmp_path: Path) -> None:
    drv = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-foo-1.0.drv"
    huge = "foo-1.0> error: " + "x" * 5_000_000  # minified output on one line
    log = tmp_path / "huge.log"
    log.write_text(f"building '{drv}'...\n{huge}\nerror: builder for '{drv}' failed\n")
    for args in ((str(log),), ("--json", str(log))):
        status, out, _ = run(*args)
        assert status == 0
        assert len(out) < 3000, len(out)
        assert f"… (cut: the line has {len(huge)} characters)" in out
    data = json.loads(run("--json", str(log))[1])
    evidence = data["evidence"][0]
    assert evidence["line"] == 2
    assert evidence["text"].startswith(huge[:500])
