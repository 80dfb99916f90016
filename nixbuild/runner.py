"""From options to a finished run: resolve config, find nix, preflight, plan, supervise.

The glue between the CLI (parsing) and the supervisor (the loop). Everything that needs
the outside world before a build (nix's version, machine facts, a derived fallback's
existence, the ledger's memory, the job lock) is looked up here, once, and handed on as
plain values.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import assess, cidetect, nixcmd, nixfacts, outlink, plan, policy, probe, retention
from . import config as config_mod
from . import fallback as fallbacks
from .attempt import AttemptSettings
from .console import Console
from .errors import ExitCode, PreflightRefused, UsageError
from .ledger import LEDGER_FILENAME, Ledger
from .lock import JobLock, lock_name
from .model import AttemptSpec, Mode, Variant
from .observers import HookObserver, LedgerObserver, NotifyObserver, RunObserver
from .summary import Outcome
from .supervisor import RunRequest, Supervisor
from .systemd import Notifier
from .watchdog import default_threshold

if TYPE_CHECKING:
    from types import ModuleType

    from .wrapcmd import WrappedCommand

# Imported where used: the CI renderers and reports (ci, ciformat, report) only in CI or
# when a report is asked for, and the `nixbuild run` parts (wrapcmd, wraprun) only for a
# wrapped command. Together they were ≈30 ms of every build's start-up.


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
    # Every command-line option that is also a config key is a flag for config.load;
    # tests/test_cli.py checks that no run option is left out of the config table.
    flags: dict[str, object | None] = {
        name: value for name, value in opts.items() if name in config_mod.BY_NAME
    }
    flags["installable"] = installable
    flags["mode"] = mode
    return config_mod.load(flags, config_path=opts.get("config_path"), job=opts.get("job"))


def state_dir_of(cfg: config_mod.Config) -> Path:
    return cfg.get_path("state_dir") or config_mod.default_state_dir(os.environ)


def preflight(
    cfg: config_mod.Config, console: Console
) -> tuple[probe.MachineFacts, assess.Assessment]:
    facts = probe.collect_facts(
        version_cache=state_dir_of(cfg) / nixfacts.CACHE_FILENAME,
    )
    if facts.nix_version is None:
        raise nixfacts.missing_nix_error()
    verdict = assess.assess(facts, assess.thresholds_from(cfg.values), cfg["variant"])
    if verdict.cannot_succeed:
        raise PreflightRefused(
            "preflight refused: " + "; ".join(verdict.refusals),
            hint="`nixbuild doctor` shows the machine facts",
        )
    for warning in verdict.warnings:
        console.say(f"nixbuild: warning: {warning}", 0)
    return facts, verdict


def first_attempt(
    cfg: config_mod.Config,
    target: str,
    verdict: assess.Assessment,
    *,
    remembered: tuple[int, int] | None,
    fallback: str | None,
    cores: int,
    wrapped: WrappedCommand | None = None,
) -> AttemptSpec:
    # Only the user's own settings are explicit. Preflight's conservative cores for a
    # smaller machine are a ceiling, like the machine's CPUs: they must not override what
    # the ledger remembers (adaptive start), only cap it.
    explicit_cores = cfg["cores"] if cfg.sources["cores"] != "default" else None
    explicit_jobs = cfg["max_jobs"] if cfg.sources["max_jobs"] != "default" else verdict.max_jobs
    if remembered is not None and cfg.sources["max_jobs"] == "default":
        explicit_jobs = None
    cores = min(cores, verdict.cores or cores)
    if wrapped is not None:
        from .wrapcmd import starting_parallelism  # noqa: PLC0415 - see the imports

        explicit_cores, explicit_jobs = starting_parallelism(
            wrapped,
            cfg["cores"] if cfg.sources["cores"] != "default" else None,
            cfg["max_jobs"] if cfg.sources["max_jobs"] != "default" else None,
        )
    if verdict.variant is Variant.BIN:
        if fallback is None:
            raise UsageError(
                "the prebuilt variant was asked for (--variant bin) but there is none",
                hint="name it with --fallback INSTALLABLE",
            )
        return plan.first_spec(
            fallback,
            usable_cpus=cores,
            cores=explicit_cores,
            max_jobs=explicit_jobs,
            variant=Variant.BIN,
        )
    return plan.first_spec(
        target,
        usable_cpus=cores,
        cores=explicit_cores,
        max_jobs=explicit_jobs,
        remembered=remembered,
    )


@contextlib.contextmanager
def job_lock(state_dir: Path, name: str, console: Console) -> Iterator[None]:
    with JobLock(state_dir, name, command=sys.argv) as lock:
        if lock.takeover_message:
            console.say(f"nixbuild: {lock.takeover_message}", 0)
        yield


def run_supervised(
    mode: str,
    installable: str | None,
    extra: tuple[str, ...],
    command: tuple[str, ...],
    opts: Mapping[str, Any],
    *,
    wrapped: WrappedCommand | None = None,
) -> int:
    """Run a supervised build; ``wrapped`` is the user's own command line (`nixbuild run`)."""
    cfg = load_config(opts, installable, None if opts.get("job") else mode)
    target = wrapped.display_name if wrapped else cfg["installable"] or ".#default"
    reason = None if wrapped else nixcmd.check_installable(target)
    if reason is not None:
        raise UsageError(f"malformed installable {target!r}: {reason}")
    clash = nixcmd.parallelism_in(extra)
    if clash is not None:
        raise UsageError(
            f"`{clash}` after -- would override the parallelism nixbuild manages",
            hint="use nixbuild's own --cores/--max-jobs: they set the first attempt, and "
            "nixbuild lowers them after an out-of-memory failure",
        )
    ci = _ci_module(cfg)
    json_path = ci.check_report_path(cfg["json"], "--json") if ci else None
    junit_path = ci.check_report_path(cfg["junit"], "--junit") if ci else None
    renderer = ci.choose_renderer(cfg["ci_format"], os.environ) if ci else None
    console = Console(
        sys.stderr,
        tty=sys.stderr.isatty() and renderer is None,
        quiet=cfg["quiet"],
        heartbeat_s=cfg["heartbeat"],
    )
    facts, verdict = preflight(cfg, console)
    nix = nixcmd.NixInfo.from_version(facts.nix_version or "")
    state_dir = state_dir_of(cfg)
    run_mode, gcroot = _mode_and_gcroot(cfg, wrapped, state_dir, target)
    log_dir = Path(cfg["log_dir"]).expanduser()

    def say(text: str) -> None:
        console.say(text, 0)

    with (
        job_lock(state_dir, lock_name(cfg.job, target), console),
        Ledger(state_dir / LEDGER_FILENAME) as ledger,
    ):
        ledger.mark_abandoned(host=socket.gethostname())
        remembered = None if opts.get("fresh") else ledger.last_good_parallelism(target)
        fallback, derived = fallbacks.choose_fallback(
            cfg, target, wrapped=wrapped is not None, say=say
        )
        if derived and fallback and verdict.variant is Variant.BIN:
            if not fallbacks.check_fallback(nix, fallback, extra):
                fallback = None  # first_attempt says why it cannot build the -bin variant
            derived = False
        first = first_attempt(
            cfg,
            target,
            verdict,
            remembered=remembered,
            fallback=fallback,
            cores=facts.cores,
            wrapped=wrapped,
        )
        if remembered and first.cores == remembered[0] and cfg.sources["cores"] == "default":
            say(
                f"nixbuild: starting at cores {first.cores}, max-jobs {first.max_jobs}: the "
                "last run of this installable succeeded there after running out of memory "
                "(--fresh ignores this)"
            )
        settings = _attempt_settings(cfg, run_mode, gcroot, extra, command, facts=facts)
        after_success = None
        if wrapped:
            from . import wraprun  # noqa: PLC0415 - see the imports

            settings = replace(settings, argv_for=wraprun.wrap_argv(wrapped))
            after_success = functools.partial(wraprun.run_wrapped_command, wrapped, say)
        request = RunRequest(
            first=first,
            log_dir=log_dir,
            attempt=settings,
            job=cfg.job,
            policy=_policy(cfg, fallback),
            fail_on_fallback=cfg["fail_on_fallback"],
            after_success=after_success,
            verify_fallback=(lambda inst: fallbacks.check_fallback(nix, inst, extra))
            if derived
            else None,
        )
        observers: list[RunObserver] = [
            LedgerObserver(ledger),
            NotifyObserver(Notifier()),
            HookObserver(cfg["on_success"], cfg["on_failure"], say),
        ]
        if ci is not None and renderer is not None:
            observers.append(ci.CiObserver(renderer, say, request.policy.max_attempts))
        outcome = Supervisor(
            request,
            nix,
            console,
            observers=observers,
            attempt_lines=renderer is None,
            # Under systemd stderr is the journal: give it the structured events too.
            journal=sys.stderr if os.environ.get("JOURNAL_STREAM") else None,
        ).run()
    retention.prune(
        log_dir,
        retention.RetentionPolicy(
            max_runs=cfg["keep_runs"],
            max_total_bytes=cfg["keep_size"],
            # the newest few survive a size overflow, but never more than keep_runs
            min_runs=min(retention.RetentionPolicy().min_runs, cfg["keep_runs"]),
        ),
        current=outcome.run_id,
    )
    if ci is not None:
        ci.write_reports(outcome, json_path, junit_path, say)
    # The run is on disk already; a terminal that hung up (EIO) must not change its exit code.
    with contextlib.suppress(OSError):
        _print_result(outcome, request)
    return int(outcome.exit_code)


