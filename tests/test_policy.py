"""The decision table, backoff, exit codes and decision lines (pure: nothing sleeps)."""

from __future__ import annotations

import random
import signal
from collections.abc import Sequence

import pytest
import tenacity
from hypothesis import given, settings
from hypothesis import strategies as st

from nixbuild.decisiontext import decision_line, format_seconds
from nixbuild.errors import ConfigError, ExitCode
from nixbuild.model import AttemptRecord, AttemptSpec, Decision, Diagnosis, Kind, Variant
from nixbuild.policy import (
    DEGRADE,
    FALLBACK,
    GC_THEN_RETRY,
    GIVE_UP,
    OOM_MIN_WAIT_S,
    RETRY,
    MemoryWait,
    PolicyConfig,
    SeededFullJitter,
    backoff_delay,
    backoff_window,
    decide,
    exit_code_for,
    interruption,
    memory_wait,
)

SOURCE = AttemptSpec("nixpkgs#python312Packages.torch", 8, 1)
BIN = "nixpkgs#python312Packages.torch-bin"
WITH_BIN = PolicyConfig(fallback=BIN)
NO_BIN = PolicyConfig()


def diag(kind: Kind, rule: str | None = None) -> Diagnosis:
    return Diagnosis(kind=kind, rule=rule or f"{kind}.test", explanation=f"a {kind} failure")


def record(
    number: int,
    spec: AttemptSpec,
    diagnosis: Diagnosis | None,
    decision: Decision | None = None,
) -> AttemptRecord:
    return AttemptRecord(
        number=number,
        spec=spec,
        command=("nix", "build", spec.installable),
        started_at="2026-12-04T01:30:00+00:00",
        duration_s=10.0,
        exit_status=None if diagnosis is None else 1,
        log=f"attempt-{number}.log",
        diagnosis=diagnosis,
        decision=decision,
    )


def run(
    kinds: Sequence[Kind], cfg: PolicyConfig, start: AttemptSpec = SOURCE, seed: int = 0
) -> list[Decision]:
    """Drive the policy like the supervisor does: each attempt fails with the next kind."""
    rng = random.Random(seed)
    history: list[AttemptRecord] = []
    decisions: list[Decision] = []
    spec: AttemptSpec | None = start
    for kind in kinds:
        assert spec is not None, f"the policy gave up before the {kind} failure"
        d = diag(kind)
        decision = decide(d, history, spec, cfg, rng)
        decisions.append(decision)
        history.append(record(len(history) + 1, spec, d, decision))
        spec = decision.next
    return decisions


def actions(decisions: Sequence[Decision]) -> list[str]:
    return [d.action for d in decisions]


def parallelism(decisions: Sequence[Decision]) -> list[tuple[int, int] | None]:
    return [None if d.next is None else (d.next.cores, d.next.max_jobs) for d in decisions]


# --- kinds that stop at once ------------------------------------------------------------------


@pytest.mark.parametrize("kind", [Kind.HASH, Kind.EVAL, Kind.INTERRUPTED, Kind.UNKNOWN])
@pytest.mark.parametrize("earlier", [(), (Kind.NETWORK,), (Kind.OOM, Kind.OOM)])
def test_stop_kinds_give_up_at_once(kind: Kind, earlier: tuple[Kind, ...]) -> None:
    decisions = run([*earlier, kind], WITH_BIN)
    last = decisions[-1]
    assert last.action == GIVE_UP
    assert last.next is None
    assert last.delay_s == 0


def test_give_up_reasons_say_why_retrying_cannot_help() -> None:
    assert run([Kind.HASH], NO_BIN)[0].reason == "hash mismatch cannot be fixed by retrying"
    assert "Nix expression" in run([Kind.EVAL], NO_BIN)[0].reason
    assert "unrecognised" in run([Kind.UNKNOWN], NO_BIN)[0].reason


def test_unknown_is_handled_like_build_when_configured() -> None:
    cfg = PolicyConfig(fallback=BIN, unknown_stops=False)
    decisions = run([Kind.UNKNOWN, Kind.UNKNOWN], cfg)
    assert actions(decisions) == [DEGRADE, FALLBACK]


# --- network ----------------------------------------------------------------------------------


def test_network_retries_with_the_same_spec_then_gives_up() -> None:
    decisions = run([Kind.NETWORK] * 6, PolicyConfig(max_attempts=10))
    assert actions(decisions) == [RETRY] * 5 + [GIVE_UP]
    assert all(d.next == SOURCE for d in decisions[:5])
    assert decisions[-1].reason == "network still failing after 5 retries"


