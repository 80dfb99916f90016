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


def wait(
    readings: list[int] | None, target: int | None = 8 * GiB, **kw: float
) -> tuple[recovery.MemoryRecovery, FakeTime, int]:
    """Run a wait with fake time; ``readings`` are the successive available-memory values
    (the last one repeats); None: memory cannot be read. Returns the result, the time and
    how many readings were taken."""
    t = FakeTime()
    taken = 0

    def read() -> int:
        nonlocal taken
        if readings is None:
            raise OSError("no /proc")
        value = readings[min(taken, len(readings) - 1)]
        taken += 1
        return value

    args = {"max_wait_s": 45.0, "min_wait_s": 1.0, "poll_s": 1.0, **kw}
    result = recovery.wait_for_memory(
        target,
        read_available=read,
        sleep=t.sleep,
        clock=t.clock,
        max_wait_s=args["max_wait_s"],
        min_wait_s=args["min_wait_s"],
        poll_s=args["poll_s"],
        readings=2,
    )
    return result, t, taken


def test_memory_already_back_costs_only_the_minimum() -> None:
    # Two readings at or above the target, one poll apart: the minimum, not oom_delay.
    result, t, taken = wait([9 * GiB])
    assert result == recovery.MemoryRecovery(True, 1.0, 9 * GiB)
    assert t.now == 1.0 and taken == 2


def test_wait_for_memory_returns_once_recovered_and_stable() -> None:
    result, t, taken = wait([1 * GiB, 2 * GiB, 9 * GiB, 9 * GiB])
    assert result.recovered is True and t.now == 3.0 and taken == 4


def test_a_single_good_reading_is_not_enough() -> None:
    # Back above the target once, then down again (a spike): the streak starts over.
    result, t, _ = wait([1 * GiB, 9 * GiB, 2 * GiB, 9 * GiB, 9 * GiB])
    assert result.recovered is True and t.now == 4.0


def test_the_minimum_wait_holds_even_when_memory_is_back() -> None:
    result, t, _ = wait([9 * GiB], min_wait_s=3.0)
    assert result.recovered is True and t.now == 3.0


def test_wait_for_memory_gives_up_at_the_longest_pause() -> None:
    result, t, taken = wait([GiB], max_wait_s=60.0, poll_s=5.0)
    assert result == recovery.MemoryRecovery(False, 60.0, GiB)
    assert t.now == 60.0 and taken == 13  # at 0, 5, …, 60 s


def test_the_last_poll_is_cut_at_the_longest_pause() -> None:
    result, t, _ = wait([GiB], max_wait_s=2.5)
    assert result.recovered is False and t.now == 2.5


def test_wait_for_memory_stops_when_interrupted() -> None:
    t = FakeTime()
    result = recovery.wait_for_memory(
        8 * GiB,
        read_available=lambda: GiB,
        sleep=t.sleep,
        clock=t.clock,
        max_wait_s=45.0,
        min_wait_s=1.0,
        poll_s=1.0,
        readings=2,
        interrupted=lambda: True,
    )
    assert result.recovered is False and t.now == 0


def test_without_a_reading_the_wait_is_the_fixed_pause() -> None:
    # No reading before the attempt, or /proc unreadable now: fall back to the guess.
    result, t, taken = wait([9 * GiB], target=None)
    assert result == recovery.MemoryRecovery(None, 45.0, None)
    assert t.now == 45.0 and taken == 0
    result, t, _ = wait(None)
    assert result.recovered is None and t.now == 45.0


def test_no_longest_pause_means_no_wait() -> None:
    result, t, _ = wait([GiB], max_wait_s=0.0)
    assert result.recovered is False and t.now == 0