def _ci_module(cfg: config_mod.Config) -> ModuleType | None:
    """The CI module when this run needs it: in CI (or --ci-format) or for a report file."""
    in_ci = cidetect.detect_ci(os.environ, cfg["ci_format"]) is not cidetect.Flavor.TERMINAL
    if not in_ci and cfg["json"] is None and cfg["junit"] is None:
        return None
    from . import ci  # noqa: PLC0415 - see the imports

    return ci


def _mode_and_gcroot(
    cfg: config_mod.Config, wrapped: WrappedCommand | None, state_dir: Path, target: str
) -> tuple[Mode, Path | None]:
    if wrapped is None:
        mode = Mode(cfg["mode"])
        return mode, _gcroot(cfg, mode, state_dir, target)
    from . import wraprun  # noqa: PLC0415 - see the imports

    return wraprun.wrap_mode(wrapped), wraprun.wrap_gcroot(wrapped)


def _gcroot(cfg: config_mod.Config, mode: Mode, state_dir: Path, target: str) -> Path:
    return outlink.checked_out_link(
        cfg.get_path("out_link") or outlink.default_out_link(mode, state_dir, target),
        profile=mode is Mode.DEVELOP,
    )


def _attempt_settings(
    cfg: config_mod.Config,
    mode: Mode,
    gcroot: Path | None,
    extra: tuple[str, ...],
    command: tuple[str, ...],
    *,
    facts: probe.MachineFacts,
) -> AttemptSettings:
    watchdog_bytes = None
    if cfg["watchdog"]:
        watchdog_bytes = cfg["min_free_memory"] or default_threshold(
            probe.read_memory().total_bytes
        )
    return AttemptSettings(
        mode=mode,
        gcroot=gcroot,
        extra_args=extra,
        command=command,
        stop_at=stop_time(cfg, datetime.now()),
        grace_s=cfg["grace"],
        stall_timeout_s=cfg["stall_timeout"],
        watchdog_bytes=watchdog_bytes,
        builders_in_our_cgroup=facts.nix_store_mode != "daemon",
    )


def _policy(cfg: config_mod.Config, fallback: str | None) -> policy.PolicyConfig:
    return policy.PolicyConfig(
        network_base_s=cfg["network_backoff"],
        network_cap_s=cfg["network_backoff_cap"],
        network_retries=cfg["network_retries"],
        oom_delay_s=cfg["oom_delay"],
        settle_delay_s=cfg["settle_delay"],
        gc_allowed=cfg["gc"],
        fallback=fallback,
        max_attempts=cfg["max_attempts"],
        unknown_stops=cfg["unknown_stops"],
    )


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
    if (outcome.run_dir / "summary.json").is_file():
        click.echo(f"nixbuild: summary {outcome.run_dir / 'summary.json'}", err=True)
    if outcome.outputs:
        develop = request.attempt.mode is Mode.DEVELOP
        what = "dev-shell profile" if develop else "GC root"
        click.echo(f"nixbuild: {what} {request.attempt.gcroot} -> {outcome.outputs[0]}", err=True)
        if not develop:
            for path in outcome.outputs:
                click.echo(path)
