"""The systemd side: the user units nixbuild installs, and sd_notify.

Units: ``nixbuild@.service`` (instance = job name) and ``nixbuild@.timer`` ship as package
data. The service file is a template with two placeholders that ``install`` fills in:
``@NIXBUILD@`` (the absolute command of *this* nixbuild — a user manager's PATH rarely
contains a virtualenv or ~/.local/bin) and ``@PATH@`` (the installing shell's PATH, so the
service finds the same ``nix``). Filling them into the installed copy keeps everything the
service runs in one file that ``systemctl --user cat`` shows, and leaves the drop-in
directory to the per-job calendar and the user's own overrides.

sd_notify is a datagram to ``$NOTIFY_SOCKET`` (stdlib socket, no libsystemd); it never
raises into the build and does nothing when the variable is unset.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ExitCode, NixbuildError, UsageError

SERVICE_TEMPLATE = "nixbuild@.service"
TIMER_TEMPLATE = "nixbuild@.timer"
CALENDAR_DROPIN = "calendar.conf"
WORKDIR_DROPIN = "workdir.conf"
DEFAULT_ON_CALENDAR = "*-*-* 01:30:00"

# Characters that need no systemd escaping in an instance name; anything else (notably "/",
# which "%I" would turn into a path, and whitespace) is refused rather than escaped so the
# job name, the unit name and the lock file name are one and the same string.
_JOB_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


class UserManagerUnavailable(NixbuildError):
    exit_code = ExitCode.REFUSED


def validate_job_name(job: str) -> str:
    if not _JOB_NAME.fullmatch(job):
        raise UsageError(
            f"invalid job name {job!r}",
            hint="use 1-64 letters, digits, '_', '.', '-' (not starting with '.' or '-'); "
            "the name becomes the systemd instance nixbuild@JOB",
        )
    return job


def service_unit(job: str) -> str:
    return f"nixbuild@{validate_job_name(job)}.service"


def timer_unit(job: str) -> str:
    return f"nixbuild@{validate_job_name(job)}.timer"


# --- unit files ---------------------------------------------------------------------------


def unit_source_dir() -> Path:
    """Where the shipped unit files are: ``nixbuild/units`` in a wheel, ``systemd/`` in a
    checkout or editable install."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "units", package_dir.parent / "systemd"):
        if (candidate / SERVICE_TEMPLATE).is_file() and (candidate / TIMER_TEMPLATE).is_file():
            return candidate
    raise NixbuildError(
        f"the systemd unit files are missing from this installation (looked in "
        f"{package_dir / 'units'} and {package_dir.parent / 'systemd'})",
        hint="reinstall nixbuild",
    )


def user_unit_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    config = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    return Path(config) / "systemd" / "user"


def nixbuild_command(executable: str | None = None) -> tuple[str, ...]:
    """The absolute command line that runs this nixbuild, for ExecStart."""
    if executable is not None:
        return (str(Path(executable).absolute()),)
    beside_python = Path(sys.executable).parent / "nixbuild"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return (str(beside_python),)
    found = shutil.which("nixbuild")
    if found:
        return (str(Path(found).absolute()),)
    if importlib.util.find_spec("nixbuild.__main__") is not None:
        return (sys.executable, "-m", "nixbuild")
    raise NixbuildError(
        "cannot find the nixbuild executable to put into the service unit",
        hint="install nixbuild so that the `nixbuild` command is on PATH",
    )


