"""``nixbuild classify FILE...``: diagnose saved build logs.

Any log nixbuild or nix wrote (an attempt log, ``nix build -L`` output, ``nix-build``
output, internal-json, a CI runner's log) is streamed through the same classifier the
supervisor uses, so memory stays flat on huge logs. ``-`` reads standard input.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

import click

from .classify import classify
from .errors import ExitCode
from .logstream import read_log_lines
from .model import Diagnosis

NO_FAILURE = "no failure found"


@contextmanager
def _open_log(path: str) -> Iterator[TextIO]:
    # Lines end at "\n" only, as for `sed -n Np`: a progress bar's "\r" stays inside its line.
    if path == "-":
        stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace", newline="\n")
        try:
            yield stdin
        finally:
            stdin.detach()  # leave sys.stdin usable
        return
    with open(path, encoding="utf-8", errors="replace", newline="\n") as handle:  # noqa: PTH123
        yield handle


def _unreadable(path: str) -> str | None:
    """Why ``path`` cannot be read, or None when it can."""
    if path == "-":
        return None
    try:
        with open(path, "rb") as handle:  # noqa: PTH123 - the same call that will read it
            handle.read(1)
    except IsADirectoryError:
        return "is a directory"
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def diagnose_file(path: str) -> Diagnosis | None:
    with _open_log(path) as handle:
        return classify(read_log_lines(handle))


def _as_json(diagnosis: Diagnosis | None) -> dict[str, object]:
    if diagnosis is not None:
        return diagnosis.to_json()
    return {"kind": None, "rule": None, "drv": None, "explanation": NO_FAILURE, "evidence": []}


def render(path: str, diagnosis: Diagnosis | None) -> str:
    """The human form: one header line, then drv, explanation and numbered evidence."""
    label = "<stdin>" if path == "-" else path
    if diagnosis is None:
        return f"{label}: {NO_FAILURE}"
    lines = [
        f"{label}: {diagnosis.kind} (rule {diagnosis.rule})",
        f"  drv:         {diagnosis.drv or '(not named in the log)'}",
        f"  explanation: {diagnosis.explanation}",
        "  evidence:",
    ]
    width = max((len(str(e.line)) for e in diagnosis.evidence), default=1)
    for evidence in diagnosis.evidence:
        where = str(evidence.line) if evidence.line else "-"
        lines.append(f"    {where:>{width}}: {evidence.text}")
    if not diagnosis.evidence:
        lines.append("    (none)")
    return "\n".join(lines)


@click.command("classify")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--json", "as_json", is_flag=True, help="print the diagnosis as JSON")
@click.pass_context
def classify_command(ctx: click.Context, files: tuple[str, ...], as_json: bool) -> int:
    """Say why a saved Nix build log failed: kind, rule, failing derivation, evidence.

    FILE is any build log: a nixbuild attempt log, `nix build -L` or `nix-build` output,
    `--log-format internal-json`, or a CI runner's log. `-` reads standard input.
    Line numbers in the evidence are those of FILE (`sed -n 123p FILE` shows the line).

    Exit status: 0 when every file was classified (whether or not it shows a failure),
    2 when a file cannot be read.
    """
    for path in files:
        problem = _unreadable(path)
        if problem is not None:
            click.echo(f"nixbuild classify: cannot read {path}: {problem}", err=True)
            ctx.exit(ExitCode.USAGE)
    results = [(path, diagnose_file(path)) for path in files]
    if as_json:
        payload = [_as_json(d) for _, d in results]
        out: object = payload[0] if len(payload) == 1 else payload
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        click.echo("\n\n".join(render(path, d) for path, d in results))
    return int(ExitCode.OK)
