"""Between attempts: how much to collect, which collector, waiting for memory to settle."""

from __future__ import annotations

from nixbuild import recovery
from nixbuild.nixcmd import NixInfo

GiB = recovery.GiB


def test_bytes_to_free_tops_up_to_the_seed_advice() -> None:
    assert recovery.bytes_to_free(5 * GiB) == 15 * GiB
    assert recovery.bytes_to_free(None) == 20 * GiB
    assert recovery.bytes_to_free(25 * GiB) == GiB  # already enough: still free a little


def test_gc_argv_by_nix_version() -> None:
    assert recovery.gc_argv(NixInfo((2, 8, 0)), 123) == [
        "nix", "--extra-experimental-features", "nix-command flakes", "store", "gc", "--max", "123",
    ]  # fmt: skip
    assert recovery.gc_argv(NixInfo((2, 3, 16)), 123) == [
        "nix-collect-garbage",
        "--max-freed",
        "123",
    ]


class FakeTime:
    """Injected clock and sleep: the wait takes no real time."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_wait_for_memory_returns_once_recovered() -> None:
    t = FakeTime()
    readings = iter([1 * GiB, 2 * GiB, 9 * GiB])
    ok = recovery.wait_for_memory(
        8 * GiB, read_available=lambda: next(readings), sleep=t.sleep, clock=t.clock, poll_s=5
    )
    assert ok and t.now == 10


def test_wait_for_memory_gives_up_after_max_wait_or_on_interrupt() -> None:
    t = FakeTime()
    ok = recovery.wait_for_memory(
        8 * GiB, read_available=lambda: GiB, sleep=t.sleep, clock=t.clock, max_wait_s=60, poll_s=5
    )
    assert not ok and t.now == 60
    t = FakeTime()
    ok = recovery.wait_for_memory(
        8 * GiB, read_available=lambda: GiB, sleep=t.sleep, clock=t.clock, interrupted=lambda: True
    )
    assert not ok and t.now == 0


def test_unreadable_memory_does_not_hold_the_build() -> None:
    def unreadable() -> int:
        raise OSError("no /proc")

    t = FakeTime()
    assert recovery.wait_for_memory(GiB, read_available=unreadable, sleep=t.sleep, clock=t.clock)
