"""From options to a finished run: resolve config, find nix, plan, supervise, report.

The glue between the CLI (parsing) and the supervisor (the loop). Everything that needs
the outside world before a build (nix's version, a derived fallback's existence, the
terminal) is looked up here, once, and handed on as plain values.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import click

from . import config as config_mod
from . import nixcmd, plan, policy
from .console import Console
from .errors import ExitCode, NixMissingError, UsageError
from .model import Mode
from .process import CommandNotFound, run_capture
from .supervisor import Outcome, RunRequest, Supervisor

FLAG_NAMES = (
    "cores",
    "max_jobs",
    "log_dir",
    "out_link",
    "fallback",
    "no_fallback",
    "max_attempts",
    "deadline",
    "max_duration",
    "stall_timeout",
    "gc",
    "quiet",
)


def probe_nix(environ: Mapping[str, str] | None = None) -> nixcmd.NixInfo:
    try:
        done = run_capture(["nix", "--version"], env=environ, timeout=30)
    except CommandNotFound:
        raise NixMissingError(
            "nix is not installed (not found on PATH)", hint=nixcmd.INSTALL_HINT
        ) from None
    if not done.ok:
        raise NixMissingError(
            f"`nix --version` failed: {done.stderr.strip() or done.stdout.strip()}"
        )
    return nixcmd.NixInfo(nixcmd.parse_nix_version(done.stdout))


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def stop_time(cfg: config_mod.Config, now: datetime) -> float | None:
    """The earlier of --deadline (next occurrence of HH:MM, local time) and --max-duration."""
    limits = []
    if cfg["deadline"]:
        hour, minute = map(int, cfg["deadline"].split(":"))
        at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if at <= now:
            at += timedelta(days=1)
        limits.append(at.timestamp())
    if cfg["max_duration"]:
        limits.append(now.timestamp() + cfg["max_duration"])
    return min(limits) if limits else None


def load_config(
    opts: Mapping[str, Any], installable: str | None, mode: str | None
) -> config_mod.Config:
    flags = {name: opts.get(name) for name in FLAG_NAMES}
    flags["installable"] = installable
    flags["mode"] = mode
    return config_mod.load(flags, config_path=opts.get("config_path"), job=opts.get("job"))


def run_supervised(
    mode: str,
    installable: str | None,
    extra: tuple[str, ...],
    command: tuple[str, ...],
    opts: Mapping[str, Any],
    *,
    force_mode: bool = True,
) -> int:
    cfg = load_config(opts, installable, mode if force_mode else None)
    target = cfg["installable"] or ".#default"
    reason = nixcmd.check_installable(target)
    if reason is not None:
        raise UsageError(f"malformed installable {target!r}: {reason}")
    nix = probe_nix()
    run_mode = Mode(cfg["mode"])
    state_dir = cfg.get_path("state_dir") or config_mod.default_state_dir(os.environ)
    gcroot = cfg.get_path("out_link")
    if gcroot is None:
        gcroot = (
            Path("result")
            if run_mode is Mode.BUILD
            else state_dir / "profiles" / nixcmd.slug(target)
        )
    gcroot = gcroot.absolute()
    try:
        gcroot.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {gcroot.parent} for the GC root: {exc.strerror}") from None
    first = plan.first_spec(
        target,
        usable_cpus=usable_cpus(),
        cores=cfg["cores"],
        max_jobs=cfg["max_jobs"] if cfg.sources["max_jobs"] != "default" else None,
    )
    fallback = None if cfg["no_fallback"] else cfg["fallback"]
    request = RunRequest(
        mode=run_mode,
        first=first,
        log_dir=Path(cfg["log_dir"]).expanduser(),
        gcroot=gcroot,
        extra_args=extra,
        command=command,
        job=cfg.job,
        policy=policy.PolicyConfig(
            max_attempts=cfg["max_attempts"], gc_allowed=cfg["gc"], fallback=fallback
        ),
        stop_at=stop_time(cfg, datetime.now()),
        grace_s=cfg["grace"],
        stall_timeout_s=cfg["stall_timeout"],
    )
    console = Console(
        sys.stderr, tty=sys.stderr.isatty(), quiet=cfg["quiet"], heartbeat_s=cfg["heartbeat"]
    )
    outcome = Supervisor(request, nix, console).run()
    _print_result(outcome, request)
    return int(outcome.exit_code)


def _print_result(outcome: Outcome, request: RunRequest) -> None:
    if outcome.exit_code == ExitCode.USAGE:
        click.echo(
            f"nixbuild: error: {request.first.installable} does not exist (see above); "
            "check the flake path and attribute name",
            err=True,
        )
    attempts = len(outcome.attempts)
    click.echo(
        f"nixbuild: {outcome.status} after {attempts} attempt(s), exit {int(outcome.exit_code)}",
        err=True,
    )
    click.echo(f"nixbuild: summary {outcome.run_dir / 'summary.json'}", err=True)
    if outcome.outputs:
        what = "dev-shell profile" if request.mode is Mode.DEVELOP else "GC root"
        click.echo(f"nixbuild: {what} {request.gcroot} -> {outcome.outputs[0]}", err=True)
        if request.mode is Mode.BUILD:
            for path in outcome.outputs:
                click.echo(path)


def run_demo(opts: Mapping[str, Any]) -> int:
    """Copy the embedded demo flake to a temporary directory and build it supervised."""
    source = resources.files("nixbuild") / "demo"
    workdir = Path(tempfile.mkdtemp(prefix="nixbuild-demo-"))
    try:
        for entry in source.iterdir():
            if entry.name.endswith(".nix"):
                (workdir / entry.name).write_text(entry.read_text())
        (workdir / "nonce.txt").write_text(os.urandom(8).hex())
        # --offline: the demo needs nothing from a binary cache and must not wait for one.
        return run_supervised("build", f"path:{workdir}#default", ("--offline",), (), opts)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def describe_config(job: str | None, config_path: str | None) -> str:
    cfg = config_mod.load({}, config_path=config_path, job=job)
    state_dir = cfg.get_path("state_dir") or config_mod.default_state_dir(os.environ)
    rows = [f"config file: {cfg.file or '(none found)'}"]
    if cfg.jobs:
        rows.append(f"jobs: {', '.join(cfg.jobs)}" + (f" (showing {cfg.job})" if cfg.job else ""))
    rows.append(f"state dir: {state_dir}")
    rows.append(f"ledger: {state_dir / 'ledger.sqlite3'}")
    width = max(len(opt.name) for opt in config_mod.OPTIONS)
    for opt in config_mod.OPTIONS:
        value = cfg.values[opt.name]
        shown = (
            "(unset)"
            if value is None
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )
        rows.append(f"{opt.name.ljust(width)}  {shown:<24} from {cfg.sources[opt.name]}")
    return "\n".join(rows)
