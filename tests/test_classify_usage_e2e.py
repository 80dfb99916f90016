"""A nix usage error end to end: real nix rejects an argument, nixbuild stops at once.

Nix reports an unknown flag before its internal-json logger is set up (nixbuild puts
``--log-format`` last), so the message arrives as plain text, where a builder's output would.
It must be diagnosed as nix's own command-line error (an eval kind: never retried), not as a
compile error retried at lower parallelism.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_build_e2e import nixbuild, only_run_dir, summary_of

pytestmark = pytest.mark.nix


def test_an_unknown_nix_flag_is_one_attempt_diagnosed_as_usage(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    result = nixbuild(
        "build", f"path:{flake}#ok", "--log-dir", str(logs), "--", "--bogus-flag", cwd=tmp_path
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "diagnosis: eval (rule eval.nix-usage): nix rejected its command line" in result.stderr
    assert "attempt 2/" not in result.stderr
    summary = summary_of(logs)
    assert summary["status"] == "failed"
    (attempt,) = summary["attempts"]  # one attempt: no retry, no fallback
    diagnosis = attempt["diagnosis"]
    assert (diagnosis["kind"], diagnosis["rule"]) == ("eval", "eval.nix-usage")
    assert "--bogus-flag" in diagnosis["explanation"]
    assert attempt["decision"]["action"] == "give_up"
    log = (only_run_dir(logs) / "attempt-1.log").read_text().splitlines()
    (evidence,) = diagnosis["evidence"]
    assert (
        log[evidence["line"] - 1] == evidence["text"] == "error: unrecognised flag '--bogus-flag'"
    )
    assert "fix the arguments" in attempt["decision"]["reason"]