def test_by_default_network_retries_alone_can_use_every_attempt() -> None:
    decisions = run([Kind.NETWORK] * 6, NO_BIN)
    assert NO_BIN.network_retries + 1 == NO_BIN.max_attempts
    assert actions(decisions) == [RETRY] * 5 + [GIVE_UP]
    assert decisions[-1].reason == "network still failing after 5 retries"


def test_network_delays_stay_inside_the_full_jitter_window() -> None:
    cfg = PolicyConfig(network_retries=8, max_attempts=20)
    for seed in range(30):
        decisions = run([Kind.NETWORK] * 8, cfg, seed=seed)
        for n, d in enumerate(decisions):
            assert 0 <= d.delay_s <= min(600.0, 2.0 * 4**n) == backoff_window(n + 1, cfg)


def test_backoff_window_starts_at_2_s_and_grows_4_fold_up_to_the_cap() -> None:
    windows = [backoff_window(n, NO_BIN) for n in range(1, 8)]
    assert windows == [2, 8, 32, 128, 512, 600, 600]
    assert sum(windows[: NO_BIN.network_retries]) == 682  # the reach of one variant's retries
    assert backoff_window(1000, NO_BIN) == 600  # no overflow far out
    scaled = PolicyConfig(network_base_s=0.17, network_cap_s=50.0)
    assert [backoff_window(n, scaled) for n in range(1, 7)] == pytest.approx(
        [0.17, 0.68, 2.72, 10.88, 43.52, 50.0]
    )
    assert backoff_window(3, PolicyConfig(network_base_s=0.0)) == 0  # NIXBUILD_NETWORK_BACKOFF=0


def test_the_first_network_retry_comes_within_2_s() -> None:
    firsts = [run([Kind.NETWORK], NO_BIN, seed=seed)[0].delay_s for seed in range(200)]
    assert max(firsts) <= 2.0
    assert 0.8 < sum(firsts) / len(firsts) < 1.2  # full jitter: uniform over [0, 2 s]


def test_backoff_is_deterministic_per_seed_and_differs_across_seeds() -> None:
    first = [backoff_delay(3, NO_BIN, random.Random(seed)) for seed in range(10)]
    again = [backoff_delay(3, NO_BIN, random.Random(seed)) for seed in range(10)]
    assert first == again
    assert len(set(first)) == 10
    assert all(0 <= d <= 32 for d in first)
    run_a = [d.delay_s for d in run([Kind.NETWORK] * 3, NO_BIN, seed=1)]
    run_b = [d.delay_s for d in run([Kind.NETWORK] * 3, NO_BIN, seed=2)]
    assert run_a == [d.delay_s for d in run([Kind.NETWORK] * 3, NO_BIN, seed=1)]
    assert run_a != run_b


def test_the_jitter_is_a_real_tenacity_wait_strategy() -> None:
    """Inside tenacity's own Retrying loop (sleep injected), the waits follow the window."""
    slept: list[float] = []
    strategy = SeededFullJitter(multiplier=2.0, cap=600.0, rng=random.Random(3))
    retrying = tenacity.Retrying(
        wait=strategy, stop=tenacity.stop_after_attempt(7), sleep=slept.append, reraise=True
    )
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 7:
            raise ConnectionError("mirror down")
        return "ok"

    assert retrying(flaky) == "ok"
    assert len(slept) == 6
    draws = random.Random(3)  # the same seed: each wait is one draw over its window
    assert slept == [draws.uniform(0, window) for window in (2, 8, 32, 128, 512, 600)]


def test_the_fallback_has_its_own_network_retries() -> None:
    cfg = PolicyConfig(fallback=BIN, max_oom_failures=1, max_attempts=20)
    decisions = run([Kind.NETWORK] * 5 + [Kind.OOM] + [Kind.NETWORK] * 6, cfg)
    assert actions(decisions) == [RETRY] * 5 + [FALLBACK] + [RETRY] * 5 + [GIVE_UP]
    assert all(d.next is not None and d.next.variant is Variant.BIN for d in decisions[5:11])


# --- out of memory ----------------------------------------------------------------------------