def unit_quote(arg: str) -> str:
    """Quote one word for a unit file (specifiers and variables escaped, spaces quoted)."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if re.search(r"[\s\"'\\;]", escaped):
        escaped = '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escaped


def render_service(template: str, command: Sequence[str], path: str) -> str:
    entries = [p for p in dict.fromkeys(path.split(os.pathsep)) if p.startswith("/")]
    clean_path = ":".join(entries) or "/usr/local/bin:/usr/bin:/bin"
    return template.replace("@NIXBUILD@", " ".join(unit_quote(a) for a in command)).replace(
        "@PATH@", unit_quote(f"PATH={clean_path}")
    )


def render_workdir_dropin(workdir: Path, config_file: Path | None = None) -> str:
    # The job's config file (./nixbuild.toml), its flake (.#default) and ./logs are relative
    # to where the user ran `service install`, exactly as in an interactive run; a config
    # file named with --config at install time is passed on through its env twin.
    text = (
        "# Written by `nixbuild service install`: the directory it was run from.\n"
        f"[Service]\nWorkingDirectory={unit_quote(str(workdir))}\n"
    )
    if config_file is not None:
        text += f"Environment={unit_quote(f'NIXBUILD_CONFIG={config_file}')}\n"
    return text


def render_calendar_dropin(on_calendar: str) -> str:
    # The empty assignment clears the template's default before setting the job's own.
    return (
        "# Written by `nixbuild service install`; change with --on-calendar.\n"
        f"[Timer]\nOnCalendar=\nOnCalendar={on_calendar}\n"
    )


@dataclass(frozen=True, slots=True)
class UnitFiles:
    """Every file install writes, relative to the user unit dir."""

    files: tuple[tuple[str, str], ...]

    def write(self, unit_dir: Path) -> list[Path]:
        written = []
        for rel, content in self.files:
            dest = unit_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".tmp")
            tmp.write_text(content)
            tmp.replace(dest)
            written.append(dest)
        return written


def plan_unit_files(
    job: str,
    *,
    on_calendar: str,
    command: Sequence[str],
    path: str,
    workdir: Path,
    config_file: Path | None = None,
    source_dir: Path | None = None,
) -> UnitFiles:
    src = source_dir or unit_source_dir()
    service = render_service((src / SERVICE_TEMPLATE).read_text(), command, path)
    timer = (src / TIMER_TEMPLATE).read_text()
    return UnitFiles(
        (
            (SERVICE_TEMPLATE, service),
            (TIMER_TEMPLATE, timer),
            (f"{timer_unit(job)}.d/{CALENDAR_DROPIN}", render_calendar_dropin(on_calendar)),
            (
                f"{service_unit(job)}.d/{WORKDIR_DROPIN}",
                render_workdir_dropin(workdir, config_file),
            ),
        )
    )


def parse_show(text: str) -> dict[str, str]:
    """``systemctl show -p A -p B`` output → {A: …, B: …}."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key] = value
    return props


# --- sd_notify ----------------------------------------------------------------------------


def _socket_address(raw: str) -> str | None:
    if raw.startswith("@"):
        return "\0" + raw[1:]  # abstract namespace
    if raw.startswith("/"):
        return raw
    return None  # vsock and other address families are not used for user services


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1_000_000


class Notifier:
    """Talks to the service manager; every method is a no-op outside a notify service."""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if env is None else env
        self.address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval_s = _watchdog_interval(env)
        self._clock = clock
        self._last_ping: float | None = None
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int | bool) -> bool:
        """Send ``KEY=value`` lines (keys upper-cased, True → 1). Returns whether it was sent."""
        if self.address is None:
            return False
        lines = []
        for key, value in fields.items():
            text = "1" if value is True else "0" if value is False else str(value)
            lines.append(f"{key.upper()}={' '.join(text.splitlines())[:1024]}")
        payload = "\n".join(lines).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                self._sock.sendto(payload, self.address)
            except OSError:
                return False  # the manager went away; the build must go on regardless
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify(ready=True, **({"status": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(status=text)

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(stopping=True, **({"status": status} if status else {}))

    def watchdog(self) -> bool:
        self._last_ping = self._clock()
        return self.notify(watchdog=True)

    def ping_watchdog_if_due(self) -> bool:
        """Cheap enough to call on every log line: pings at half the manager's interval."""
        if self.watchdog_interval_s is None:
            return False
        now = self._clock()
        if self._last_ping is not None and now - self._last_ping < self.watchdog_interval_s / 2:
            return False
        return self.watchdog()

    def close(self) -> None:
        with self._lock, contextlib.suppress(OSError):
            if self._sock is not None:
                self._sock.close()
            self._sock = None


_default: Notifier | None = None


def notify(**fields: str | int | bool) -> bool:
    """Module-level shortcut: ``notify(ready=True, status="preflight done")``."""
    global _default  # noqa: PLW0603 - one process, one manager connection
    if _default is None:
        _default = Notifier()
    return _default.notify(**fields)
