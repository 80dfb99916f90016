"""Units, sd_notify and `nixbuild service`, against real sockets and a real user manager."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import require
from systemd_user import UserManagerHandle, user_manager

from nixbuild.cli_service import service_group
from nixbuild.errors import ExitCode, NixbuildError, UsageError
from nixbuild.service import UserManager, linger_warning
from nixbuild.systemd import (
    Notifier,
    nixbuild_command,
    plan_unit_files,
    render_service,
    unit_quote,
    unit_source_dir,
    validate_job_name,
)

__all__ = ["user_manager"]  # the fixture, imported for pytest

REPO = Path(__file__).resolve().parent.parent


def invoke(group: click.Group, args: list[str], cwd: Path | None = None) -> tuple[int, str]:
    """Run a command the way ``cli.main`` does: ints are exit codes, errors map to theirs."""
    runner = CliRunner()
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = runner.invoke(group, args, standalone_mode=False)
    finally:
        os.chdir(old)
    exc = result.exception
    if isinstance(exc, click.ClickException):
        return exc.exit_code, result.output + exc.format_message()
    if isinstance(exc, NixbuildError):
        return int(exc.exit_code), result.output + str(exc)
    if exc is not None:
        raise exc
    return int(result.return_value or 0), result.output


# --- unit files (no manager needed) -------------------------------------------------------


@pytest.mark.parametrize("good", ["torch", "torch-cuda_12.4", "a", "Nightly2"])
def test_good_job_names(good: str) -> None:
    assert validate_job_name(good) == good


@pytest.mark.parametrize("bad", ["", "a/b", "../x", ".x", "-x", "a b", "a@b", "x\n", "é", "a" * 65])
def test_bad_job_names(bad: str) -> None:
    with pytest.raises(UsageError):
        validate_job_name(bad)


def test_units_are_found_in_the_checkout() -> None:
    assert unit_source_dir() == REPO / "systemd"


@pytest.mark.parametrize(
    ("arg", "quoted"),
    [
        ("/usr/bin/nixbuild", "/usr/bin/nixbuild"),
        ("/opt/my tools/nixbuild", '"/opt/my tools/nixbuild"'),
        ("/p/100%", "/p/100%%"),
        ("$HOME", "$$HOME"),
    ],
)
def test_unit_quote(arg: str, quoted: str) -> None:
    assert unit_quote(arg) == quoted


def test_rendered_service_has_no_placeholders() -> None:
    template = (unit_source_dir() / "nixbuild@.service").read_text()
    text = render_service(template, ("/venv/bin/nixbuild",), "/a/bin:relative:/usr/bin:/a/bin")
    assert "@NIXBUILD@" not in text
    assert "@PATH@" not in text
    assert "ExecStart=/venv/bin/nixbuild build --job %i" in text
    assert "Environment=PATH=/a/bin:/usr/bin\n" in text  # relative and duplicate entries dropped
    for line in ("Type=notify", "NotifyAccess=main", "RestartPreventExitStatus=1 2 3 129 130 143"):
        assert line in text


def test_planned_files() -> None:
    files = dict(
        plan_unit_files(
            "torch",
            on_calendar="*-*-* 02:30:00",
            command=("/x/nixbuild",),
            path="/usr/bin",
            workdir=Path("/home/me/my builds"),
            config_file=Path("/home/me/nb.toml"),
        ).files
    )
    assert set(files) == {
        "nixbuild@.service",
        "nixbuild@.timer",
        "nixbuild@torch.timer.d/calendar.conf",
        "nixbuild@torch.service.d/workdir.conf",
    }
    assert (
        "OnCalendar=\nOnCalendar=*-*-* 02:30:00\n" in files["nixbuild@torch.timer.d/calendar.conf"]
    )
    workdir = files["nixbuild@torch.service.d/workdir.conf"]
    assert 'WorkingDirectory="/home/me/my builds"\n' in workdir
    assert "Environment=NIXBUILD_CONFIG=/home/me/nb.toml\n" in workdir


def verify(env: dict[str, str], *units: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "--user", "verify", *units],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture
def installed_copy(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The units rendered into a private XDG_CONFIG_HOME, as install writes them."""
    require("systemd-analyze")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    config = tmp_path / "config"
    plan_unit_files(
        "nightly",
        on_calendar="*-*-* 03:00:00",
        command=nixbuild_command(),
        path=os.environ.get("PATH", ""),
        workdir=tmp_path,
    ).write(config / "systemd" / "user")
    yield {"XDG_RUNTIME_DIR": str(runtime), "XDG_CONFIG_HOME": str(config)}