def test_oom_walks_down_the_ladder_then_falls_back() -> None:
    decisions = run([Kind.OOM] * 3, WITH_BIN)
    assert actions(decisions) == [DEGRADE, DEGRADE, FALLBACK]
    assert parallelism(decisions) == [(4, 1), (2, 1), (2, 1)]
    # After out-of-memory delay_s is the longest pause (oom_delay), the fallback's included.
    assert [d.delay_s for d in decisions] == [45, 45, 45]
    fallback = decisions[-1].next
    assert fallback == AttemptSpec(BIN, 2, 1, Variant.BIN)


def test_after_out_of_memory_the_wait_is_measured_up_to_oom_delay() -> None:
    degrade, fallback = run([Kind.OOM, Kind.OOM], PolicyConfig(fallback=BIN, max_oom_failures=2))
    expected = MemoryWait(min_s=OOM_MIN_WAIT_S, max_s=45.0)
    assert memory_wait(Kind.OOM, degrade) == expected
    assert memory_wait(Kind.OOM, fallback) == expected
    assert expected.readings == 2 and expected.poll_s == 0.5 and expected.fraction == 0.9


def test_other_waits_are_plain_pauses() -> None:
    network = run([Kind.NETWORK], NO_BIN)[0]
    build = run([Kind.BUILD], NO_BIN)[0]
    gave_up = run([Kind.OOM] * 4, NO_BIN)[-1]
    assert memory_wait(Kind.NETWORK, network) is None
    assert memory_wait(Kind.BUILD, build) is None
    assert memory_wait(Kind.OOM, gave_up) is None


def test_oom_delay_zero_starts_the_next_attempt_at_once() -> None:
    (degrade,) = run([Kind.OOM], PolicyConfig(oom_delay_s=0))
    assert degrade.delay_s == 0 and memory_wait(Kind.OOM, degrade) is None


def test_a_short_oom_delay_caps_the_minimum() -> None:
    (degrade,) = run([Kind.OOM], PolicyConfig(oom_delay_s=0.5))
    assert memory_wait(Kind.OOM, degrade) == MemoryWait(min_s=0.5, max_s=0.5)


def test_oom_without_fallback_continues_to_the_floor_then_gives_up() -> None:
    decisions = run([Kind.OOM] * 4, NO_BIN)
    assert actions(decisions) == [DEGRADE, DEGRADE, DEGRADE, GIVE_UP]
    assert parallelism(decisions) == [(4, 1), (2, 1), (1, 1), None]
    assert "cores 1, max-jobs 1" in decisions[-1].reason


def test_oom_at_the_floor_falls_back_at_once() -> None:
    decisions = run([Kind.OOM], WITH_BIN, start=AttemptSpec(SOURCE.installable, 1, 1))
    assert actions(decisions) == [FALLBACK]


def test_oom_with_many_jobs_drops_max_jobs_first() -> None:
    decisions = run([Kind.OOM, Kind.OOM], NO_BIN, start=AttemptSpec(".#x", 4, 3))
    assert parallelism(decisions) == [(4, 1), (2, 1)]


def test_oom_fallback_threshold_is_configurable() -> None:
    decisions = run([Kind.OOM], PolicyConfig(fallback=BIN, max_oom_failures=1))
    assert actions(decisions) == [FALLBACK]


def test_the_bin_variant_never_falls_back_again() -> None:
    start = AttemptSpec(BIN, 2, 1, Variant.BIN)
    oom = run([Kind.OOM, Kind.OOM], WITH_BIN, start=start)
    assert actions(oom) == [DEGRADE, GIVE_UP]
    assert parallelism(oom) == [(1, 1), None]
    build = run([Kind.BUILD, Kind.BUILD], WITH_BIN, start=start)
    assert actions(build) == [DEGRADE, GIVE_UP]
    assert "no -bin fallback" not in build[-1].reason


def test_a_fallback_equal_to_the_installable_is_not_used() -> None:
    cfg = PolicyConfig(fallback=SOURCE.installable)
    assert actions(run([Kind.BUILD, Kind.BUILD], cfg)) == [DEGRADE, GIVE_UP]


# --- disk -------------------------------------------------------------------------------------


def test_disk_without_gc_gives_up_with_the_free_space_advice() -> None:
    decision = decide(diag(Kind.DISK), [], SOURCE, NO_BIN, random.Random(0), free_space_gb=12.54)
    assert decision.action == GIVE_UP
    assert "20 GB" in decision.reason
    assert "12.5 GB free" in decision.reason
    assert "--gc" in decision.reason


