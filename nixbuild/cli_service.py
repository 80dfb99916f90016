"""``nixbuild service install|uninstall|status|logs`` and ``nixbuild doctor``.

Thin click commands: the work is in service.py (systemctl), probe.py and assess.py. Each
command returns its exit code and raises NixbuildError subclasses, which ``cli.main`` maps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from . import config as config_mod
from . import process
from .assess import MODES, Thresholds, assess, gib, thresholds_from
from .cli import HOW_MANY
from .errors import ExitCode, NixbuildError
from .probe import MachineFacts, collect_facts
from .retention import is_run_dir_name
from .service import ServiceStatus, UserManager
from .systemd import DEFAULT_ON_CALENDAR, service_unit, validate_job_name
from .watchdog import default_threshold


def _job(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        return validate_job_name(value)
    except NixbuildError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group("service")
def service_group() -> None:
    """The systemd user units that run a configured job every night."""


@service_group.command("install")
@click.argument("job", callback=_job)
@click.option(
    "--on-calendar",
    default=DEFAULT_ON_CALENDAR,
    show_default=True,
    help="when to start the job (systemd.time calendar syntax, e.g. 'daily', '*-*-* 02:30')",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, exists=True),
    help="directory the job runs in (its nixbuild.toml, flake and ./logs) [current directory]",
)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="config file")
def install(job: str, on_calendar: str, workdir: str | None, config_path: str | None) -> int:
    """Install and start nixbuild@JOB.timer (JOB is a [jobs.JOB] table of the config file)."""
    where = Path(workdir or Path.cwd()).absolute()
    cfg = config_mod.load({}, cwd=where, config_path=config_path, job=job)  # unknown job: exit 2
    config_file = cfg.file.absolute() if config_path and cfg.file else None
    result = UserManager().install(
        job, on_calendar=on_calendar, workdir=where, config_file=config_file
    )
    for path in result.written:
        click.echo(f"wrote {path}")
    click.echo(f"enabled {result.timer}; next start: {result.next_elapse or 'unknown'}")
    click.echo(f"runs in {where}; logs: nixbuild service logs {job}")
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    return 0


@service_group.command("uninstall")
@click.argument("job", callback=_job)
def uninstall(job: str) -> int:
    """Stop and disable nixbuild@JOB.timer and remove its unit files."""
    for path in UserManager().uninstall(job):
        click.echo(f"removed {path}")
    return 0


@service_group.command("status")
@click.argument("job", callback=_job)
def status(job: str) -> int:
    """The timer's next start, the service's state and the last recorded run."""
    st = UserManager().status(job)
    if not st.installed:
        click.echo(f"nixbuild@{job}.timer is not installed (nixbuild service install {job})")
        return int(ExitCode.FAILED)
    click.echo(render_status(st))
    click.echo(f"last run: {_last_run(job, st.service.get('WorkingDirectory') or '')}")
    return 0


def render_status(st: ServiceStatus) -> str:
    t, s = st.timer, st.service
    lines = [
        f"timer   nixbuild@{st.job}.timer: {t.get('ActiveState', '?')} "
        f"({t.get('UnitFileState', '?')}), next start {t.get('NextElapseUSecRealtime') or 'n/a'}, "
        f"last start {t.get('LastTriggerUSec') or 'never'}",
        f"service nixbuild@{st.job}.service: {s.get('ActiveState', '?')}/{s.get('SubState', '?')}"
        f", result {s.get('Result', '?')}, exit status {s.get('ExecMainStatus', '?')}",
    ]
    if s.get("StatusText"):
        lines.append(f"        status: {s['StatusText']}")
    return "\n".join(lines)


def _last_run(job: str, workdir: str) -> str:
    from .ledger import Ledger, describe_run

    cwd = Path(workdir) if workdir.startswith("/") else Path.cwd()
    try:
        cfg = config_mod.load({}, cwd=cwd, job=job)
        state_dir = cfg.get_path("state_dir") or config_mod.default_state_dir(os.environ)
        path = state_dir / "ledger.sqlite3"
        if not path.is_file():
            return "none recorded yet"
        with Ledger(path) as ledger:
            rows = ledger.history(job=job, limit=1)
    except NixbuildError as exc:
        return f"unknown ({exc.message})"
    return describe_run(rows[0]) if rows else "none recorded yet"


@service_group.command("logs")
@click.argument("job", callback=_job)
@click.option(
    "-n",
    "--lines",
    type=HOW_MANY,
    default=200,
    show_default=True,
    help="how many lines",
)
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines")
@click.option(
    "--log-dir",
    envvar="NIXBUILD_LOG_DIR",
    type=click.Path(file_okay=False),
    help="read the newest run directory here when the journal has nothing",
)
def logs(job: str, lines: int, follow: bool, log_dir: str | None) -> int:
    """The job's journal (journalctl --user -u nixbuild@JOB.service), else its run files."""
    argv = ["journalctl", "--user", "-u", service_unit(job), "--no-pager", "-n", str(lines)]
    if follow:
        return _follow([*argv, "--follow"])
    try:
        done = process.run_capture(argv, timeout=60)
    except process.CommandNotFound:
        done = None
    text = done.stdout.strip() if done is not None and done.ok else ""
    if text and text != "-- No entries --":
        click.echo(done.stdout if done is not None else "", nl=False)
        return 0
    click.echo(f"(the journal has no entries for {service_unit(job)})", err=True)
    if log_dir is None:
        try:
            log_dir = str(config_mod.load({}, job=job)["log_dir"])
        except NixbuildError:
            log_dir = "logs"
    return _print_run_files(Path(log_dir).expanduser(), lines)