def test_systemd_analyze_verify_is_clean(installed_copy: dict[str, str]) -> None:
    done = verify(installed_copy, "nixbuild@nightly.service", "nixbuild@nightly.timer")
    assert done.returncode == 0
    assert done.stdout + done.stderr == ""


def test_verify_would_catch_a_mistake(installed_copy: dict[str, str]) -> None:
    """The clean-verify test above is not vacuous: a bad key is reported."""
    service = Path(installed_copy["XDG_CONFIG_HOME"]) / "systemd/user/nixbuild@.service"
    service.write_text(service.read_text().replace("Nice=15", "Nice=15\nNicenes=3"))
    done = verify(installed_copy, "nixbuild@nightly.service")
    assert "Unknown key 'Nicenes'" in done.stdout + done.stderr


# --- sd_notify over real sockets ----------------------------------------------------------


def receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(10)
    return sock


def test_notify_to_a_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with receiver(path) as sock:
        n = Notifier({"NOTIFY_SOCKET": path})
        assert n.ready(status="preflight done")
        assert sock.recv(4096) == b"READY=1\nSTATUS=preflight done"
        assert n.status("attempt 2/6: building torch\n(412/1031)")
        assert sock.recv(4096) == b"STATUS=attempt 2/6: building torch (412/1031)"
        assert n.stopping()
        assert sock.recv(4096) == b"STOPPING=1"
        n.close()


def test_notify_to_an_abstract_socket() -> None:
    name = f"nixbuild-test-{os.getpid()}"
    with receiver("\0" + name) as sock:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_notify_is_a_noop_without_a_manager(tmp_path: Path) -> None:
    assert not Notifier({}).ready()
    assert not Notifier({}).enabled
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert gone.enabled
    assert not gone.ready(status="x")  # never raises into the build