def test_disk_with_gc_collects_once_then_gives_up() -> None:
    decisions = run([Kind.DISK, Kind.DISK], PolicyConfig(gc_allowed=True, fallback=BIN))
    assert actions(decisions) == [GC_THEN_RETRY, GIVE_UP]
    assert decisions[0].next == SOURCE
    assert "20 GB" in decisions[1].reason


# --- timeout and build ------------------------------------------------------------------------


def test_timeout_retries_once_then_is_handled_like_build() -> None:
    decisions = run([Kind.TIMEOUT, Kind.TIMEOUT, Kind.TIMEOUT], WITH_BIN)
    assert actions(decisions) == [RETRY, DEGRADE, FALLBACK]
    assert decisions[0].next == SOURCE
    assert parallelism(decisions)[1] == (4, 1)


def test_build_gets_one_more_try_at_lower_parallelism_then_falls_back() -> None:
    decisions = run([Kind.BUILD, Kind.BUILD], WITH_BIN)
    assert actions(decisions) == [DEGRADE, FALLBACK]
    assert parallelism(decisions)[0] == (4, 1)


def test_build_without_fallback_gives_up_after_the_second_failure() -> None:
    decisions = run([Kind.BUILD, Kind.BUILD], NO_BIN)
    assert actions(decisions) == [DEGRADE, GIVE_UP]
    assert "no -bin fallback" in decisions[-1].reason


def test_build_at_the_floor_skips_the_lower_parallelism_try() -> None:
    floor = AttemptSpec(SOURCE.installable, 1, 1)
    assert actions(run([Kind.BUILD], WITH_BIN, start=floor)) == [FALLBACK]
    assert actions(run([Kind.BUILD], NO_BIN, start=floor)) == [GIVE_UP]


def test_a_build_failure_at_the_floor_without_fallback_gives_up() -> None:
    decisions = run([Kind.OOM, Kind.OOM, Kind.OOM, Kind.BUILD], PolicyConfig(fallback=None))
    assert actions(decisions) == [DEGRADE, DEGRADE, DEGRADE, GIVE_UP]


# --- the overall budget -----------------------------------------------------------------------


def test_max_attempts_ends_the_run() -> None:
    decisions = run([Kind.NETWORK] * 3, PolicyConfig(max_attempts=3))
    assert actions(decisions) == [RETRY, RETRY, GIVE_UP]
    assert decisions[-1].reason == "all 3 attempts used (last failure: network)"


def test_max_attempts_also_bounds_the_fallback() -> None:
    decisions = run([Kind.OOM, Kind.OOM], PolicyConfig(fallback=BIN, max_attempts=2))
    assert actions(decisions) == [DEGRADE, GIVE_UP]


def test_a_single_attempt_budget_never_retries() -> None:
    assert actions(run([Kind.NETWORK], PolicyConfig(max_attempts=1))) == [GIVE_UP]


def test_the_overnight_torch_story() -> None:
    """OOM at 8 and 4 cores, a flaky mirror, OOM at 2: then the prebuilt variant."""
    kinds = [Kind.OOM, Kind.OOM, Kind.NETWORK, Kind.OOM, Kind.NETWORK]
    decisions = run(kinds, WITH_BIN)
    assert actions(decisions) == [DEGRADE, DEGRADE, RETRY, FALLBACK, RETRY]
    assert parallelism(decisions) == [(4, 1), (2, 1), (2, 1), (2, 1), (2, 1)]
    assert [d.next.variant for d in decisions if d.next] == [Variant.SOURCE] * 3 + [Variant.BIN] * 2


