"""How CI services read nixbuild's output, modelled for the tests: the GitHub Actions runner's
workflow-command parsing and a Markdown renderer's view of the step summary's table.

Shared by test_ciformat.py (golden transcripts), test_report.py (reports) and test_ci_e2e.py
(real runs), so all three judge the output by the same rules.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import pytest


def need(module: str) -> ModuleType:
    """A test dependency: skip without it, but fail in CI, which must run these checks."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{module} is required in CI (test extra)")
        pytest.skip(f"{module} not installed")


def github_runner(lines: Sequence[str]) -> tuple[list[str], list[str]]:
    """(commands the Actions runner executes, lines it shows), honouring stop-commands."""
    executed: list[str] = []
    shown: list[str] = []
    resume: str | None = None
    for line in lines:
        if resume is not None:
            if line.strip() == f"::{resume}::":
                resume = None
            else:
                shown.append(line)
            continue
        if m := re.fullmatch(r"::stop-commands::(\S+)", line.strip()):
            resume = m.group(1)
        elif line.lstrip().startswith("::"):
            executed.append(line.strip())
        else:
            shown.append(line)
    assert resume is None, "workflow commands left stopped at the end of the step"
    return executed, shown


def md_tokens(text: str) -> list[Any]:
    """The Markdown as markdown-it (CommonMark + tables, like GitHub) parses it."""
    markdown_it = need("markdown_it")
    parser = markdown_it.MarkdownIt("commonmark").enable("table")
    tokens: list[Any] = parser.parse(text)
    return tokens


def table_rows(tokens: list[Any]) -> list[list[str]]:
    """Each row of the first table as the rendered text of its cells."""
    rows: list[list[str]] = []
    cell: list[str] | None = None
    for tok in tokens:
        if tok.type == "table_close":
            break
        if tok.type == "tr_open":
            rows.append([])
        elif tok.type in ("th_open", "td_open"):
            cell = []
        elif tok.type == "inline" and cell is not None:
            cell.append("".join(c.content for c in tok.children or [] if c.type == "text"))
        elif tok.type in ("th_close", "td_close") and cell is not None:
            rows[-1].append("".join(cell))
            cell = None
    return rows
