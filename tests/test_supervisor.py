"""The supervisor between attempts: what it waits for, and how long (injected time, no nix)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from nixbuild.attempt import AttemptSettings
from nixbuild.console import Console
from nixbuild.model import AttemptSpec, Decision, Kind, Mode
from nixbuild.nixcmd import NixInfo
from nixbuild.observers import BaseObserver
from nixbuild.policy import (
    DEGRADE,
    GIVE_UP,
    MEMORY_POLL_S,
    OOM_MIN_WAIT_S,
    RETRY,
    PolicyConfig,
)
from nixbuild.rundir import RunFiles
from nixbuild.supervisor import RunRequest, Supervisor

GiB = 1024**3
SPEC = AttemptSpec(".#x", 8, 1)
LOWER = AttemptSpec(".#x", 4, 1)


class Machine:
    """Fake time and memory: sleeping advances the clock, each reading takes the next value
    (the last one repeats); None makes memory unreadable."""

    def __init__(self, readings: list[int] | None) -> None:
        self.now = 1_000.0
        self.readings = readings
        self.taken = 0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def read(self) -> int:
        if self.readings is None:
            raise OSError("no /proc/meminfo")
        value = self.readings[min(self.taken, len(self.readings) - 1)]
        self.taken += 1
        return value


@pytest.fixture
def files(tmp_path: Path) -> RunFiles:
    return RunFiles(tmp_path, lambda _text: None)


def supervisor(tmp_path: Path, machine: Machine) -> tuple[Supervisor, io.StringIO]:
    out = io.StringIO()
    request = RunRequest(SPEC, tmp_path, AttemptSettings(Mode.BUILD, tmp_path / "result"))
    sup = Supervisor(
        request,
        NixInfo((2, 8, 0)),
        Console(out),
        clock=machine.clock,
        sleep=machine.sleep,
        read_available=machine.read,
    )
    return sup, out


def events(tmp_path: Path, name: str) -> list[dict[str, object]]:
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == name]


def test_after_oom_the_next_attempt_starts_once_memory_is_back(
    tmp_path: Path, files: RunFiles
) -> None:
    machine = Machine([9 * GiB])  # memory came back as soon as nix exited
    sup, out = supervisor(tmp_path, machine)
    nxt = sup._prepare_next(Decision(DEGRADE, 45.0, LOWER), Kind.OOM, 10 * GiB, files)
    assert nxt == LOWER
    assert machine.now - 1_000.0 == OOM_MIN_WAIT_S  # the minimum, not oom_delay's 45 s
    (event,) = events(tmp_path, "memory_wait")
    assert event["recovered"] is True and event["waited_s"] == OOM_MIN_WAIT_S
    assert event["target"] == 9 * GiB
    assert out.getvalue() == ""


def test_memory_that_stays_short_waits_at_most_oom_delay(tmp_path: Path, files: RunFiles) -> None:
    machine = Machine([2 * GiB])  # another process holds it
    sup, out = supervisor(tmp_path, machine)
    nxt = sup._prepare_next(Decision(DEGRADE, 45.0, LOWER), Kind.OOM, 10 * GiB, files)
    assert nxt == LOWER
    assert machine.now - 1_000.0 == 45.0 and all(s <= MEMORY_POLL_S for s in machine.slept)
    assert "memory has not recovered after 45 s (oom_delay); starting anyway" in out.getvalue()
    (event,) = events(tmp_path, "memory_wait")
    assert event["recovered"] is False and event["available"] == 2 * GiB


def test_without_a_memory_reading_oom_delay_is_a_fixed_pause(
    tmp_path: Path, files: RunFiles
) -> None:
    machine = Machine(None)
    sup, out = supervisor(tmp_path, machine)
    assert sup._prepare_next(Decision(DEGRADE, 45.0, LOWER), Kind.OOM, None, files) == LOWER
    assert machine.slept == [45.0] and machine.taken == 0
    assert out.getvalue() == ""


def test_oom_delay_zero_means_no_wait(tmp_path: Path, files: RunFiles) -> None:
    machine = Machine([GiB])
    sup, _ = supervisor(tmp_path, machine)
    assert sup._prepare_next(Decision(DEGRADE, 0.0, LOWER), Kind.OOM, 10 * GiB, files) == LOWER
    assert machine.slept == [] and machine.taken == 0
    assert events(tmp_path, "memory_wait") == []


def test_other_failures_sleep_the_decided_delay_without_reading_memory(
    tmp_path: Path, files: RunFiles
) -> None:
    machine = Machine([GiB])
    sup, _ = supervisor(tmp_path, machine)
    assert sup._prepare_next(Decision(RETRY, 12.5, SPEC), Kind.NETWORK, 10 * GiB, files) == SPEC
    assert machine.slept == [12.5] and machine.taken == 0


def test_giving_up_waits_for_nothing(tmp_path: Path, files: RunFiles) -> None:
    machine = Machine([GiB])
    sup, _ = supervisor(tmp_path, machine)
    assert sup._prepare_next(Decision(GIVE_UP), Kind.OOM, 10 * GiB, files) is None
    assert machine.slept == []


def test_a_signal_during_the_memory_wait_stops_the_run(tmp_path: Path, files: RunFiles) -> None:
    machine = Machine([GiB])
    sup, out = supervisor(tmp_path, machine)
    sleep = machine.sleep

    def interrupted_sleep(seconds: float) -> None:
        sleep(seconds)
        sup.interrupted_by = 15

    sup.sleep = interrupted_sleep
    assert sup._prepare_next(Decision(DEGRADE, 45.0, LOWER), Kind.OOM, 10 * GiB, files) is None
    assert machine.now - 1_000.0 == OOM_MIN_WAIT_S
    assert "starting anyway" not in out.getvalue()


class Statuses(BaseObserver):
    def __init__(self) -> None:
        self.texts: list[str] = []

    def progress(self, text: str) -> None:
        self.texts.append(text)


def real_sleep_supervisor(tmp_path: Path, machine: Machine) -> tuple[Supervisor, Statuses]:
    """The supervisor's own (interruptible, status-reporting) sleep, with fake memory."""
    statuses = Statuses()
    request = RunRequest(SPEC, tmp_path, AttemptSettings(Mode.BUILD, tmp_path / "result"))
    sup = Supervisor(
        request,
        NixInfo((2, 8, 0)),
        Console(io.StringIO()),
        observers=[statuses],
        read_available=machine.read,
    )
    return sup, statuses