@pytest.mark.parametrize(
    "fields",
    [
        {"max_attempts": 0},
        {"network_retries": -1},
        {"max_oom_failures": -2},
        {"network_base_s": -1.0},
        {"oom_delay_s": -0.5},
    ],
)
def test_nonsense_settings_are_a_config_error(fields: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        PolicyConfig(**fields)  # type: ignore[arg-type]  # mixed int/float on purpose


# --- exit codes -------------------------------------------------------------------------------


def history_of(*kinds: Kind | None, rule: str | None = None) -> list[AttemptRecord]:
    return [
        record(i + 1, SOURCE, None if k is None else diag(k, rule)) for i, k in enumerate(kinds)
    ]


@pytest.mark.parametrize(
    ("history", "succeeded", "code"),
    [
        (history_of(None), True, ExitCode.OK),
        (history_of(Kind.OOM, Kind.OOM, Kind.OOM, None), True, ExitCode.OK),  # via the fallback
        (history_of(Kind.NETWORK, Kind.NETWORK), False, ExitCode.TRANSIENT),
        (history_of(Kind.OOM, Kind.DISK), False, ExitCode.TRANSIENT),
        (history_of(Kind.TIMEOUT, Kind.TIMEOUT), False, ExitCode.TRANSIENT),
        (history_of(Kind.NETWORK, Kind.HASH), False, ExitCode.FAILED),
        (history_of(Kind.EVAL), False, ExitCode.FAILED),
        (history_of(Kind.OOM, Kind.OOM), False, ExitCode.FAILED),
        (history_of(Kind.BUILD), False, ExitCode.FAILED),
        (history_of(Kind.UNKNOWN), False, ExitCode.FAILED),
        (history_of(Kind.INTERRUPTED, rule="interrupted.sigint"), False, ExitCode.SIGINT),
        (history_of(Kind.INTERRUPTED, rule="interrupted.sigterm"), False, ExitCode.SIGTERM),
        ([], False, ExitCode.FAILED),
    ],
)
def test_exit_code_contract(history: list[AttemptRecord], succeeded: bool, code: ExitCode) -> None:
    assert exit_code_for(history, succeeded) is code


def test_exit_code_values_are_the_documented_numbers() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 75, 129, 130, 143]


def test_interruption_names_the_signal_for_the_exit_code() -> None:
    for signum, code in [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]:
        d = interruption(signum)
        assert d.kind is Kind.INTERRUPTED
        assert d.rule == f"interrupted.{signal.Signals(signum).name.lower()}"
        assert exit_code_for([record(1, SOURCE, d)], succeeded=False) == code


# --- decision lines ---------------------------------------------------------------------------


def line(kind: Kind, rule: str, decision: Decision, spec: AttemptSpec = SOURCE) -> str:
    return decision_line(record(2, spec, diag(kind, rule), decision), 6)


def test_decision_line_for_a_degrade() -> None:
    decision = Decision(DEGRADE, 45.0, AttemptSpec(SOURCE.installable, 4, 1), "oom")
    assert (
        line(Kind.OOM, "oom.cc1plus-killed", decision)
        == "attempt 2/6 failed: oom (rule oom.cc1plus-killed) "
        "→ retry with cores 8→4, max-jobs 1 once memory is back (at most 45 s)"
    )


def test_decision_line_for_a_max_jobs_step() -> None:
    start = AttemptSpec(".#x", 4, 3)
    decision = Decision(DEGRADE, 45.0, AttemptSpec(".#x", 4, 1), "oom")
    assert line(Kind.OOM, "oom.exit-137", decision, start).endswith(
        "→ retry with cores 4, max-jobs 3→1 once memory is back (at most 45 s)"
    )


def test_decision_line_for_a_retry() -> None:
    decision = Decision(RETRY, 72.4, SOURCE, "network")
    assert (
        line(Kind.NETWORK, "network.curl-6", decision)
        == "attempt 2/6 failed: network (rule network.curl-6) "
        "→ retry with the same options in 1 min 12 s"
    )


def test_decision_line_for_garbage_collection() -> None:
    decision = Decision(GC_THEN_RETRY, 0.0, SOURCE, "disk")
    assert (
        line(Kind.DISK, "disk.enospc", decision) == "attempt 2/6 failed: disk (rule disk.enospc) "
        "→ collect garbage, then retry with the same options"
    )


def test_decision_line_for_a_fallback() -> None:
    decision = Decision(FALLBACK, 0.0, AttemptSpec(BIN, 2, 1, Variant.BIN), "oom")
    assert (
        line(Kind.OOM, "oom.cc1plus-killed", decision)
        == "attempt 2/6 failed: oom (rule oom.cc1plus-killed) "
        "→ fall back to nixpkgs#python312Packages.torch-bin"
    )
    after_oom = Decision(FALLBACK, 45.0, AttemptSpec(BIN, 2, 1, Variant.BIN), "oom")
    assert line(Kind.OOM, "oom.cc1plus-killed", after_oom).endswith(
        "→ fall back to nixpkgs#python312Packages.torch-bin once memory is back (at most 45 s)"
    )
    after_build = Decision(FALLBACK, 5.0, AttemptSpec(BIN, 2, 1, Variant.BIN), "build")
    assert line(Kind.BUILD, "build.builder-failed", after_build).endswith(
        "→ fall back to nixpkgs#python312Packages.torch-bin in 5 s"
    )