def _follow(argv: list[str]) -> int:
    child = process.Supervised(
        argv,
        on_stdout=process.each_line(click.echo),
        on_stderr=process.each_line(lambda line: click.echo(line, err=True)),
    )
    try:
        status, _sig = child.wait()
    except KeyboardInterrupt:
        child.stop(grace_s=2)
        return 0
    return status or 0


def _print_run_files(log_dir: Path, lines: int) -> int:
    runs = sorted(p for p in log_dir.glob("*") if p.is_dir() and is_run_dir_name(p.name))
    if not runs:
        click.echo(f"no run directories under {log_dir} (use --log-dir DIR)", err=True)
        return int(ExitCode.FAILED)
    newest = runs[-1]
    click.echo(f"newest run directory: {newest}")
    logs_ = sorted(newest.glob("attempt-*.log"), key=lambda p: p.stat().st_mtime)
    if logs_:
        tail = logs_[-1].read_text(errors="replace").splitlines()[-lines:]
        click.echo(f"--- {logs_[-1].name} (last {len(tail)} lines)")
        click.echo("\n".join(tail))
    summary = newest / "summary.json"
    if summary.is_file():
        click.echo(f"--- {summary.name}")
        click.echo(summary.read_text(errors="replace"), nl=False)
    return 0


# --- doctor ------------------------------------------------------------------------------


def render_doctor(facts: MachineFacts, thresholds: Thresholds, mode: str) -> tuple[str, bool]:
    a = assess(facts, thresholds, mode)
    quota = f" (cgroup quota {facts.cpu_quota:g})" if facts.cpu_quota is not None else ""
    limit = facts.cgroup_memory_limit_bytes
    lines = [
        "machine",
        f"  memory      {gib(facts.mem_available_bytes)} available of {gib(facts.mem_total_bytes)}"
        + (f" (cgroup limit {gib(limit)})" if limit is not None else ""),
        f"  cores       {facts.cores} usable (affinity {facts.cpu_affinity}){quota}",
        f"  store disk  {gib(facts.store_free_bytes)} free for {facts.store_dir}",
        f"  build disk  {gib(facts.build_free_bytes)} free for {facts.build_dir}",
        f"  nix         {facts.nix_version or 'not found'}"
        + (f", {facts.nix_store_mode} store" if facts.nix_store_mode else ""),
        f"  options     {facts.nix_trust_reason}",
        "thresholds",
        f"  heavy source builds need {gib(thresholds.min_memory_bytes)} memory, "
        f"{gib(thresholds.min_disk_bytes)} free disk, {thresholds.min_cores} cores; "
        f"comfortable from {gib(thresholds.comfort_memory_bytes)} and "
        f"{thresholds.comfort_cores} cores",
        f"assessment ({a.tier}, --mode {a.mode})",
        *(f"  {r}" for r in a.reasons),
        *(f"  warning: {w}" for w in a.warnings),
        f"plan: {a.plan_text()}",
    ]
    if a.cannot_succeed:
        lines += ["cannot succeed:", *(f"  {r}" for r in a.refusals)]
    return "\n".join(lines), a.cannot_succeed


@click.command("doctor")
@click.option(
    "--mode",
    type=click.Choice(MODES),
    help="source: build from source; bin: the -bin variant; auto: decide from the machine "
    "[the config's `variant`]",
)
@click.option("--job", help="judge for this job of the config file")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="config file")
@click.option("--json", "as_json", is_flag=True, help="print machine-readable JSON")
def doctor_command(
    mode: str | None, job: str | None, config_path: str | None, as_json: bool
) -> int:
    """Machine and Nix facts, the thresholds, and the plan nixbuild would choose.

    Exits 3 when a build cannot possibly succeed here.
    """
    cfg = config_mod.load({}, config_path=config_path, job=job)
    mode = mode or str(cfg["variant"])
    facts = collect_facts()
    thresholds = thresholds_from(cfg.values)
    watchdog_bytes = cfg["min_free_memory"] or default_threshold(facts.mem_total_bytes)
    watchdog = int(watchdog_bytes) if cfg["watchdog"] else None
    if as_json:
        a = assess(facts, thresholds, mode)
        data: dict[str, Any] = {
            "schema": 1,
            "facts": facts.to_json(),
            "thresholds": thresholds.to_json(),
            "watchdog_threshold_bytes": watchdog,
            "assessment": a.to_json(),
        }
        click.echo(json.dumps(data, indent=2))
        return int(ExitCode.REFUSED) if a.cannot_succeed else 0
    text, refused = render_doctor(facts, thresholds, mode)
    click.echo(text)
    if watchdog is not None:
        click.echo(f"memory watchdog: stops the build below {watchdog // 1024**2} MiB available")
    else:
        click.echo("memory watchdog: off")
    return int(ExitCode.REFUSED) if refused else 0