def test_watchdog_interval_and_throttling() -> None:
    name = f"nixbuild-test-wd-{os.getpid()}"
    now = [100.0]
    env = {
        "NOTIFY_SOCKET": "@" + name,
        "WATCHDOG_USEC": "10000000",
        "WATCHDOG_PID": str(os.getpid()),
    }
    with receiver("\0" + name) as sock:
        n = Notifier(env, clock=lambda: now[0])
        assert n.watchdog_interval_s == 10.0
        sent = []
        for t in (100.0, 102.0, 104.9, 105.0, 106.0, 110.1):
            now[0] = t
            if n.ping_watchdog_if_due():
                sent.append(t)
                assert sock.recv(64) == b"WATCHDOG=1"
        assert sent == [100.0, 105.0, 110.1]  # every half interval, no more often
    assert Notifier({**env, "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    assert Notifier({"WATCHDOG_USEC": "junk"}).watchdog_interval_s is None


def test_linger_warnings() -> None:
    # This machine has no logind, so only the "unknown" answer is seen for real (below).
    assert linger_warning("me", True) is None
    off = linger_warning("me", False)
    assert off is not None
    assert off.startswith("lingering is off for me: without lingering the user manager")
    assert off.endswith("Fix: loginctl enable-linger me")
    unknown = linger_warning("me", None)
    assert unknown is not None
    assert unknown.startswith("could not ask logind whether lingering is on for me")


# --- a real user manager ------------------------------------------------------------------


def test_missing_user_manager_is_exit_3(tmp_path: Path) -> None:
    require("systemctl")
    empty = tmp_path / "run"
    empty.mkdir(mode=0o700)
    env = {
        **os.environ,
        "XDG_RUNTIME_DIR": str(empty),
        "DBUS_SESSION_BUS_ADDRESS": f"unix:path={empty}/bus",
    }
    with pytest.raises(NixbuildError) as caught:
        UserManager(env=env).require_manager()
    assert caught.value.exit_code == ExitCode.REFUSED
    assert "no systemd user manager is reachable" in str(caught.value)
    # A bad schedule is the user's error whatever the machine: exit 2 even without a manager.
    with pytest.raises(NixbuildError) as caught:
        UserManager(env=env).install("ok", on_calendar="someday", workdir=tmp_path)
    assert caught.value.exit_code == ExitCode.USAGE
    assert "invalid --on-calendar 'someday'" in str(caught.value)


def test_install_status_uninstall(user_manager: UserManagerHandle, tmp_path: Path) -> None:
    manager = UserManager()
    result = manager.install("nightly", on_calendar="03:00", workdir=tmp_path)
    assert result.timer == "nixbuild@nightly.timer"
    assert result.next_elapse
    # no logind here, so lingering cannot be checked: the warning explains it anyway
    assert any("loginctl enable-linger" in w for w in result.warnings)

    timers = user_manager.systemctl("list-timers", "--all", "--no-pager").stdout
    assert "nixbuild@nightly.timer" in timers
    assert "nixbuild@nightly.service" in timers
    assert user_manager.show("nixbuild@nightly.timer", "ActiveState") == "active"
    assert user_manager.show("nixbuild@nightly.timer", "UnitFileState") == "enabled"
    cat = user_manager.systemctl("cat", "nixbuild@nightly.timer").stdout
    assert "OnCalendar=*-*-* 03:00:00" in cat  # normalized by systemd-analyze calendar
    assert user_manager.show("nixbuild@nightly.service", "WorkingDirectory") == str(tmp_path)

    done = verify(user_manager.env, "nixbuild@nightly.service", "nixbuild@nightly.timer")
    assert (done.returncode, done.stdout + done.stderr) == (0, "")

    status = manager.status("nightly")
    assert status.installed
    assert status.timer["NextElapseUSecRealtime"]
    assert status.service["ActiveState"] == "inactive"

    removed = manager.uninstall("nightly")
    assert user_manager.unit_dir / "nixbuild@.service" in removed
    assert not list(user_manager.unit_dir.glob("nixbuild@*"))
    assert user_manager.show("nixbuild@nightly.timer", "LoadState") == "not-found"


def test_cli_install_status_logs_uninstall(user_manager: UserManagerHandle, tmp_path: Path) -> None:
    (tmp_path / "nixbuild.toml").write_text('[jobs.cli]\ninstallable = "path:/nowhere#x"\n')
    code, out = invoke(service_group, ["install", "cli", "--on-calendar", "daily"], cwd=tmp_path)
    assert code == 0, out
    assert "enabled nixbuild@cli.timer; next start: " in out
    assert "wrote " in out

    code, out = invoke(service_group, ["status", "cli"], cwd=tmp_path)
    assert code == 0, out
    assert "timer   nixbuild@cli.timer: active (enabled), next start " in out
    assert "service nixbuild@cli.service: inactive/dead" in out
    assert "last run: none recorded yet" in out

    # No journald in the test manager: logs falls back to the newest run directory.
    run = tmp_path / "logs" / "20261204T013000-4f2a"
    run.mkdir(parents=True)
    (run / "attempt-1.log").write_text("".join(f"line {i}\n" for i in range(50)))
    code, out = invoke(service_group, ["logs", "cli", "-n", "3"], cwd=tmp_path)
    assert code == 0, out
    assert f"newest run directory: {Path('logs') / run.name}" in out
    assert out.rstrip().endswith("line 47\nline 48\nline 49")

    code, out = invoke(service_group, ["uninstall", "cli"], cwd=tmp_path)
    assert code == 0, out
    assert "removed " in out
    code, out = invoke(service_group, ["status", "cli"], cwd=tmp_path)
    assert code == 1
    assert "is not installed" in out


def test_cli_refuses_bad_input(user_manager: UserManagerHandle, tmp_path: Path) -> None:
    (tmp_path / "nixbuild.toml").write_text('[jobs.ok]\ninstallable = "path:/nowhere#x"\n')
    code, out = invoke(service_group, ["install", "a/b"], cwd=tmp_path)
    assert code == 2
    assert "invalid job name" in out
    code, out = invoke(service_group, ["install", "unknown"], cwd=tmp_path)
    assert code == 2
    assert "unknown job 'unknown'" in out
    code, out = invoke(service_group, ["install", "ok", "--on-calendar", "someday"], cwd=tmp_path)
    assert code == 2
    assert "invalid --on-calendar 'someday'" in out
    assert not list(user_manager.unit_dir.glob("nixbuild@*"))


NOTIFYING_SERVICE = textwrap.dedent(
    """
    import json, pathlib, sys, time
    from nixbuild.systemd import Notifier
    out = pathlib.Path(sys.argv[1])
    n = Notifier()
    n.ready(status="preflight done")
    n.ping_watchdog_if_due()
    n.status("attempt 2/6: building python3.12-torch (412/1031), cores 4")
    out.with_suffix(".json").write_text(json.dumps({"watchdog_s": n.watchdog_interval_s}))
    deadline = time.monotonic() + 120
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    n.stopping(status="done")
    """
)


def test_notify_service_reaches_active_with_status(
    user_manager: UserManagerHandle, tmp_path: Path
) -> None:
    """A Type=notify service whose main process is Python using Notifier."""
    unit = f"nixbuild-notify-test-{os.getpid()}"
    release = tmp_path / "release"
    done = user_manager.run(
        [
            "systemd-run",
            "--user",
            "--unit",
            unit,
            "-p",
            "Type=notify",
            "-p",
            "NotifyAccess=main",
            "-p",
            "WatchdogSec=30s",
            sys.executable,
            "-c",
            NOTIFYING_SERVICE,
            str(release),
        ]
    )
    assert done.returncode == 0  # systemd-run waits for READY=1 of a notify service
    service = f"{unit}.service"
    try:
        assert user_manager.show(service, "ActiveState") == "active"
        want = "attempt 2/6: building python3.12-torch (412/1031), cores 4"
        user_manager.wait_for(service, "StatusText", {want})
        assert json.loads(release.with_suffix(".json").read_text()) == {"watchdog_s": 30.0}
    finally:
        release.write_text("go")
    # a transient unit that ended well is unloaded (inactive); a failed one stays "failed"
    assert user_manager.wait_for(service, "ActiveState", {"inactive", "failed"}) == "inactive"


def test_wait_for_times_out_loudly(user_manager: UserManagerHandle) -> None:
    with pytest.raises(AssertionError, match="LoadState='not-found'"):
        user_manager.wait_for("no-such.service", "LoadState", {"loaded"}, timeout_s=0.3)


# --- end to end: the installed units run a real nixbuild job ------------------------------


def unit_pids(user_manager: UserManagerHandle, unit: str) -> set[int]:
    """Every process in the unit's cgroup (the named v1 hierarchy, else v2)."""
    cgroup = user_manager.show(unit, "ControlGroup")
    pids: set[int] = set()
    if not cgroup:
        return pids
    for root in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        tree = Path(root + cgroup)
        if tree.is_dir():
            for procs in tree.rglob("cgroup.procs"):
                pids |= {int(p) for p in procs.read_text().split()}
            break
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text(errors="replace")
    except (ProcessLookupError, FileNotFoundError):
        return False


def command_name(pid: int) -> str | None:
    """The process's comm, or None once it has exited (it may between listing and reading)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return None


def unit_story(user_manager: UserManagerHandle, unit: str, log_dir: Path) -> str:
    """What a failed assertion about a unit should show: its state and what nixbuild recorded
    (the test manager has no journald, so the run directory is the unit's log)."""
    props = user_manager.systemctl(
        "show", unit, "-p", "ActiveState,SubState,Result,ExecMainStatus,StatusText", check=False
    ).stdout
    parts = [f"{unit}:\n{props}"]
    for summary in sorted(log_dir.glob("*/summary.json")):
        parts.append(f"{summary}:\n{summary.read_text(errors='replace')[:4000]}")
    for log in sorted([*log_dir.glob("*/events.jsonl"), *log_dir.glob("*/attempt-*.log")]):
        tail = log.read_text(errors="replace").splitlines()[-15:]
        parts.append(f"{log} (last lines):\n" + "\n".join(tail))
    return "\n".join(parts)


def install_job(
    user_manager: UserManagerHandle,
    tmp_path: Path,
    nix_env: dict[str, str],
    job: str,
    installable: str,
) -> Path:
    """A workdir with a config for ``job``, the units installed, and the test's isolated
    Nix store given to the service (the manager was started before ``nix_env`` was set)."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "nixbuild.toml").write_text(
        f'[jobs.{job}]\ninstallable = "{installable}"\nlog_dir = "{tmp_path}/logs"\n'
        "cores = 1\nmax_attempts = 1\nno_fallback = true\n"
    )
    env = {**nix_env, "NIX_REMOTE": "", "XDG_STATE_HOME": str(tmp_path / "state")}
    # The drop-in comes first: install enables the timer at once, and a timer that fires
    # (a Persistent= catch-up) must start the service with the test's store, not the machine's.
    dropin = user_manager.unit_dir / f"nixbuild@{job}.service.d" / "test-env.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(
        "[Service]\n" + "".join(f"Environment={unit_quote(f'{k}={v}')}\n" for k, v in env.items())
    )
    UserManager().install(job, on_calendar="daily", workdir=workdir)  # daemon-reloads
    return workdir


def last_ledger_row(tmp_path: Path, job: str) -> object:
    from nixbuild.ledger import Ledger

    with Ledger(tmp_path / "state" / "nixbuild" / "ledger.sqlite3") as ledger:
        (row,) = ledger.history(job=job, limit=1)
    return row


def wait_for_status(user_manager: UserManagerHandle, unit: str, prefix: str) -> str:
    """Poll the unit's STATUS= text until it starts with ``prefix`` (bounded)."""
    status = ""
    for _ in range(600):
        status = user_manager.show(unit, "StatusText")
        if status.startswith(prefix):
            return status
        if user_manager.show(unit, "ActiveState") not in {"activating", "active", "reloading"}:
            break
        subprocess.run(["/bin/sleep", "0.1"], check=True)
    pytest.fail(f"{unit}: status {status!r} never started with {prefix!r}")


@pytest.mark.nix
def test_service_runs_a_real_job(
    user_manager: UserManagerHandle, nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    (flake / "sleep.txt").write_text("5")
    install_job(user_manager, tmp_path, nix_env, "e2e", f"path:{flake}#slow")
    service = "nixbuild@e2e.service"
    # For a Type=notify unit, `start` returns once nixbuild has sent READY=1.
    user_manager.systemctl("start", service)
    assert user_manager.show(service, "ActiveState") == "active"
    wait_for_status(user_manager, service, "attempt 1/1")
    user_manager.wait_for(service, "ActiveState", {"inactive", "failed"}, timeout_s=120)
    assert user_manager.show(service, "Result") == "success"
    assert user_manager.show(service, "ExecMainStatus") == "0"
    row = last_ledger_row(tmp_path, "e2e")
    assert getattr(row, "status") == "success"  # noqa: B009 - RunRow from a lazy import
    (run_dir,) = (tmp_path / "logs").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["job"] == "e2e"


@pytest.mark.nix
def test_systemctl_stop_leaves_no_build_processes(
    user_manager: UserManagerHandle, nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    (flake / "sleep.txt").write_text("600")
    install_job(user_manager, tmp_path, nix_env, "e2estop", f"path:{flake}#slow")
    service, log_dir = "nixbuild@e2estop.service", tmp_path / "logs"
    user_manager.systemctl("start", service)
    pids: set[int] = set()
    for _ in range(1200):  # until the builder's /bin/sleep runs in the unit
        pids = unit_pids(user_manager, service)
        if "sleep" in {command_name(p) for p in pids}:
            break
        state = user_manager.show(service, "ActiveState")
        assert state in {"activating", "active"}, unit_story(user_manager, service, log_dir)
        subprocess.run(["/bin/sleep", "0.1"], check=True)
    else:
        pytest.fail(
            f"the builder never started; processes {sorted(pids)}\n"
            + unit_story(user_manager, service, log_dir)
        )
    user_manager.systemctl("stop", service)
    assert not [p for p in pids if alive(p)], "build processes outlived systemctl stop"
    assert user_manager.show(service, "ActiveState") == "inactive"
    assert user_manager.show(service, "ExecMainStatus") == "143"
    row = last_ledger_row(tmp_path, "e2estop")
    assert getattr(row, "status") == "interrupted"  # noqa: B009 - RunRow from a lazy import
