"""What to do after a failed attempt: the per-kind decision table (design.md "Failure taxonomy").

``decide`` is pure: the diagnosis of the attempt that just failed, the attempts before it,
its spec and the policy settings go in; a ``Decision`` (retry | degrade | gc_then_retry |
fallback | give_up, with a delay) comes out. Randomness (backoff jitter) comes from the
``rng`` argument, so tests are deterministic and never sleep; the supervisor does the
waiting, the garbage collection and the memory-recovery check. After an out-of-memory failure
the wait is measured rather than guessed: ``memory_wait`` says how (poll available memory until
it is back, at least ``OOM_MIN_WAIT_S``, at most ``oom_delay_s``), the supervisor polls.

Counting is per variant: the prebuilt fallback gets its own network, timeout and build
allowances, and a failure of the fallback never falls back again. ``max_attempts`` bounds
the whole run, fallback included.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Sequence
from dataclasses import dataclass

import tenacity

from .errors import ConfigError, ExitCode
from .model import (
    AttemptRecord,
    AttemptSpec,
    Decision,
    Diagnosis,
    Evidence,
    Kind,
    Variant,
    waits_for_memory,
)
from .plan import lower_parallelism

RETRY = "retry"
DEGRADE = "degrade"
GC_THEN_RETRY = "gc_then_retry"
FALLBACK = "fallback"
GIVE_UP = "give_up"

# Kinds whose cause is outside the build: when the run gives up on one of these, a later
# run may well succeed, so the exit code says "try again later" (75, EX_TEMPFAIL).
TRANSIENT_KINDS = frozenset({Kind.NETWORK, Kind.DISK, Kind.TIMEOUT})
# Kinds where another attempt would fail the same way (or the user asked us to stop).
STOP_KINDS = frozenset({Kind.HASH, Kind.EVAL, Kind.INTERRUPTED})
# Failures that "a builder failed" covers; a timeout joins them once its retries are used.
_BUILD_LIKE = frozenset({Kind.BUILD, Kind.UNKNOWN})

# The seed advice for PyTorch-sized source builds: at least 20 GB free for store and build dir.
SEED_FREE_SPACE_GB = 20

# After an out-of-memory failure the next attempt waits until available memory is back to
# MEMORY_TARGET_FRACTION of what it was before the failed attempt, read every MEMORY_POLL_S
# and at or above the target at MEMORY_STABLE_READINGS readings in a row (so a reading taken
# while a dying compiler is still releasing memory, or a brief spike, does not decide). By the
# time nix has exited its builders are gone and the kernel has freed their memory, so on a
# healthy machine this takes OOM_MIN_WAIT_S; `oom_delay` bounds it when memory stays short
# (another process holds it): the attempt then starts anyway, at its lower parallelism.
# Half a second between readings is long enough to see a figure still falling (swap being
# read back, a compiler still exiting) and short next to any build worth supervising.
OOM_MIN_WAIT_S = 0.5
MEMORY_POLL_S = 0.5
MEMORY_TARGET_FRACTION = 0.9
MEMORY_STABLE_READINGS = 2

# Network backoff windows grow 4-fold per retry, not 2-fold: a few retries must span minutes (a
# mirror down for a while) and the first must come quickly (a blip). From 2 s: 2, 8, 32, 128,
# 512 s, so five retries reach 682 s (≈341 s expected); doubling from 2 s would reach 62 s.
NETWORK_BACKOFF_GROWTH = 4.0


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """The knobs of the decision table; defaults follow design.md and issue 4."""

    network_base_s: float = 2.0  # first backoff window, times NETWORK_BACKOFF_GROWTH per retry
    network_cap_s: float = 600.0  # no backoff window is wider than this
    network_retries: int = 5  # per variant: alone, it can use all of max_attempts
    max_oom_failures: int = 3  # OOMs of the source variant before using the fallback
    # Longest pause after out-of-memory (memory settles, swap drains): the next attempt starts
    # as soon as available memory is back (``memory_wait``); 0 starts it at once.
    oom_delay_s: float = 45.0
    settle_delay_s: float = 5.0  # pause before a build/timeout retry
    gc_allowed: bool = False
    fallback: str | None = None  # the prebuilt installable, already checked to exist
    max_attempts: int = 6  # overall, fallback attempts included
    unknown_stops: bool = True  # False: an unrecognised failure is handled like `build`
    disk_retries: int = 1  # per run: a second garbage collection rarely frees more
    timeout_retries: int = 1  # per variant; then a timeout is handled like `build`

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, not {self.max_attempts}")
        counts = ("network_retries", "max_oom_failures", "disk_retries", "timeout_retries")
        delays = ("network_base_s", "network_cap_s", "oom_delay_s", "settle_delay_s")
        for name in counts + delays:
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(f"{name} must not be negative, not {value}")


class SeededFullJitter(tenacity.wait_random_exponential):
    """tenacity's full-jitter wait, drawing from an injected ``random.Random``.

    ``wait_random_exponential`` draws from the global ``random`` module; a run must be
    reproducible in tests, so the window still comes from tenacity (``wait_exponential``:
    multiplier * NETWORK_BACKOFF_GROWTH**(attempt-1), capped at ``max``) and only the uniform
    draw inside it uses ``rng``.
    """

    def __init__(self, *, multiplier: float, cap: float, rng: random.Random) -> None:
        super().__init__(multiplier=multiplier, max=cap, exp_base=NETWORK_BACKOFF_GROWTH)
        self._rng = rng

    def window(self, retry_state: tenacity.RetryCallState) -> float:
        return float(tenacity.wait_exponential.__call__(self, retry_state))

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return self._rng.uniform(self.min, self.window(retry_state))


@dataclass(frozen=True, slots=True)
class MemoryWait:
    """How to wait before the attempt after an out-of-memory failure (the supervisor polls).

    Start once available memory is at least ``fraction`` of the reading taken before the
    failed attempt at ``readings`` consecutive polls ``poll_s`` apart, and ``min_s`` has
    passed; start anyway after ``max_s``. Without a reading, pause ``max_s``.
    """

    min_s: float
    max_s: float
    poll_s: float = MEMORY_POLL_S
    fraction: float = MEMORY_TARGET_FRACTION
    readings: int = MEMORY_STABLE_READINGS


def memory_wait(kind: Kind, decision: Decision) -> MemoryWait | None:
    """The measured wait before the next attempt, when ``decision`` follows an out-of-memory
    failure; None when the pause is a plain ``delay_s`` sleep (or there is no next attempt).

    For such decisions ``delay_s`` is the longest pause (``oom_delay``), not the pause.
    """
    if decision.next is None or not waits_for_memory(kind, decision.delay_s):
        return None
    return MemoryWait(min_s=min(OOM_MIN_WAIT_S, decision.delay_s), max_s=decision.delay_s)


def backoff_window(retry_number: int, cfg: PolicyConfig) -> float:
    """The upper bound of the ``retry_number``-th (1-based) network backoff: min(cap, base *
    NETWORK_BACKOFF_GROWTH**(retry_number-1)), by default 2, 8, 32, 128, 512, then 600 s."""
    return _jitter(cfg, random.Random(0)).window(_call_state(retry_number))  # draws nothing


def backoff_delay(retry_number: int, cfg: PolicyConfig, rng: random.Random) -> float:
    """Full jitter: uniform in [0, ``backoff_window(retry_number, cfg)``], drawn from ``rng``."""
    return float(_jitter(cfg, rng)(_call_state(retry_number)))


def _jitter(cfg: PolicyConfig, rng: random.Random) -> SeededFullJitter:
    return SeededFullJitter(multiplier=cfg.network_base_s, cap=cfg.network_cap_s, rng=rng)


def _call_state(attempt_number: int) -> tenacity.RetryCallState:
    # A wait strategy only reads ``attempt_number``; the retrying object is never used here.
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = max(1, attempt_number)
    return state


def interruption(signum: int) -> Diagnosis:
    """The diagnosis the supervisor records when it stops an attempt because *it* got a signal.

    The rule names the signal (``interrupted.sigint``, ``.sigterm``, ``.sighup``), which is how
    ``exit_code_for`` tells 130, 143 and 129 apart.
    """
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    return Diagnosis(
        kind=Kind.INTERRUPTED,
        rule=f"interrupted.{name.lower().replace(' ', '')}",
        explanation=f"nixbuild received {name} and stopped the build",
        evidence=(Evidence(0, f"received {name}"),),
    )


@dataclass(frozen=True, slots=True)
class _Failures:
    """The failures of a run so far, the one just diagnosed included."""

    kinds: tuple[tuple[Variant, Kind], ...]

    @classmethod
    def of(cls, history: Sequence[AttemptRecord], current: AttemptSpec, kind: Kind) -> _Failures:
        past = tuple((r.spec.variant, r.diagnosis.kind) for r in history if r.diagnosis is not None)
        return cls((*past, (current.variant, kind)))

    def count(self, kinds: frozenset[Kind], variant: Variant | None = None) -> int:
        return sum(1 for v, k in self.kinds if k in kinds and (variant is None or v is variant))


def decide(
    diagnosis: Diagnosis,
    history: Sequence[AttemptRecord],
    current: AttemptSpec,
    cfg: PolicyConfig,
    rng: random.Random,
    *,
    free_space_gb: float | None = None,
) -> Decision:
    """The next step after the attempt with spec ``current`` failed with ``diagnosis``.

    ``history`` holds the attempts *before* that one (with their diagnoses); the failed
    attempt is number ``len(history) + 1``. ``free_space_gb``, when the supervisor measured
    it, goes into the reason of a disk give-up.
    """
    failures = _Failures.of(history, current, diagnosis.kind)
    proposal = _by_kind(diagnosis, failures, current, cfg, rng, free_space_gb=free_space_gb)
    if proposal.action != GIVE_UP and len(history) + 1 >= cfg.max_attempts:
        return _give_up(f"all {cfg.max_attempts} attempts used (last failure: {diagnosis.kind})")
    return proposal


def _by_kind(
    diagnosis: Diagnosis,
    failures: _Failures,
    current: AttemptSpec,
    cfg: PolicyConfig,
    rng: random.Random,
    *,
    free_space_gb: float | None,
) -> Decision:
    kind = diagnosis.kind
    if kind is Kind.HASH:
        return _give_up("hash mismatch cannot be fixed by retrying")
    if kind is Kind.EVAL and diagnosis.rule == "eval.nix-usage":
        return _give_up("nix rejected its command line: fix the arguments, retrying cannot help")
    if kind is Kind.EVAL:
        return _give_up("evaluation error: the Nix expression must be fixed, retrying cannot help")
    if kind is Kind.INTERRUPTED:
        return _give_up(f"interrupted ({diagnosis.rule})")
    if kind is Kind.UNKNOWN and cfg.unknown_stops:
        return _give_up("unrecognised failure: stopping rather than guessing (see the log)")
    if kind is Kind.NETWORK:
        return _network(failures, current, cfg, rng)
    if kind is Kind.OOM:
        return _oom(failures, current, cfg)
    if kind is Kind.DISK:
        return _disk(failures, current, cfg, free_space_gb)
    if kind is Kind.TIMEOUT:
        used = failures.count(frozenset({Kind.TIMEOUT}), current.variant)
        if used <= cfg.timeout_retries:
            return Decision(RETRY, cfg.settle_delay_s, current, "timed out: retry once as it is")
    return _build(failures, current, cfg)


def _network(
    failures: _Failures, current: AttemptSpec, cfg: PolicyConfig, rng: random.Random
) -> Decision:
    retry_number = failures.count(frozenset({Kind.NETWORK}), current.variant)
    if retry_number > cfg.network_retries:
        return _give_up(f"network still failing after {cfg.network_retries} retries")
    delay = backoff_delay(retry_number, cfg, rng)
    reason = f"network failure: retry {retry_number} of {cfg.network_retries} after a backoff"
    return Decision(RETRY, delay, current, reason)


def _oom(failures: _Failures, current: AttemptSpec, cfg: PolicyConfig) -> Decision:
    ooms = failures.count(frozenset({Kind.OOM}), current.variant)
    lower = lower_parallelism(current)
    fallback = _fallback_spec(current, cfg)
    if fallback is not None and (lower is None or ooms >= cfg.max_oom_failures):
        why = "at cores 1, max-jobs 1" if lower is None else f"{ooms} times"
        # Waits for memory too: the prebuilt variant may still unpack or link something big.
        reason = f"out of memory {why}: use the prebuilt variant"
        return Decision(FALLBACK, cfg.oom_delay_s, fallback, reason)
    # Without a fallback the ladder continues to the floor: a slow build beats no build.
    if lower is None:
        return _give_up("out of memory even at cores 1, max-jobs 1")
    reason = f"out of memory at cores {current.cores}, max-jobs {current.max_jobs}"
    return Decision(DEGRADE, cfg.oom_delay_s, lower, reason)


def _disk(
    failures: _Failures, current: AttemptSpec, cfg: PolicyConfig, free_space_gb: float | None
) -> Decision:
    free = "" if free_space_gb is None else f" ({free_space_gb:.1f} GB free now)"
    advice = f"free at least {SEED_FREE_SPACE_GB} GB for the Nix store and build directory{free}"
    if not cfg.gc_allowed:
        return _give_up(f"out of disk space: {advice}, or allow garbage collection (--gc)")
    if failures.count(frozenset({Kind.DISK})) > cfg.disk_retries:
        return _give_up(f"still out of disk space after garbage collection: {advice}")
    return Decision(GC_THEN_RETRY, 0.0, current, "out of disk space: collect garbage, retry once")


def _build(failures: _Failures, current: AttemptSpec, cfg: PolicyConfig) -> Decision:
    timeouts = failures.count(frozenset({Kind.TIMEOUT}), current.variant)
    failed = failures.count(_BUILD_LIKE, current.variant) + max(0, timeouts - cfg.timeout_retries)
    lower = lower_parallelism(current)
    if failed <= 1 and lower is not None:
        # Parallel-build races (missing make dependencies) exist: one try with less parallelism.
        why = "build failed: one more try at lower parallelism"
        return Decision(DEGRADE, cfg.settle_delay_s, lower, why)
    fallback = _fallback_spec(current, cfg)
    if fallback is not None:
        why = "source build keeps failing: use the prebuilt variant"
        return Decision(FALLBACK, 0.0, fallback, why)
    where = "at cores 1, max-jobs 1" if lower is None else "again at lower parallelism"
    suffix = "" if current.variant is Variant.BIN else ", and there is no -bin fallback"
    return _give_up(f"build failed {where}{suffix}")


def _fallback_spec(current: AttemptSpec, cfg: PolicyConfig) -> AttemptSpec | None:
    """The prebuilt attempt, or None when already on it (a fallback never falls back again)."""
    if current.variant is Variant.BIN or not cfg.fallback or cfg.fallback == current.installable:
        return None
    # Keeps the current (possibly lowered) parallelism: a -bin package mostly downloads, and
    # if the named fallback compiles anything, the lowered values are the safe ones.
    return AttemptSpec(cfg.fallback, current.cores, current.max_jobs, Variant.BIN)


def _give_up(reason: str) -> Decision:
    return Decision(GIVE_UP, 0.0, None, reason)


_SIGNAL_EXIT: dict[int, ExitCode] = {signal.SIGINT: ExitCode.SIGINT, signal.SIGHUP: ExitCode.SIGHUP}


def signal_exit_code(signum: int) -> ExitCode:
    """128 + the signal, as a shell reports a command killed by it. systemd stops units with
    SIGTERM, so any other signal counts as a stop (143)."""
    return _SIGNAL_EXIT.get(signum, ExitCode.SIGTERM)


def exit_code_for(history: Sequence[AttemptRecord], succeeded: bool) -> ExitCode:
    """The exit-code contract (design.md "Exit codes") for a finished run."""
    if succeeded:
        return ExitCode.OK
    failed = [r.diagnosis for r in history if r.diagnosis is not None]
    if not failed:
        return ExitCode.FAILED
    last = failed[-1]
    if last.kind is Kind.INTERRUPTED:
        name = last.rule.rpartition(".")[2].upper()  # interrupted.sigint → SIGINT
        return signal_exit_code(signal.Signals[name] if name in signal.Signals.__members__ else 0)
    if last.kind in TRANSIENT_KINDS:
        return ExitCode.TRANSIENT
    return ExitCode.FAILED
