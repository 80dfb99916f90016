"""`nixbuild demo`: the embedded demo flake, copied to a temporary directory, built supervised."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from .runner import run_supervised


def run_demo(opts: Mapping[str, Any]) -> int:
    """Copy the embedded demo flake to a temporary directory and build it supervised."""
    source = resources.files("nixbuild") / "demo"
    workdir = Path(tempfile.mkdtemp(prefix="nixbuild-demo-"))
    try:
        for entry in source.iterdir():
            if entry.name.endswith(".nix"):
                (workdir / entry.name).write_text(entry.read_text())
        (workdir / "nonce.txt").write_text(os.urandom(8).hex())
        demo = dict(opts)
        # Start high so the ladder shows even on a small machine; keep the pauses short.
        # `is None`, not `or`: --cores 0 must reach the config check and be refused (exit 2).
        if demo.get("cores") is None:
            demo["cores"] = 8
        demo["fallback"] = demo.get("fallback") or f"path:{workdir}#demo-app-bin"
        demo["oom_delay"] = 1
        # --offline: the demo needs nothing from a binary cache and must not wait for one.
        return run_supervised("build", f"path:{workdir}#default", ("--offline",), (), demo)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