def test_the_status_says_what_a_wait_is_for(tmp_path: Path, files: RunFiles) -> None:
    # systemd's STATUS= and the terminal line show this while nixbuild waits (real sleeps).
    sup, statuses = real_sleep_supervisor(tmp_path, Machine([2 * GiB]))  # memory stays short
    sup._prepare_next(Decision(DEGRADE, 0.6, LOWER), Kind.OOM, 10 * GiB, files)
    assert statuses.texts
    assert set(statuses.texts) == {"waiting for memory to come back (at most 0.6 s)"}
    statuses.texts.clear()
    sup._prepare_next(Decision(RETRY, 0.3, SPEC), Kind.NETWORK, 10 * GiB, files)
    assert statuses.texts and statuses.texts[0].startswith("waiting 0.")
    assert statuses.texts[0].endswith(" s before the next attempt")


def test_a_nix_that_cannot_be_started_is_a_failed_attempt_not_a_crash(tmp_path: Path) -> None:
    # Executable, but exec refuses it (ENOEXEC): recorded like a missing program (127).
    bogus = tmp_path / "nix"
    bogus.write_bytes(b"\x7fELF\x00 not really")
    bogus.chmod(0o755)
    settings = AttemptSettings(Mode.BUILD, None, argv_for=lambda _spec: [str(bogus), "build"])
    request = RunRequest(SPEC, tmp_path / "logs", settings, policy=PolicyConfig(max_attempts=1))
    outcome = Supervisor(request, NixInfo((2, 8, 0)), Console(io.StringIO())).run()
    (attempt,) = outcome.attempts
    assert attempt.exit_status == 127
    assert outcome.status == "failed" and outcome.exit_code != 0
    log = (outcome.run_dir / "attempt-1.log").read_text()
    assert "nixbuild: could not start nix:" in log and "Exec format error" in log
