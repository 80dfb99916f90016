"""Install, uninstall and inspect a job's units through ``systemctl --user``.

Every call goes through ``process.run_capture`` (injectable as ``run``); the unit files
themselves are rendered by ``systemd.plan_unit_files``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import process
from .errors import NixbuildError, UsageError
from .systemd import (
    DEFAULT_ON_CALENDAR,
    SERVICE_TEMPLATE,
    TIMER_TEMPLATE,
    UserManagerUnavailable,
    nixbuild_command,
    parse_show,
    plan_unit_files,
    service_unit,
    timer_unit,
    user_unit_dir,
)

Runner = Callable[[Sequence[str]], process.Completed]

LINGER_EXPLAINED = (
    "without lingering the user manager (and a build it runs) stops when you log out, and "
    "the timer fires only while you are logged in"
)


def linger_warning(user: str, linger: bool | None) -> str | None:
    if linger is True:
        return None
    if linger is False:
        return (
            f"lingering is off for {user}: {LINGER_EXPLAINED}. Fix: loginctl enable-linger {user}"
        )
    return (
        f"could not ask logind whether lingering is on for {user}; if it is off, "
        f"{LINGER_EXPLAINED}. Fix: loginctl enable-linger {user}"
    )


@dataclass(frozen=True, slots=True)
class InstallResult:
    written: tuple[Path, ...]
    timer: str
    next_elapse: str | None
    warnings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    job: str
    timer: Mapping[str, str]
    service: Mapping[str, str]

    @property
    def installed(self) -> bool:
        return self.timer.get("LoadState") == "loaded"


class UserManager:
    """``systemctl --user`` and friends, through the one process chokepoint."""

    def __init__(self, run: Runner | None = None, env: Mapping[str, str] | None = None):
        self.env = os.environ if env is None else env
        self._run: Runner = run or (
            lambda argv: process.run_capture(argv, env=self.env, timeout=60)
        )

    def _call(self, argv: Sequence[str]) -> process.Completed:
        try:
            return self._run(argv)
        except process.CommandNotFound as exc:
            raise UserManagerUnavailable(
                f"{argv[0]} is not installed: this machine has no systemd",
                hint="run `nixbuild build --job JOB` from cron or a CI scheduler instead",
            ) from exc

    def systemctl(self, *args: str, check: bool = True) -> process.Completed:
        done = self._call(["systemctl", "--user", *args])
        if check and not done.ok:
            detail = (done.stderr or done.stdout).strip()
            raise NixbuildError(f"systemctl --user {' '.join(args)} failed: {detail}")
        return done

    def require_manager(self) -> str:
        """The manager's state; raises (exit 3) when there is no user manager to talk to."""
        done = self._call(["systemctl", "--user", "is-system-running"])
        state = done.stdout.strip()
        if state in {"running", "degraded", "starting", "initializing", "maintenance"}:
            return state
        detail = (done.stderr or done.stdout).strip() or f"exit status {done.status}"
        raise UserManagerUnavailable(
            f"no systemd user manager is reachable ({detail})",
            hint="log in through a session that starts `systemd --user` (a normal desktop or "
            "SSH login does; `su` and `sudo` do not), so that XDG_RUNTIME_DIR is set, "
            "usually to /run/user/$UID",
        )

    def lingering(self, user: str) -> bool | None:
        try:
            done = self._run(["loginctl", "show-user", user, "-p", "Linger", "--value"])
        except process.CommandNotFound:
            return None
        value = done.stdout.strip()
        return {"yes": True, "no": False}.get(value) if done.ok else None

    def normalize_calendar(self, spec: str) -> str:
        try:
            done = self._run(["systemd-analyze", "calendar", spec])
        except process.CommandNotFound:
            return spec  # systemd-analyze is optional; the manager rejects bad specs anyway
        if not done.ok:
            raise UsageError(
                f"invalid --on-calendar {spec!r}: {(done.stderr or done.stdout).strip()}",
                hint="see `man systemd.time`, e.g. 'daily', '*-*-* 02:30', 'Mon..Fri 23:00'",
            )
        for line in done.stdout.splitlines():
            key, _, value = line.strip().partition(": ")
            if key == "Normalized form":
                return value.strip()
        return spec

    def show(self, unit: str, *props: str) -> dict[str, str]:
        args = [arg for p in props for arg in ("-p", p)]
        return parse_show(self.systemctl("show", unit, *args).stdout)

    def install(
        self,
        job: str,
        *,
        on_calendar: str = DEFAULT_ON_CALENDAR,
        workdir: Path,
        config_file: Path | None = None,
        command: Sequence[str] | None = None,
        user: str | None = None,
    ) -> InstallResult:
        calendar = self.normalize_calendar(on_calendar)  # a usage error first: exit 2, not 3
        self.require_manager()
        files = plan_unit_files(
            job,
            on_calendar=calendar,
            command=command or nixbuild_command(),
            path=self.env.get("PATH", ""),
            workdir=workdir,
            config_file=config_file,
        )
        written = files.write(user_unit_dir(self.env))
        self.systemctl("daemon-reload")
        timer = timer_unit(job)
        self.systemctl("enable", "--now", timer)
        next_elapse = self.show(timer, "NextElapseUSecRealtime").get("NextElapseUSecRealtime")
        user = user or _user_name()
        warning = linger_warning(user, self.lingering(user))
        warnings = (warning,) if warning else ()
        return InstallResult(tuple(written), timer, next_elapse or None, warnings)

    def uninstall(self, job: str) -> list[Path]:
        """Stop and disable the job's units; remove the templates when no job uses them."""
        self.require_manager()
        timer, service = timer_unit(job), service_unit(job)
        self.systemctl("disable", "--now", timer, check=False)
        self.systemctl("stop", service, check=False)
        unit_dir = user_unit_dir(self.env)
        removed = _remove_tree_files(unit_dir / f"{timer}.d") + _remove_tree_files(
            unit_dir / f"{service}.d"
        )
        others = [p for p in unit_dir.glob("nixbuild@?*.*.d") if p.is_dir()]
        if not others:
            for name in (SERVICE_TEMPLATE, TIMER_TEMPLATE):
                path = unit_dir / name
                if path.is_file():
                    path.unlink()
                    removed.append(path)
        self.systemctl("daemon-reload")
        self.systemctl("reset-failed", service, timer, check=False)
        return removed

    def status(self, job: str) -> ServiceStatus:
        self.require_manager()
        timer = self.show(
            timer_unit(job),
            "LoadState",
            "ActiveState",
            "UnitFileState",
            "NextElapseUSecRealtime",
            "LastTriggerUSec",
        )
        service = self.show(
            service_unit(job),
            "LoadState",
            "ActiveState",
            "SubState",
            "Result",
            "StatusText",
            "ExecMainStatus",
            "WorkingDirectory",
        )
        return ServiceStatus(job, timer, service)


def _remove_tree_files(directory: Path) -> list[Path]:
    removed = []
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            if path.is_file() or path.is_symlink():
                path.unlink()
                removed.append(path)
        with contextlib.suppress(OSError):
            directory.rmdir()
    return removed


def _user_name() -> str:
    import pwd  # noqa: PLC0415 - POSIX only

    return pwd.getpwuid(os.getuid()).pw_name