def test_decision_line_for_giving_up() -> None:
    decision = Decision(GIVE_UP, 0.0, None, "hash mismatch cannot be fixed by retrying")
    assert (
        line(Kind.HASH, "hash.fixed-output", decision)
        == "attempt 2/6 failed: hash (rule hash.fixed-output) "
        "→ give up: hash mismatch cannot be fixed by retrying"
    )


def test_decision_line_for_successes_and_undecided_failures() -> None:
    assert decision_line(record(3, AttemptSpec(".#x", 4, 1), None), 6) == (
        "attempt 3/6 succeeded with cores 4, max-jobs 1"
    )
    assert decision_line(record(4, AttemptSpec(BIN, 2, 1, Variant.BIN), None), 6) == (
        f"attempt 4/6 succeeded: built the prebuilt variant {BIN}"
    )
    assert decision_line(record(1, SOURCE, diag(Kind.BUILD, "build.builder-failed")), 6) == (
        "attempt 1/6 failed: build (rule build.builder-failed)"
    )


def test_decision_lines_from_real_decisions() -> None:
    rng = random.Random(7)
    d = decide(diag(Kind.OOM, "oom.cc1plus-killed"), [], SOURCE, WITH_BIN, rng)
    assert line(Kind.OOM, "oom.cc1plus-killed", d).endswith(
        "cores 8→4, max-jobs 1 once memory is back (at most 45 s)"
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (0.01, "0.1 s"),
        (0.3, "0.3 s"),
        (2, "2 s"),
        (7.46, "7.5 s"),
        (9.949, "9.9 s"),
        (9.96, "10 s"),
        (-1, "0 s"),
        (float("nan"), "?"),
        (float("inf"), "?"),
        (45, "45 s"),
        (59.6, "1 min"),
        (72.4, "1 min 12 s"),
        (600, "10 min"),
        (3725, "1 h 2 min 5 s"),
        (7200, "2 h"),
    ],
)
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


# --- properties over any history --------------------------------------------------------------

ANY_KIND = st.sampled_from(list(Kind))


@settings(max_examples=300, deadline=None)
@given(
    kinds=st.lists(ANY_KIND, min_size=1, max_size=12),
    cores=st.integers(1, 16),
    max_jobs=st.integers(1, 4),
    with_fallback=st.booleans(),
    gc=st.booleans(),
    max_attempts=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_run_ends_within_budget_and_never_climbs(
    *,
    kinds: list[Kind],
    cores: int,
    max_jobs: int,
    with_fallback: bool,
    gc: bool,
    max_attempts: int,
    seed: int,
) -> None:
    cfg = PolicyConfig(
        fallback=BIN if with_fallback else None, gc_allowed=gc, max_attempts=max_attempts
    )
    rng = random.Random(seed)
    history: list[AttemptRecord] = []
    spec: AttemptSpec | None = AttemptSpec(SOURCE.installable, cores, max_jobs)
    for kind in kinds:
        if spec is None:
            break
        d = diag(kind)
        decision = decide(d, history, spec, cfg, rng)
        assert decision.delay_s >= 0
        if decision.action == GIVE_UP:
            assert decision.next is None
            assert decision.reason
        else:
            assert decision.next is not None
            assert len(history) + 2 <= max_attempts  # a next attempt fits the budget
            assert decision.delay_s <= cfg.network_cap_s
            if decision.action == FALLBACK:
                assert spec.variant is Variant.SOURCE  # the fallback never falls back again
                assert decision.next.variant is Variant.BIN
            else:
                assert decision.next.variant is spec.variant
                assert decision.next.cores <= spec.cores  # parallelism never climbs
                assert decision.next.max_jobs <= spec.max_jobs
        if kind in {Kind.HASH, Kind.EVAL, Kind.INTERRUPTED, Kind.UNKNOWN}:
            assert decision.action == GIVE_UP
        history.append(record(len(history) + 1, spec, d, decision))
        spec = decision.next
    assert len(history) <= max_attempts
    code = exit_code_for(history, succeeded=False)
    assert code in {ExitCode.FAILED, ExitCode.TRANSIENT, ExitCode.SIGINT, ExitCode.SIGTERM}
