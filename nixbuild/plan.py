"""The first attempt and the degrade ladder: which parallelism to try, and what to fall back to.

Everything here is pure: the supervisor feeds in machine facts, flags and the ledger's
memory, and gets back an ``AttemptSpec``. Checking that a derived ``-bin`` fallback really
exists (``nix eval``) is the caller's job; this module only proposes the name.
"""

from __future__ import annotations

import dataclasses
import re

from .model import AttemptSpec, Variant

# The seed advice for heavy source builds (`--option cores 8 --option max-jobs 1`): more
# than 8 compiler processes per derivation rarely speeds PyTorch-sized builds up but
# multiplies the memory they need.
MAX_DEFAULT_CORES = 8
DEFAULT_MAX_JOBS = 1
BIN_SUFFIX = "-bin"

# A plain Nix identifier, as the last attribute of an attribute path may spell it.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_'-]*")


def default_cores(usable_cpus: int) -> int:
    """Cores for the first attempt: all usable CPUs, at most 8, at least 1."""
    return max(1, min(MAX_DEFAULT_CORES, usable_cpus))


def first_spec(
    installable: str,
    *,
    usable_cpus: int,
    cores: int | None = None,
    max_jobs: int | None = None,
    remembered: tuple[int, int] | None = None,
    variant: Variant = Variant.SOURCE,
) -> AttemptSpec:
    """The first attempt of a run.

    Explicit ``cores``/``max_jobs`` (flags, env, config file) win; otherwise ``remembered``
    (the ledger's ``last_good_parallelism``: what last succeeded after an OOM) so a run does
    not rediscover the same OOM; otherwise the defaults. A remembered value is never above
    the machine's default, so a smaller machine than last time is still respected.
    """
    default_c = default_cores(usable_cpus)
    chosen_cores, chosen_jobs = default_c, DEFAULT_MAX_JOBS
    if remembered is not None:
        chosen_cores = max(1, min(remembered[0], default_c))
        chosen_jobs = max(1, remembered[1])
    if cores is not None:
        chosen_cores = max(1, cores)
    if max_jobs is not None:
        chosen_jobs = max(1, max_jobs)
    return AttemptSpec(installable, chosen_cores, chosen_jobs, variant)


def lower_parallelism(spec: AttemptSpec) -> AttemptSpec | None:
    """One step down the degrade ladder; None at the floor (cores 1, max-jobs 1).

    Order: max-jobs drops to 1 *before* cores are halved. Nix runs up to max-jobs
    derivations at once and gives each ``cores`` compiler processes, so peak memory grows
    with max-jobs * cores. Dropping max-jobs from M to 1 divides that bound by M ≥ 2 (at
    least as much as halving cores) without slowing down the one big derivation that
    usually runs out of memory. With the default max-jobs 1 the ladder is just the cores
    halving the issue describes: 8 → 4 → 2 → 1.
    """
    if spec.max_jobs > 1:
        return dataclasses.replace(spec, max_jobs=1)
    if spec.cores > 1:
        return dataclasses.replace(spec, cores=max(1, spec.cores // 2))
    return None


def ladder(spec: AttemptSpec) -> tuple[AttemptSpec, ...]:
    """Every step from ``spec`` down to the floor, ``spec`` first (for `doctor` and docs)."""
    steps = [spec]
    while (lower := lower_parallelism(steps[-1])) is not None:
        steps.append(lower)
    return tuple(steps)


def derive_fallback(installable: str) -> str | None:
    """Propose the prebuilt sibling of a flake attribute: ``…#pkgs.torch`` → ``…#pkgs.torch-bin``.

    Only a candidate: the caller checks with ``nix eval`` that it exists. None when there is
    nothing to derive from: no ``#attribute`` part (a bare flake ref or store path), a
    ``.drv`` path, an attribute that already ends in ``-bin``, or a last component that is not
    a plain (or quoted) identifier. An output selector (``^out``) is kept.
    """
    text = installable.strip()
    if not text or text.startswith("/nix/store/") or text.partition("^")[0].endswith(".drv"):
        return None
    flake_ref, hash_sign, attr_path = text.partition("#")
    if not hash_sign:
        return None
    attr_path, caret, outputs = attr_path.partition("^")
    last = _last_component(attr_path)
    if last is None:
        return None
    quoted = last.startswith('"')
    name = last[1:-1] if quoted else last
    if name.endswith(BIN_SUFFIX) or not _IDENTIFIER.fullmatch(name):
        return None
    renamed = f'"{name}{BIN_SUFFIX}"' if quoted else f"{name}{BIN_SUFFIX}"
    prefix = attr_path[: len(attr_path) - len(last)]
    return f"{flake_ref}#{prefix}{renamed}{caret}{outputs}"


def _last_component(attr_path: str) -> str | None:
    """The last dot-separated component, honouring a final quoted component (``a."b.c"``)."""
    if not attr_path:
        return None
    if attr_path.endswith('"'):
        start = attr_path.rfind('"', 0, len(attr_path) - 1)
        if start < 0 or (start > 0 and attr_path[start - 1] != "."):
            return None
        return attr_path[start:]
    last = attr_path.rpartition(".")[2]
    return last or None
